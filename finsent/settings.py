"""The one settings object: defaults < TOML file < ``FINSENT_*`` environment.

Nested groups use ``__`` in environment names (``FINSENT_KAFKA__BOOTSTRAP=host:9092``). The TOML file
is ``$FINSENT_CONFIG`` when set (or the path handed to :func:`load`); a missing file named explicitly
is an error, never silently ignored. Invalid values fail at start with :class:`SettingsError`,
whose message names the offending field as both a dotted path and its environment variable.
"""

from __future__ import annotations

import os
import re
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings import SettingsError as SourceError

from finsent.errors import SettingsError

ENV_PREFIX = "FINSENT_"
LOOPBACK = "127.0.0.1"
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})  # bind addresses that mean "every interface"
_CONFIG_FILE: ContextVar[str | None] = ContextVar("finsent_config_file", default=None)


# Values the example env files and tutorials ship in place of a secret: taken as a real token or password they
# would guard nothing (anyone can read them here), so settings refuse them.
PLACEHOLDER_SECRETS = frozenset({"change-me", "changeme", "change_me"})


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in get_args(annotation)


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _real_secret(cls, v: Any, info: ValidationInfo) -> Any:
        """A token or password: empty (``FINSENT_WEB__TOKEN=`` as an example file leaves it) means unset; a known
        placeholder (``change-me``) is refused, since it would guard nothing."""
        field = cls.model_fields.get(info.field_name or "")
        if field is None or not _is_secret(field.annotation):
            return v
        raw = v.get_secret_value() if isinstance(v, SecretStr) else v
        if isinstance(raw, str):
            if not raw.strip():
                return None
            if raw.strip().lower() in PLACEHOLDER_SECRETS:
                raise ValueError(
                    "is a placeholder, not a secret: set the real one (a new token: "
                    "python -c 'import secrets; print(secrets.token_urlsafe(32))')"
                )
        return v


Port = int


def _port(v: int) -> int:
    if not 0 <= v <= 65535:  # 0 = pick a free port (tests, embedded services)
        raise ValueError("must be a TCP port in 0..65535")
    return v


class TopicSpec(_Group):
    name: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(ge=1, le=1024)


# The one table of finsent's topics: field name -> (default name, default partitions). The fields below,
# partial overrides and ``all()`` are all read from it.
_DEFAULT_TOPICS = {
    "raw": ("finsent.news.raw", 4),
    "scored": ("finsent.news.scored", 4),
    "alerts": ("finsent.alerts", 1),
    "feedback": ("finsent.feedback", 1),
    "dlq": ("finsent.dlq", 1),
    "windows": ("finsent.windows", 4),
    "checkpoints": ("finsent.stream.checkpoints", 1),
}


def _default_topic(key: str) -> TopicSpec:
    name, partitions = _DEFAULT_TOPICS[key]
    return TopicSpec(name=name, partitions=partitions)


class Topics(_Group):
    raw: TopicSpec = _default_topic("raw")
    scored: TopicSpec = _default_topic("scored")
    alerts: TopicSpec = _default_topic("alerts")
    feedback: TopicSpec = _default_topic("feedback")
    dlq: TopicSpec = _default_topic("dlq")
    windows: TopicSpec = _default_topic("windows")  # closed WindowStats, keyed by dimension key
    checkpoints: TopicSpec = _default_topic("checkpoints")  # aggregator restore points

    @model_validator(mode="before")
    @classmethod
    def _partial(cls, data: Any) -> Any:
        """Let one field of a topic be set (FINSENT_TOPICS__RAW__PARTITIONS=12) keeping the other's default."""
        if isinstance(data, dict):
            for key, (name, partitions) in _DEFAULT_TOPICS.items():
                if isinstance(data.get(key), dict):
                    data[key] = {"name": name, "partitions": partitions, **data[key]}
        return data

    def all(self) -> list[TopicSpec]:
        return [getattr(self, key) for key in _DEFAULT_TOPICS]

    @model_validator(mode="after")
    def _unique(self) -> Topics:
        names = [t.name for t in self.all()]
        if len(set(names)) != len(names):
            raise ValueError(f"topic names must be distinct, got {names}")
        return self


class Kafka(_Group):
    bootstrap: str = Field(default=f"{LOOPBACK}:9092", min_length=3)
    client_id: str = "finsent"
    replication_factor: int = Field(default=1, ge=1, le=16)  # for topics finsent creates (3 on a 3-broker cluster)
    connect_timeout_s: float = Field(default=60.0, gt=0, le=3600)  # how long `topics` and the worker wait for a broker
    # Authentication and TLS for every client finsent opens (finsent.kafka applies them, nowhere else).
    # The password comes from the environment only: FINSENT_KAFKA__SASL_PASSWORD.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None

    @field_validator("ssl_cafile")
    @classmethod
    def _cafile_exists(cls, v: str | None) -> str | None:
        """A CA file that is not there failed only at the first connection, as "no Kafka broker" after the whole
        connect timeout (the cause was one warning among twenty lines); named at start instead."""
        if v is not None and not Path(v).is_file():
            raise ValueError(f"no such file: {v!r}")
        return v

    @field_validator("bootstrap")
    @classmethod
    def _hostports(cls, v: str) -> str:
        for part in v.split(","):
            host, sep, port = part.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port…], got {v!r}")
            _port(int(port))
        return v

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> Kafka:
        """A SASL protocol without a user or password would fail only at the first connection, blamed on the
        broker ("no Kafka broker") after the whole connect timeout; name the missing variables at start instead."""
        if self.security_protocol.startswith("SASL_"):
            missing = [
                env_var("kafka", name)
                for name, value in (("sasl_username", self.sasl_username), ("sasl_password", self.sasl_password))
                if not (value.get_secret_value() if isinstance(value, SecretStr) else value)
            ]
            if missing:
                raise ValueError(f"security_protocol={self.security_protocol} needs {' and '.join(missing)}")
        return self


class Broker(_Group):
    """The embedded Tansu broker (``finsent broker`` / ``finsent demo``)."""

    host: str = LOOPBACK
    port: Port = 9092
    start_timeout_s: float = Field(default=15.0, gt=0)

    _check_port = field_validator("port")(classmethod(lambda cls, v: _port(v)))


class Services(_Group):
    """Embedded Prometheus/Alertmanager and finsent's own HTTP endpoints."""

    host: str = LOOPBACK
    prometheus_port: Port = 9090
    alertmanager_port: Port = 9093
    alertmanager_cluster_port: Port = 9094
    prometheus_bin: str = "prometheus"
    alertmanager_bin: str = "prometheus-alertmanager"
    # FINSENT_SERVICES__ALERTMANAGER_PASSWORD: the embedded Alertmanager's basic-auth password (user "finsent");
    # unset, one is made for the state dir (local/services.py says why it needs one)
    alertmanager_password: SecretStr | None = None
    # 2 s each: the surge path is scrape + evaluation + `for: 4s` + group_wait; see alerts/rules/finsent.yml
    scrape_interval_s: float = Field(default=2.0, gt=0)
    evaluation_interval_s: float = Field(default=2.0, gt=0)
    start_timeout_s: float = Field(default=30.0, gt=0)

    _check_ports = field_validator("prometheus_port", "alertmanager_port", "alertmanager_cluster_port")(
        classmethod(lambda cls, v: _port(v))
    )


class Ingest(_Group):
    # None: the public feed list shipped in the package (finsent.ingest.feeds.PUBLIC_FEEDS), wherever finsent runs
    # from (a path relative to the working directory found it only from a checkout's root)
    feeds_file: Path | None = None
    metrics_port: Port = 9181
    demo_feeds_port: Port = 9180
    demo_burst_at_s: float = Field(default=150.0, ge=0)  # the demo feeds' negative oil burst starts this late
    dedup_horizon_hours: float = Field(default=48.0, gt=0)
    # Exact item ids are remembered this long (wall clock since first published), apart from the near-duplicate
    # horizon above: at least as long as any feed keeps listing an item, or a restart publishes it again.
    dedup_id_horizon_days: float = Field(default=30.0, gt=0)
    # Where ingest remembers what it published; default <state_dir>/ingest/dedup.sqlite. `finsent demo` gives
    # each run its own (the demo feeds serve the same sample every time), so real feeds' memory is not touched.
    dedup_path: Path | None = None
    # Tests only: the ingest process kills itself (SIGKILL) at this point of accepting a batch, to prove a crash
    # there loses nothing. after_ack: the sink acknowledged; after_archive: archived, not yet marked as seen.
    debug_crash_at: Literal["", "after_ack", "after_archive"] = ""
    near_duplicate_threshold: float = Field(default=0.7, gt=0, le=1)
    per_host: int = Field(default=2, ge=1, le=64)
    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    total_timeout_s: float = Field(default=30.0, gt=0)
    max_pending: int = Field(default=50_000, ge=1)

    _check_ports = field_validator("metrics_port", "demo_feeds_port")(classmethod(lambda cls, v: _port(v)))


class Paths(_Group):
    """``archive_dir`` and ``feedback_store`` live under ``state_dir`` unless set: moving the state moves them."""

    state_dir: Path = Path(".state")
    archive_dir: Path = None  # type: ignore[assignment]  # default: <state_dir>/archive
    models_dir: Path = Path("models")
    feedback_store: Path = None  # type: ignore[assignment]  # default: <state_dir>/feedback/feedback.jsonl
    data_dir: Path = Path("../shared/data")

    @model_validator(mode="after")
    def _under_state_dir(self) -> Paths:
        if self.archive_dir is None:
            self.archive_dir = self.state_dir / "archive"
        if self.feedback_store is None:
            self.feedback_store = self.state_dir / "feedback" / "feedback.jsonl"
        return self


class ModelChoice(_Group):
    name: str = "finsent-minilm"
    version: str = ""  # empty: the newest version on disk
    backend: Literal["auto", "torch", "torch-int8", "onnx", "onnx-int8"] = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # What a model trained with domain tags (the research variant) reads served text as: news (RSS headlines, what
    # finsent ingests) or twitter (e.g. a backtest over StockNet's cashtag tweets). Untagged models ignore it.
    reads_as: Literal["news", "twitter"] = "news"
    # Texts per forward pass on the CPU. A model call is sorted by length and cut into forwards of this many, so
    # small forwards pad less and keep activations in cache: 8 scored 1.2-1.7x faster than 32 in the small calls
    # a stream at moderate load makes (16-128 texts, sleeping threads) and as fast in a backlog's 512-text calls
    # (interleaved measurement, 2 cores, int8 MiniLM-L6; see deploy/SCALING.md). GPUs use gpu_batch_size.
    batch_size: int = Field(default=8, ge=1, le=4096)
    max_length: int = Field(default=96, ge=8, le=512)
    threads: int = Field(default=0, ge=0, le=256)  # ONNX Runtime intra-op threads; 0 = one per core
    # The stream worker's ONNX Runtime intra-op threads busy-wait between ops when true (ORT's default). The
    # worker shares its cores with its tokenizer thread, its event loop and, on a small machine, the broker,
    # and the spinning takes their CPU: off unless asked for (bench/bench_stream.py `--spin-wait true|false`
    # compares). The API and the backtest follow it too (``Classifier.from_settings``); only the benchmarks'
    # bare ceilings keep ORT's default.
    spin_wait: bool = False
    # ... except in model calls of at least this many texts, which only a backlog makes: there the model is all
    # that runs, and spinning threads score ~20 % faster (a second ONNX session; 0 = never spin).
    spin_from_texts: int = Field(default=256, ge=0, le=8192)
    gpu_batch_size: int = Field(default=256, ge=1, le=4096)  # texts per forward pass on CUDA (fp16)
    # The torch backends (torch, torch-int8, and torch on CUDA) run their forward as a TorchScript trace, checked
    # against the eager model at load (finsent.model.tracing): the eager forward re-takes the GIL at each of its
    # hundreds of ops and crawls beside a busy Python thread such as the worker's event loop (one forward: 1,375 ms
    # eager against 14 ms traced on the H200; 512 against 37 ms on 2 CPU cores). false: eager, e.g. to rule the
    # trace out when a model misbehaves.
    trace: bool = True
    # ONNX Runtime on the CPU: a model call's forwards are spread over this many sessions (one thread each unless
    # ``threads`` is set), run at once, instead of one session parallelising every op over its intra-op threads
    # (whose barrier per op costs most in the small forwards the CPU uses). 0 = auto: one per core (at most 8:
    # each session holds its own copy of the graph, ~70 MB for int8) when ``threads`` is unset (the call has the
    # machine), else 1; calls run side by side get one each. Measured on 2 cores (int8 MiniLM-L6, forwards of
    # 8, interleaved): calls of 4-375 headlines 1.03-1.64x the texts/s of one two-thread session, each call as
    # fast or faster; a one-headline call 0.3 ms slower (one thread). ``finsent.model.placement.sessions_for``.
    sessions: int = Field(default=0, ge=0, le=64)
    # How long a Python thread may hold the GIL while a model thread waits for it, in seconds, in the stream worker
    # and the backtest. A model thread returning from a forward in ONNX Runtime needs the GIL to start the next; at
    # CPython's default (0.005) it waited up to 5 ms for the event loop or the bookkeeping, its core idle
    # (finsent.osthreads.prompt_gil_handoff). 0.005: CPython's. The API keeps CPython's (web/api.py says why).
    gil_handoff_s: float = Field(default=0.0005, ge=1e-6, le=0.1)  # CPython keeps whole microseconds


class Windows(_Group):
    """Event-time windows; the time semantics are written down in ``stream/windows.py``.

    ``watermark_delay_s`` is how long a window waits for stragglers before its first (on-time) result;
    ``allowed_lateness_s`` is how long after that an item still counts in its own bucket, the windows it
    touches being published again as a new revision. Older items are, by ``too_late``: ``reject`` (counted and
    dead-lettered, in no window) or ``open_window`` (counted, and counted in the open window instead of its own,
    as if it had arrived now: windows then depend on arrival, so live and a backtest may differ by those items).
    """

    bucket_seconds: int = Field(default=60, ge=1, le=3600)
    rolling_seconds: list[int] = Field(default_factory=lambda: [300, 900, 3600], min_length=1)
    watermark_delay_s: int = Field(default=120, ge=0)
    allowed_lateness_s: int = Field(default=3600, ge=0)
    too_late: Literal["reject", "open_window"] = "reject"
    idle_close_s: float = Field(default=10.0, gt=0)
    evidence_per_window: int = Field(default=5, ge=0, le=100)
    # An event time further than this ahead of the fetch time (or of the wall clock) is clamped and flagged.
    future_tolerance_s: float = Field(default=300.0, ge=0)
    max_tickers_per_item: int = Field(default=20, ge=0)  # more is spam: the rest are cut off and counted

    @field_validator("rolling_seconds")
    @classmethod
    def _multiples(cls, v: list[int], info: ValidationInfo) -> list[int]:
        bucket = info.data.get("bucket_seconds", 1)
        bad = [w for w in v if w <= 0 or w % bucket]
        if bad:
            raise ValueError(f"{bad} must be positive multiples of bucket_seconds={bucket}")
        return sorted(set(v))


class Surge(_Group):
    z_threshold: float = Field(default=3.0, gt=0)
    z_resolve: float = Field(default=1.5, ge=0)  # hysteresis: resolves below this
    min_volume: int = Field(default=5, ge=1)
    min_negative_share: float = Field(default=0.4, ge=0, le=1)
    ewma_alpha: float = Field(default=0.1, gt=0, le=1)
    warmup_windows: int = Field(default=5, ge=0)
    cooldown_s: int = Field(default=900, ge=0)
    critical_z: float = Field(default=6.0, gt=0)
    window_s: int = Field(
        default=300, gt=0
    )  # which rolling width the detector watches (one of windows.rolling_seconds)
    early: bool = True  # also judge the open window as items arrive (provisional alerts, confirmed at close)
    forget_after_s: int = Field(default=7 * 24 * 3600, gt=0)  # a key with no window for this long loses its baseline
    max_keys: int = Field(default=5000, ge=1)  # baselines kept; the least recently active quiet keys go first

    @field_validator("z_resolve")
    @classmethod
    def _hysteresis(cls, v: float, info: ValidationInfo) -> float:
        if "z_threshold" in info.data and v >= info.data["z_threshold"]:
            raise ValueError(f"must be below z_threshold ({info.data['z_threshold']})")
        return v

    @field_validator("critical_z")
    @classmethod
    def _critical(cls, v: float, info: ValidationInfo) -> float:
        if "z_threshold" in info.data and v < info.data["z_threshold"]:
            raise ValueError(f"must be at least z_threshold ({info.data['z_threshold']})")
        return v


class Stream(_Group):
    """The worker: micro-batching into the classifier, the aggregator, its metrics and group timeouts."""

    group_id: str = "finsent-worker"
    # Adaptive micro-batches: the stream fills a buffer in the background while a batch is scored, so a batch
    # closes at max_batch headlines under a backlog (throughput) and after max_wait_s when caught up (latency:
    # a quiet stream scores a lone headline at once instead of holding it for company).
    max_batch: int = Field(default=128, ge=1, le=4096)
    max_wait_s: float = Field(default=0.02, gt=0, le=60)
    # Headlines per model call: batches prepared while the model is busy wait and then go in together, up to
    # this many, sorted by length as one (a backlog gets big, well-padded model calls; a quiet stream, lone ones).
    max_model_batch: int = Field(default=512, ge=1, le=8192)
    # Model calls side by side (0 = auto: with ONNX Runtime one single-threaded call per core, as the API and the
    # backtest run; 1 = one call on all cores). Measured on 2 cores (deploy/SCALING.md): auto drains a backlog
    # 15-35 % faster and, with split_from_records below, matches one call's p99 at the same rate (252 vs 250 ms at
    # 280/s); but at half of its own higher capacity its published->scored p99 was 429 ms (always side by side:
    # 281-664 ms) against 179-269 ms for one call, so the default keeps latency: a deployment that replays or
    # catches up more than it serves live sets 0.
    model_calls: int = Field(default=1, ge=0, le=64)
    # With calls side by side (model_calls != 1, ONNX Runtime, model.threads unset): while fewer than this many
    # records wait, a call that would run alone runs on all cores (a second session) with nothing beside it, as
    # one call would; from this many waiting on (a backlog, a burst), calls go side by side. 0 = always side by
    # side. Above max_model_batch it counts as max_model_batch (the in-tray holds no more, so it would never split).
    split_from_records: int = Field(default=128, ge=0, le=8192)
    max_record_bytes: int = Field(default=256 * 1024, ge=1024)  # larger raw records go to the DLQ
    inference_retries: int = Field(default=1, ge=0, le=10)  # then the batch is bisected to find the bad item
    metrics_port: Port = 9182
    ticker_top_k: int = Field(default=50, ge=0)  # per-ticker gauges: the K busiest tickers + the watch-list
    ticker_watchlist: list[str] = Field(default_factory=list)
    session_timeout_s: float = Field(default=6.0, gt=0)  # low: Tansu joins wait for the full rebalance timeout
    heartbeat_s: float = Field(default=1.0, gt=0)
    rebalance_timeout_s: float = Field(default=6.0, gt=0)
    commit_interval_s: float = Field(default=1.0, gt=0)
    fetch_max_wait_ms: int = Field(default=100, ge=0, le=30_000)  # Tansu holds a fetch this long (see faust_transport)
    checkpoint_interval_s: float = Field(default=5.0, gt=0)  # aggregator restore point at most this old
    produce_timeout_s: float = Field(default=30.0, gt=0)
    # How often an idle worker checks that its input topic is still the same log (it also checks before
    # every offset commit): a broker that lost its log comes back with new, empty topics.
    input_check_interval_s: float = Field(default=2.0, gt=0)
    # A stop (SIGTERM/SIGINT) of the worker or of ingest that has not finished after this long ends the process:
    # a broker that went down first would otherwise hold it in Kafka timeouts. Nothing is lost: offsets are
    # committed only after results are produced (ingest marks items only once archived), so a restart re-reads
    # what was not finished.
    shutdown_timeout_s: float = Field(default=8.0, gt=0)
    # Test hook: sleep this long per micro-batch, to show the windows and surges do not depend on speed.
    debug_batch_delay_s: float = Field(default=0.0, ge=0, le=60)

    _check_port = field_validator("metrics_port")(classmethod(lambda cls, v: _port(v)))


class Receiver(_Group):
    """The compliance receiver: Alertmanager webhooks in, an append-only audit log out."""

    port: Port = 9184
    audit_db: Path | None = None  # default: <paths.state_dir>/receiver/audit.sqlite
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    token: SecretStr | None = None  # FINSENT_RECEIVER__TOKEN: bearer token required on webhooks when set
    evidence_wait_s: float = Field(default=5.0, ge=0)  # how long a webhook waits for its SurgeAlert to arrive
    # A SurgeAlert is this webhook's evidence when the alert's startsAt lies within this many seconds of the
    # surge's window. Unset: surge.cooldown_s (the least gap between two surges of one key) capped at 600, at least 60.
    evidence_tolerance_s: float | None = Field(default=None, gt=0)
    read_token: SecretStr | None = None  # FINSENT_RECEIVER__READ_TOKEN: bearer token required on GET /alerts when set
    # Host names (besides the bound address and localhost) requests may name in their Host header, e.g.
    # ["receiver", "finsent-receiver.finsent.svc"]; on a wildcard address (0.0.0.0) with none set, Host is not checked.
    allowed_hosts: list[str] = Field(default_factory=list)
    page_limit: int = Field(default=1000, ge=1, le=100_000)  # rows per GET /alerts page (and its largest ?limit=)

    _check_port = field_validator("port")(classmethod(lambda cls, v: _port(v)))


class Grafana(_Group):
    """Where ``finsent grafana publish`` uploads dashboards; the token only from FINSENT_GRAFANA__TOKEN."""

    url: str = "http://127.0.0.1:3000"
    token: SecretStr | None = None
    folder_uid: str | None = None


class Web(_Group):
    """``finsent serve``: the HTTP API (and, later, the analyst dashboard)."""

    port: Port = 9185
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_batch: int = Field(default=256, ge=1, le=4096)  # texts per POST /classify
    max_text_chars: int = Field(default=2000, ge=1)
    token: SecretStr | None = None  # FINSENT_WEB__TOKEN: bearer token required on write endpoints when set
    # Host names (besides the bound address and localhost) requests may name, as receiver.allowed_hosts.
    allowed_hosts: list[str] = Field(default_factory=list)
    # Overload bounds: beyond them a request gets 503 + Retry-After at once instead of queueing without end.
    max_classify_waiting: int = Field(default=32, ge=1)  # POST /classify requests running or waiting for the model
    max_event_streams: int = Field(default=100, ge=1)  # open /events (SSE) streams
    busy_retry_after_s: int = Field(default=5, ge=1)  # the Retry-After of those 503 answers
    # Dynamic batching (web/batcher.py): concurrent POST /classify requests share a model call, closed at this many
    # texts or once its oldest request waited classify_max_wait_ms. 0 ms: a free model thread starts at once, and
    # requests that come while every model thread is busy gather for the next call anyway; on 2 cores (8
    # single-headline clients) 0 ms gave the most req/s, and a lone client's request does not wait for company.
    classify_max_batch: int = Field(default=64, ge=1, le=4096)
    classify_max_wait_ms: int = Field(default=0, ge=0, le=10_000)
    # Model calls /classify runs at once. 0 = auto: one, which with ONNX Runtime on the CPU spreads its forwards
    # over one single-threaded session per core (model.sessions); with model.threads set, cores / threads calls
    # side by side. Concurrent requests make small calls, which one ONNX Runtime session parallelises badly over
    # its intra-op threads. Two calls side by side (one thread each, queued texts shared among the free slots, a
    # lone bulk request cut into parts) kept the cores busy too, but in calls of ~2 headlines; one spread call
    # takes all that waits (~4), at less CPU per request and a lower p99 (8 clients, interleaved, 2 cores:
    # 417/430 against 410/369 req/s, p99 27-29 against 41-44 ms). Measured in deploy/SCALING.md.
    classify_concurrency: int = Field(default=0, ge=0, le=64)
    # The alert receiver the dashboard's open-alerts view reads and acts through (server-side, with the
    # receiver's tokens from the environment). Unset: http://<services.host>:<receiver.port>.
    receiver_url: str | None = None

    _check_port = field_validator("port")(classmethod(lambda cls, v: _port(v)))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    kafka: Kafka = Kafka()
    topics: Topics = Topics()
    broker: Broker = Broker()
    services: Services = Services()
    paths: Paths = Paths()
    model: ModelChoice = ModelChoice()
    ingest: Ingest = Ingest()
    windows: Windows = Windows()
    surge: Surge = Surge()
    stream: Stream = Stream()
    receiver: Receiver = Receiver()
    grafana: Grafana = Grafana()
    web: Web = Web()
    allow_private_feeds: bool = False

    @property
    def audit_db(self) -> Path:
        return self.receiver.audit_db or self.paths.state_dir / "receiver" / "audit.sqlite"

    @property
    def receiver_url(self) -> str:
        """Where the web API reaches the alert receiver (a wildcard bind address is reached on loopback)."""
        host = self.services.host if self.services.host not in WILDCARD_HOSTS else LOOPBACK
        host = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
        return (self.web.receiver_url or f"http://{host}:{self.receiver.port}").rstrip("/")

    @model_validator(mode="after")
    def _surge_width(self) -> Settings:
        if self.surge.window_s not in self.windows.rolling_seconds:
            raise ValueError(
                f"surge.window_s={self.surge.window_s} must be one of windows.rolling_seconds {self.windows.rolling_seconds}"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = _config_path()
        if toml:
            sources.append(_TomlWithoutSecrets(settings_cls, toml_file=toml))
        return tuple(sources)


def reference() -> str:
    """Every setting as Markdown (``docs/settings.md``, written by ``scripts/settings_reference.py``; a test keeps
    it current): its dotted name, its variable and its default, group by group with the group's docstring. The
    README's Configuration names the groups; this is where a newcomer finds each setting."""
    lines = [
        "# Settings",
        "",
        "Generated from `finsent/settings.py` by `scripts/settings_reference.py` (a test fails when it is stale).",
        "Sources, lowest to highest priority: these defaults, a TOML file (`--config FILE` or `FINSENT_CONFIG`),",
        "the environment. Secrets (tokens, passwords) are read from the environment only.",
        "",
    ]

    def leaves(model: type[BaseModel], value: Any, path: tuple[str, ...]) -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            sub, here = getattr(value, name), (*path, name)
            if isinstance(sub, BaseModel):
                out += leaves(type(sub), sub, here)
                continue
            shown = "(secret: environment only)" if field.annotation in (SecretStr, SecretStr | None) else repr(sub)
            shown = shown.replace("PosixPath(", "Path(").replace("|", "\\|")
            out.append(f"| `{'.'.join(here)}` | `{env_var(*here)}` | `{shown}` |")
        return out

    defaults = Settings.model_construct()
    for name, field in Settings.model_fields.items():
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            doc = " ".join((group.__doc__ or "").split())
            lines += [f"## `{name}`", "", *([doc, ""] if doc else [])]
            lines += ["| setting | variable | default |", "|---|---|---|"]
            lines += [*leaves(group, group(), (name,)), ""]
        else:
            lines += [f"## `{name}`", "", "| setting | variable | default |", "|---|---|---|"]
            lines += [f"| `{name}` | `{env_var(name)}` | `{getattr(defaults, name)!r}` |", ""]
    return "\n".join(lines)


def env_var(*path: str) -> str:
    """The environment variable of a setting: ``env_var("web", "port")`` is ``FINSENT_WEB__PORT``."""
    return ENV_PREFIX + "__".join(p.upper() for p in path)


def setting_label(*path: str) -> str:
    """A setting as messages name it, dotted and as its variable: ``web.port (FINSENT_WEB__PORT)``."""
    return f"{'.'.join(path)} ({env_var(*path)})"


def _secret_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The dotted paths of every SecretStr setting (tokens, passwords)."""
    out: list[tuple[str, ...]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if _is_secret(ann):
            out.append((*prefix, name))
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(_secret_fields(ann, (*prefix, name)))
    return out


class _TomlWithoutSecrets(TomlConfigSettingsSource):
    """The TOML file as a settings source, refusing any secret in it: a settings file gets copied, committed and
    shown in reviews, so tokens and passwords come only from the environment (the README's rule), and a secret
    found in the file is a clear error naming the variable to use instead, not a value quietly taken."""

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        found = []
        for path in _secret_fields(Settings):
            node: Any = data
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                found.append(path)
        if found:
            raise SettingsError(
                "invalid finsent settings:\n"
                + "\n".join(
                    f"  {'.'.join(p)} is set in the config file: secrets come only from the environment ({env_var(*p)})"
                    for p in found
                )
            )
        return data


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"] if not str(p).startswith("function-")]
        msg = e["msg"]
        if not loc and (named := re.match(r"Value error, ([a-z_]+)\.([a-z_]+)=", msg)):
            loc = list(named.groups())  # a check across groups (``_surge_width``) names its setting in its message
        where = f"{'.'.join(loc)} ({env_var(*loc)})" if loc else "settings"
        lines.append(
            f"  {where}: {msg}"
            + (f" [got {e['input']!r}]" if "input" in e and not isinstance(e["input"], dict) else "")
        )
    return "invalid finsent settings:\n" + "\n".join(lines)


def load(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build the settings, turning validation errors into one readable :class:`SettingsError`."""
    token = _CONFIG_FILE.set(str(config_file) if config_file is not None else None)
    try:
        path = _config_path()
        if path and not Path(path).is_file():
            raise SettingsError(
                f"invalid finsent settings:\n  config file {path!r} ({ENV_PREFIX}CONFIG) does not exist"
            )
        unknown = _unknown_env()
        if unknown:
            raise SettingsError(
                "invalid finsent settings:\n" + "\n".join(f"  {k}: no such setting" for k in sorted(unknown))
            )
        return Settings(**overrides)
    except ValidationError as err:
        raise SettingsError(_describe(err)) from None
    except SourceError as err:  # an environment value that is not the JSON a list or group setting needs
        named = _not_json_env() or [str(err)]
        raise SettingsError(
            "invalid finsent settings:\n"
            + "\n".join(f"  {n}: not valid JSON (a list or group setting takes JSON)" for n in named)
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise SettingsError(
            f"invalid finsent settings:\n  config file {_config_path()!r} is not valid TOML: {err}"
        ) from None
    except OSError as err:
        raise SettingsError(
            f"invalid finsent settings:\n  config file {_config_path()!r} cannot be read: {err.strerror or err}"
        ) from None
    finally:
        _CONFIG_FILE.reset(token)


# FINSENT_* variables read outside the settings object (logging, the config file path itself).
_OTHER_ENV = {"CONFIG", "LOG_LEVEL", "LOG_JSON"}


def _setting_of(env_name: str) -> Any:
    """The setting (pydantic FieldInfo) a FINSENT_* variable names, case-insensitively as pydantic-settings reads
    the environment; None when it names none (a typo)."""
    model: Any = Settings
    field = None
    for part in env_name.upper()[len(ENV_PREFIX) :].lower().split("__"):
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = field.annotation
    return field


def _unknown_env() -> list[str]:
    """FINSENT_* variables that match no setting: a typo must not be silently ignored."""
    bad = []
    for key in os.environ:
        # case-insensitive, as pydantic-settings reads the environment: finsent_brokr__port is a typo too
        if not key.upper().startswith(ENV_PREFIX) or key[len(ENV_PREFIX) :] in _OTHER_ENV:
            continue  # FINSENT_CONFIG / _LOG_LEVEL / _LOG_JSON are read as written: finsent_log_level is a typo
        if _setting_of(key) is None:
            bad.append(key)
    return bad


def _not_json_env() -> list[str]:
    """FINSENT_* variables of list, tuple, set, dict or group settings whose value is not JSON (pydantic-settings
    names only the top-level group then: 'error parsing value for field "receiver"')."""
    import json

    bad = []
    for key, value in os.environ.items():
        field = _setting_of(key) if key.upper().startswith(ENV_PREFIX) else None
        ann = field.annotation if field is not None else None
        if getattr(ann, "__origin__", None) in (list, tuple, set, frozenset, dict) or (
            isinstance(ann, type) and issubclass(ann, (BaseModel, list, tuple, set, frozenset, dict))
        ):
            try:
                json.loads(value)
            except ValueError:
                bad.append(key)
    return sorted(bad)


def _config_path() -> str | None:
    return _CONFIG_FILE.get() or os.environ.get(f"{ENV_PREFIX}CONFIG") or None
