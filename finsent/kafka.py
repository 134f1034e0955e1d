"""The one Kafka room: every client finsent builds, topic admin, the tail loop and dead letters.

Why one room: clients used to be built by hand in six files with two libraries, each setting its client id
its own way. Here every client comes from ``settings.kafka`` (bootstrap, client id ``<client_id>-<role>``,
and the SASL/TLS options, set once), so a deployment that adds authentication changes one settings group.
Two libraries remain on purpose: aiokafka inside event loops (worker, aggregator, API, receiver) and
kafka-python where blocking is the point (ingest's acks=all sink, admin, whole-topic reads in tests).

Topics are created explicitly with their partition counts because partitions are the unit of worker
scale, and because Tansu auto-creates unknown topics with its own default count. An existing topic
with a different partition count is an error, never silently accepted: the worker's parallelism
and per-key ordering assumptions depend on it.

Where a partition ends is never taken from ListOffsets alone: the embedded broker (Tansu) answers "latest" with
the base offset of the partition's last record batch + 1, so a reader stopping there misses the rest of that
batch. ``log_end`` is the one rule (the larger of the listed end and a fetch's high watermark); ``read_all`` (a
topic whole, blocking: tests, benchmarks) and ``log_bounds`` / ``read_span`` (one partition inside an event loop:
the aggregator's restore points and alerts) read by it.

The Faust worker's broker settings come from here too (``faust_broker_options``): its bootstrap list, client id
and SASL/TLS credentials, from the same settings as every other client.

``bound_topic`` sets retention on an existing topic (the aggregator bounds its checkpoints topic with
``CHECKPOINT_CONFIG`` on every start, whoever created the topic). Apache Kafka applies and reports it;
Tansu 0.6 answers OK to CreateTopics configs and IncrementalAlterConfigs but keeps, reports and
enforces none of them (its memory log is lost on stop anyway), so there the result is "unverified".

``follow_topics`` tails small topics from the beginning, forever, reconnecting after broker failures: the
receiver (evidence) and the web API (views of the output topics) both keep a local copy that way.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from prometheus_client.core import CounterMetricFamily

from finsent.errors import BrokerUnavailable, RecordError, TopicMismatch
from finsent.net import port_open
from finsent.records import DeadLetter
from finsent.settings import Kafka, Settings, TopicSpec

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from kafka import KafkaConsumer, KafkaProducer

log = logging.getLogger("finsent.kafka")


# -- reachability and clients ----------------------------------------------------------------------------
KafkaLike = Kafka | str  # settings.kafka, or a bare bootstrap address (tests, benchmarks: PLAINTEXT)


def as_kafka(kafka: KafkaLike) -> Kafka:
    return Kafka(bootstrap=kafka) if isinstance(kafka, str) else kafka


def bootstrap_reachable(bootstrap: str, timeout: float = 0.5) -> bool:
    """True if any host:port of a Kafka bootstrap list accepts a TCP connection (a cheap liveness probe)."""
    for part in bootstrap.split(","):
        host, _, port = part.strip().rpartition(":")
        if port.isdigit() and port_open(host, int(port), timeout):
            return True
    return False


def client_id(kafka: Kafka, role: str) -> str:
    """``<kafka.client_id>-<role>``: every connection says which part of finsent opened it."""
    return f"{kafka.client_id}-{role}"


def security_options(kafka: Kafka, *, aio: bool) -> dict[str, Any]:
    """SASL/TLS options for either library; empty for PLAINTEXT, so local runs pass nothing extra."""
    if kafka.security_protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if kafka.security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
    if kafka.security_protocol.endswith("SSL"):
        if aio:
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(cafile=kafka.ssl_cafile)
        elif kafka.ssl_cafile:
            options["ssl_cafile"] = kafka.ssl_cafile
    return options


def producer(kafka: Kafka, role: str, **options: Any) -> KafkaProducer:
    """A blocking kafka-python producer (acks=all unless ``options`` say otherwise)."""
    from kafka import KafkaProducer

    return KafkaProducer(
        **{
            "bootstrap_servers": kafka.bootstrap,
            "client_id": client_id(kafka, role),
            "acks": "all",
            **security_options(kafka, aio=False),
            **options,
        }
    )


def consumer(kafka: Kafka, role: str, **options: Any) -> KafkaConsumer:
    """A blocking kafka-python consumer without a group (finsent tracks its own positions)."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        **{
            "bootstrap_servers": kafka.bootstrap,
            "client_id": client_id(kafka, role),
            "group_id": None,
            "enable_auto_commit": False,
            **security_options(kafka, aio=False),
            **options,
        }
    )


def aio_producer(kafka: Kafka, role: str, **options: Any) -> AIOKafkaProducer:
    """An aiokafka producer (acks=all unless ``options`` say otherwise); start it in the running loop."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(
        **{
            "bootstrap_servers": kafka.bootstrap,
            "client_id": client_id(kafka, role),
            "acks": "all",
            **security_options(kafka, aio=True),
            **options,
        }
    )


def aio_consumer(kafka: Kafka, role: str, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """An aiokafka consumer without a group (finsent assigns partitions and tracks positions itself)."""
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(
        *topics,
        **{
            "bootstrap_servers": kafka.bootstrap,
            "client_id": client_id(kafka, role),
            "group_id": None,
            "enable_auto_commit": False,
            **security_options(kafka, aio=True),
            **options,
        },
    )


def faust_broker_options(kafka: Kafka, role: str) -> dict[str, Any]:
    """The ``faust.App`` broker settings: ``broker`` (one URL per bootstrap host), ``broker_client_id``
    (``<client_id>-<role>``) and, unless PLAINTEXT, ``broker_credentials`` built from ``security_options``: Faust
    opens its own aiokafka clients from these, so a worker on a SASL/TLS cluster authenticates as the rest does.

    The mapping (``faust.auth``; Faust hands each to aiokafka in ``credentials_to_aiokafka_auth``): SSL is
    ``SSLCredentials`` around the TLS context; SASL_PLAINTEXT and SASL_SSL are ``SASLCredentials`` with the
    mechanism, user name and password, and for SASL_SSL the TLS context (which makes Faust say SASL_SSL)."""
    from faust.auth import SASLCredentials, SSLCredentials

    options: dict[str, Any] = {
        "broker": [f"kafka://{hp.strip()}" for hp in kafka.bootstrap.split(",")],
        "broker_client_id": client_id(kafka, role),
    }
    security = security_options(kafka, aio=True)
    if not security:
        return options
    ssl_context = security.get("ssl_context")
    if kafka.security_protocol.startswith("SASL"):
        options["broker_credentials"] = SASLCredentials(
            username=security["sasl_plain_username"],
            password=security["sasl_plain_password"],
            mechanism=security["sasl_mechanism"],
            ssl_context=ssl_context,
        )
    else:
        options["broker_credentials"] = SSLCredentials(ssl_context)
    return options


class Consumed(Protocol):
    """What finsent reads of a consumed record: Faust's ``Message`` and aiokafka's ``ConsumerRecord`` both have it.
    ``timestamp``: seconds in Faust's (it divides Kafka's milliseconds by 1000); falsy when the broker gave none."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> float | None: ...


Outgoing = tuple[str, bytes | None, bytes]  # (topic, key, value) of a record to produce


def dead_letter(settings: Settings, msg: Consumed, error: str) -> Outgoing:
    """(topic, key, value) of the dead letter for a consumed message: the bytes kept, and why. The Kafka key is
    ``DeadLetter.kafka_key`` (the original key, or its SHA-256 when longer than 4 KiB): with the original key
    whole, a record with a huge key made a letter over the broker's message limit and stalled its partition."""
    letter = DeadLetter.of(
        topic=msg.topic, partition=msg.partition, offset=msg.offset, key=msg.key, value=msg.value or b"", error=error
    )
    return settings.topics.dlq.name, DeadLetter.kafka_key(msg.key), letter.to_json()


def smaller_dead_letter(value: bytes) -> bytes | None:
    """A dead letter (its JSON) that the broker refused as too large, cut further (``DeadLetter.smaller``); None
    when it cannot be cut any more. Too large is permanent for a given letter: resending it unchanged would stall
    its partition for ever."""
    smaller = DeadLetter.from_json(value).smaller()
    return smaller.to_json() if smaller is not None else None


# -- topic admin -----------------------------------------------------------------------------------------
HOUR_MS = 3600 * 1000

# The checkpoints topic: every restore point has the key "aggregator" and only the newest readable one is
# ever used. Compaction keeps the newest; min.compaction.lag.ms keeps the last hour whole, so a start can
# fall back past an unreadable newest record; delete bounds age and size (a restore point older than the
# scored topic's retention, Kafka's default 7 days, points at offsets that are gone anyway). Both act on
# closed segments only, hence segment.ms. The aggregator rewrites an unchanged restore point hourly, so
# deletion never takes the last one.
CHECKPOINT_CONFIG = {
    "cleanup.policy": "compact,delete",
    "retention.ms": str(7 * 24 * HOUR_MS),
    "retention.bytes": str(512 << 20),
    "segment.ms": str(HOUR_MS),
    "min.compaction.lag.ms": str(HOUR_MS),
}


@dataclass(frozen=True)
class TopicReport:
    created: list[str]
    existing: list[str]


def admin_client(kafka: KafkaLike, timeout_s: float = 15.0) -> KafkaAdminClient:
    """An admin client once a broker answers; a plain TCP probe first, because kafka-python's own
    bootstrap can block for ~30 s on a dead address whatever timeout it is given."""
    kafka = as_kafka(kafka)
    bootstrap = kafka.bootstrap
    deadline = time.monotonic() + timeout_s
    waiting = False
    while True:
        try:
            if not bootstrap_reachable(bootstrap):
                raise OSError("no TCP connection: refused, unreachable, or a host name that does not resolve")
            return KafkaAdminClient(
                bootstrap_servers=bootstrap,
                client_id=client_id(kafka, "admin"),
                request_timeout_ms=10_000,
                **security_options(kafka, aio=False),
            )
        except (KafkaError, OSError) as err:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"no Kafka broker at {bootstrap} after {timeout_s:.0f}s ({err})") from None
            if not waiting:  # say once why nothing happens yet, rather than sit silent for timeout_s
                log.warning(
                    "waiting for the Kafka broker",
                    extra={"bootstrap": bootstrap, "error": str(err)[:200], "give_up_after_s": timeout_s},
                )
                waiting = True
            time.sleep(0.2)


def partition_counts(admin: KafkaAdminClient, names: Iterable[str]) -> dict[str, int]:
    existing = set(admin.list_topics())
    names = [n for n in names if n in existing]
    if not names:
        return {}
    return {d["name"]: len(d["partitions"]) for d in admin.describe_topics(names)}


def topic_id(admin: KafkaAdminClient, name: str) -> str | None:
    """The broker's id of a topic (it changes when a topic is deleted and created again); None if absent."""
    if name not in set(admin.list_topics()):
        return None
    return admin.describe_topics([name])[0].get("topic_id")


class TopicIdWatch:
    """Reads one topic's id again and again over a single admin connection (rebuilt after a failure).

    Thread-safe: the worker asks from its timer and from its consumer's commit path."""

    def __init__(self, kafka: KafkaLike, name: str, timeout_s: float = 10.0):
        self.kafka, self.name, self.timeout_s = as_kafka(kafka), name, timeout_s
        self._admin: KafkaAdminClient | None = None
        self._lock = threading.Lock()

    def current(self) -> str | None:
        with self._lock:
            return self._current()

    def _current(self) -> str | None:
        try:
            if self._admin is None:
                self._admin = admin_client(self.kafka, self.timeout_s)
            return topic_id(self._admin, self.name)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self._admin is not None:
            try:
                self._admin.close()
            except Exception:  # noqa: BLE001 (closing a client of a dead broker)
                pass
            self._admin = None


# -- reading partitions to their end ---------------------------------------------------------------------
def log_end(listed: int, highwater: int | None) -> int:
    """Where a partition's log ends: its listed end offset (ListOffsets, a lower bound on any broker), or the high
    watermark a fetch reported when that is further. Tansu answers ListOffsets(latest) with the base offset of the
    partition's last record batch + 1 (after one batch of 100 records: 1, where a fetch's high watermark says 100),
    so a reader stopping at the listed end gets one poll's worth of records there."""
    return listed if highwater is None else max(listed, highwater)


def read_all(kafka: KafkaLike, name: str, timeout_s: float = 10.0, quiet_s: float = 0.3) -> list:
    """Every record now in topic ``name`` (all partitions, from the beginning): kafka-python ConsumerRecords.

    Reads until every partition's position reached its ``log_end`` (the listed end offset, and the high watermark
    of its last fetch once a fetch has reported one) and polls have come back empty for ``quiet_s``. ``timeout_s``
    bounds the whole read; what was read by then is returned.
    """
    from kafka import TopicPartition

    reader = consumer(as_kafka(kafka), "reader", fetch_max_wait_ms=100)  # Tansu holds an empty fetch for the whole wait
    try:
        tps = [TopicPartition(name, p) for p in sorted(reader.partitions_for_topic(name) or ())]
        reader.assign(tps)
        reader.seek_to_beginning(*tps)
        ends = reader.end_offsets(tps) if tps else {}
        out: list = []
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while tps and time.monotonic() < deadline:
            got = [r for records in reader.poll(timeout_ms=100).values() for r in records]
            out.extend(got)
            if got:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_s and _caught_up(reader, tps, ends):
                break
        return out
    finally:
        reader.close()


def _caught_up(consumer, tps: list, ends: dict) -> bool:
    """Each position at or past its ``log_end``."""
    return all(consumer.position(tp) >= log_end(ends.get(tp, 0), consumer.highwater(tp)) for tp in tps)


async def log_bounds(consumer: AIOKafkaConsumer, tp: TopicPartition) -> tuple[int, int]:
    """First and next offset of one partition's log (an aiokafka consumer with ``tp`` assigned). The end is the
    ``log_end`` after fetching the newest listed record, so that a fetch has reported the high watermark; a broker
    that does not deliver that record raises ``BrokerUnavailable``."""
    begin = (await consumer.beginning_offsets([tp]))[tp]
    end = (await consumer.end_offsets([tp]))[tp]
    if end <= begin:
        return begin, begin  # empty, or emptied by retention
    consumer.seek(tp, end - 1)
    if not (await consumer.getmany(tp, timeout_ms=5000)).get(tp):
        raise BrokerUnavailable(f"could not read the newest record at {tp.topic}[{tp.partition}]@{end - 1}")
    return begin, log_end(end, consumer.highwater(tp))


async def read_span(
    consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, upto: int, timeout_s: float = 10.0
) -> list:
    """The records at offsets start..upto-1 of one partition (compaction may have left gaps; ``upto`` from
    ``log_bounds``). A broker that does not deliver them within ``timeout_s`` raises ``BrokerUnavailable``: a caller
    restoring state from them must not start afresh, throwing state away, over a network problem."""
    consumer.seek(tp, start)
    out: list = []
    deadline = time.monotonic() + timeout_s
    while await consumer.position(tp) < upto:
        if time.monotonic() > deadline:
            raise BrokerUnavailable(f"could not read records {start}..{upto - 1} of {tp.topic}[{tp.partition}]")
        batch = await consumer.getmany(tp, timeout_ms=1000)
        out += [m for m in batch.get(tp, []) if m.offset < upto]
    return out


def ensure_topics(
    kafka: KafkaLike, specs: Iterable[TopicSpec], timeout_s: float = 15.0, replication_factor: int = 1
) -> TopicReport:
    """Create missing topics; check existing ones. Idempotent; raises TopicMismatch on a conflict."""
    specs = list(specs)
    admin = admin_client(kafka, timeout_s)
    try:
        existing = partition_counts(admin, [s.name for s in specs])
        mismatches = [
            f"{s.name}: has {existing[s.name]} partitions, settings ask for {s.partitions}"
            for s in specs
            if s.name in existing and existing[s.name] != s.partitions
        ]
        if mismatches:
            raise TopicMismatch(
                "topic partition counts differ from settings (fix the settings or recreate the topic): "
                + "; ".join(mismatches)
            )
        created = []
        for spec in specs:
            if spec.name in existing:
                continue
            try:
                admin.create_topics([NewTopic(spec.name, spec.partitions, replication_factor)])
                created.append(spec.name)
            except TopicAlreadyExistsError:  # raced with another creator: check what it made
                counts = partition_counts(admin, [spec.name])
                if counts.get(spec.name) != spec.partitions:
                    raise TopicMismatch(
                        f"{spec.name}: created concurrently with {counts.get(spec.name)} partitions, "
                        f"settings ask for {spec.partitions}"
                    ) from None
        log.info("topics ready", extra={"topics_created": created, "topics_existing": sorted(existing)})
        return TopicReport(created=created, existing=sorted(existing))
    finally:
        admin.close()


def bound_topic(kafka: KafkaLike, name: str, config: Mapping[str, str], timeout_s: float = 15.0) -> str:
    """Set ``config`` on topic ``name``: "applied", "unverified" (accepted, not reported back) or "refused".

    A broker that refuses the cleanup policy (or an ACL that forbids altering it) gets the size and age
    bounds alone; a refusal of those too is logged, never raised: an unbounded topic is a disk-space
    problem for later, a crash here would stop the windows now."""
    attempts = [dict(config)]
    if "cleanup.policy" in config:
        attempts.append({k: v for k, v in config.items() if k != "cleanup.policy"})
    admin = admin_client(kafka, timeout_s)
    try:
        for attempt in attempts:
            error = _alter_topic(admin, name, attempt)
            if error is None:
                return _verify_topic(admin, name, attempt)
            log.warning("topic config refused", extra={"topic": name, "config": attempt, "error": error})
        return "refused"
    finally:
        admin.close()


def _alter_topic(admin: KafkaAdminClient, name: str, config: dict[str, str]) -> str | None:
    """None when the broker accepted ``config``, else its error. Incremental: other settings stay."""
    resource = ConfigResource(ConfigResourceType.TOPIC, name, configs=config)
    try:
        # raise_on_unknown=False: the client's check asks the broker which keys are set, and unset ones are unknown
        result = admin.alter_configs([resource], raise_on_unknown=False)
    except (KafkaError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    outcome = result.get("topic", {}).get(name)
    return None if outcome == "OK" else str(outcome)


def _verify_topic(admin: KafkaAdminClient, name: str, config: dict[str, str]) -> str:
    """Read the topic's settings back: a broker may answer OK and keep nothing (Tansu)."""
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        reported = described.get("topic", {}).get(name, {})
    except (KafkaError, ValueError) as err:
        reported = {"error": {"value": str(err)}}
    missing = sorted(k for k, v in config.items() if reported.get(k, {}).get("value") != v)
    if missing:
        log.info(
            "topic config accepted but not reported back; the broker may not enforce it",
            extra={"topic": name, "not_reported": missing},
        )
        return "unverified"
    log.info("topic config applied", extra={"topic": name, "config": config})
    return "applied"


# -- following small topics -----------------------------------------------------------------------------
# Records ``follow_topics`` skipped because its handler failed on them, per (role, topic), since the process started:
# for a caller's metrics (the log line says which record and why).
FOLLOW_SKIPPED: collections.Counter[tuple[str, str]] = collections.Counter()


class FollowSkippedCollector:
    """``finsent_follow_skipped_records_total{topic}``: the records one role's ``follow_topics`` skipped, for that
    service's /metrics (a client_python ``Collector``: read at scrape time, no second count to keep)."""

    def __init__(self, role: str) -> None:
        self.role = role

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "finsent_follow_skipped_records",
            "Records of followed topics skipped: handling them failed",
            labels=["topic"],
        )
        for (role, topic), n in sorted(FOLLOW_SKIPPED.items()):
            if role == self.role:
                family.add_metric([topic], n)
        yield family


async def follow_topics(
    kafka: KafkaLike,
    topics: Iterable[str],
    handle: Callable[[str, bytes | None, int], None],
    role: str,
    fetch_max_wait_ms: int = 100,
    after_batch: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Call ``handle(topic, value, offset)`` for every record. A record ``handle`` fails on, whatever the error, is
    logged, counted in ``FOLLOW_SKIPPED[(role, topic)]`` and skipped: it is that record's problem, not the
    broker's, and reconnecting (which reads from the earliest offset again) would meet it again, for ever.
    ``after_batch`` is awaited after each fetched batch: a ``handle`` that only collects lets it write the batch
    in one go, off the event loop; an error there (the receiver's store) still reconnects, and the re-read from
    the start is what hands the batch over again. Broker errors reconnect. Runs until cancelled."""
    topics = list(topics)
    kafka = as_kafka(kafka)
    delay = 1.0
    while True:
        tail = aio_consumer(kafka, role, *topics, auto_offset_reset="earliest", fetch_max_wait_ms=fetch_max_wait_ms)
        try:
            await tail.start()
            delay = 1.0
            while True:
                batch = await tail.getmany(timeout_ms=1000)
                for tp, messages in batch.items():
                    for msg in messages:
                        try:
                            handle(tp.topic, msg.value, msg.offset)
                        except (RecordError, ValueError) as err:
                            FOLLOW_SKIPPED[(role, tp.topic)] += 1
                            log.warning(
                                "unreadable record skipped",
                                extra={"topic": tp.topic, "offset": msg.offset, "error": str(err)[:200]},
                            )
                        except Exception as err:  # a handler bug on one record must not stop the tail
                            FOLLOW_SKIPPED[(role, tp.topic)] += 1
                            log.error(
                                "record skipped: its handler failed",
                                exc_info=True,
                                extra={
                                    "topic": tp.topic,
                                    "offset": msg.offset,
                                    "error": f"{type(err).__name__}: {str(err)[:200]}",
                                },
                            )
                if after_batch is not None:
                    await after_batch()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - broker down or unreachable: keep serving, reconnect later
            log.warning(
                "topics unavailable, retrying",
                extra={"topics": topics, "error": f"{type(err).__name__}: {err}", "retry_in_s": delay},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        finally:
            try:
                await tail.stop()
            except Exception:  # noqa: BLE001 (stopping a consumer of a dead broker)
                pass
