"""Create and check finsent's Kafka topics (embedded Tansu or Apache Kafka alike).

Topics are created explicitly with their partition counts because partitions are the unit of worker
scale, and because Tansu auto-creates unknown topics with its own default count. An existing topic
with a different partition count is an error, never silently accepted: the worker's parallelism
and per-key ordering assumptions depend on it.

``read_all`` reads a topic whole (tests, benchmarks) without trusting the broker's end offsets, which the
embedded broker understates.

``bound_topic`` sets retention on an existing topic (the aggregator bounds its checkpoints topic with
``CHECKPOINT_CONFIG`` on every start, whoever created the topic). Apache Kafka applies and reports it;
Tansu 0.6 answers OK to CreateTopics configs and IncrementalAlterConfigs but keeps, reports and
enforces none of them (its memory log is lost on stop anyway), so there the result is "unverified".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from finsent.procs import bootstrap_reachable
from finsent.settings import TopicSpec

log = logging.getLogger("finsent.stream.topics")


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


class TopicMismatch(RuntimeError):
    """An existing topic has another partition count than the settings ask for."""


class BrokerUnavailable(RuntimeError):
    """No broker answered at the bootstrap address in time."""


@dataclass(frozen=True)
class TopicReport:
    created: list[str]
    existing: list[str]


def admin_client(bootstrap: str, timeout_s: float = 15.0, client_id: str = "finsent-admin") -> KafkaAdminClient:
    """An admin client once a broker answers; a plain TCP probe first, because kafka-python's own
    bootstrap can block for ~30 s on a dead address whatever timeout it is given."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if not bootstrap_reachable(bootstrap):
                raise OSError("connection refused")
            return KafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id, request_timeout_ms=10_000)
        except (KafkaError, OSError) as err:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"no Kafka broker at {bootstrap} after {timeout_s:.0f}s ({err})") from None
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

    def __init__(self, bootstrap: str, name: str, timeout_s: float = 10.0):
        self.bootstrap, self.name, self.timeout_s = bootstrap, name, timeout_s
        self._admin: KafkaAdminClient | None = None
        self._lock = threading.Lock()

    def current(self) -> str | None:
        with self._lock:
            return self._current()

    def _current(self) -> str | None:
        try:
            if self._admin is None:
                self._admin = admin_client(self.bootstrap, self.timeout_s)
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


def read_all(bootstrap: str, name: str, timeout_s: float = 10.0, quiet_s: float = 0.3) -> list:
    """Every record now in topic ``name`` (all partitions, from the beginning): kafka-python ConsumerRecords.

    "Up to the end offsets" is not a safe place to stop. Tansu answers ListOffsets(latest) with the base
    offset of the partition's last record batch + 1 (after one batch of 100 records: 1, where a fetch's high
    watermark says 100), so a reader stopping there gets one poll's worth of records. So this reads until
    every partition's position reached both the end offset (a lower bound on any broker) and the high
    watermark of its last fetch (``consumer.highwater``, once a fetch has reported one), and polls have come
    back empty for ``quiet_s``. ``timeout_s`` bounds the whole read; what was read by then is returned.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             fetch_max_wait_ms=100)  # Tansu holds an empty fetch for the whole wait
    try:
        tps = [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps) if tps else {}
        out: list = []
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while tps and time.monotonic() < deadline:
            got = [r for records in consumer.poll(timeout_ms=100).values() for r in records]
            out.extend(got)
            if got:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_s and _caught_up(consumer, tps, ends):
                break
        return out
    finally:
        consumer.close()


def _caught_up(consumer, tps: list, ends: dict) -> bool:
    """Each position at or past its end offset and, where a fetch reported one, its high watermark."""
    for tp in tps:
        position, high = consumer.position(tp), consumer.highwater(tp)
        if position < ends.get(tp, 0) or (high is not None and position < high):
            return False
    return True


def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec], timeout_s: float = 15.0,
                  replication_factor: int = 1) -> TopicReport:
    """Create missing topics; check existing ones. Idempotent; raises TopicMismatch on a conflict."""
    specs = list(specs)
    admin = admin_client(bootstrap, timeout_s)
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


def bound_topic(bootstrap: str, name: str, config: Mapping[str, str], timeout_s: float = 15.0) -> str:
    """Set ``config`` on topic ``name``: "applied", "unverified" (accepted, not reported back) or "refused".

    A broker that refuses the cleanup policy (or an ACL that forbids altering it) gets the size and age
    bounds alone; a refusal of those too is logged, never raised: an unbounded topic is a disk-space
    problem for later, a crash here would stop the windows now."""
    attempts = [dict(config)]
    if "cleanup.policy" in config:
        attempts.append({k: v for k, v in config.items() if k != "cleanup.policy"})
    admin = admin_client(bootstrap, timeout_s)
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
        log.info("topic config accepted but not reported back; the broker may not enforce it",
                    extra={"topic": name, "not_reported": missing})
        return "unverified"
    log.info("topic config applied", extra={"topic": name, "config": config})
    return "applied"
