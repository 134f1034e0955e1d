"""The embedded broker with finsent's topics, through both Kafka clients finsent uses (real Tansu)."""

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from conftest import environ_without_finsent
from kafka import KafkaProducer

from finsent.kafka import (
    BrokerUnavailable,
    TopicMismatch,
    admin_client,
    ensure_topics,
    partition_counts,
)
from finsent.settings import TopicSpec


def assert_raw_4_alerts_1(broker: str, prefix: str) -> None:
    admin = admin_client(broker)
    try:
        assert partition_counts(admin, [f"{prefix}.raw", f"{prefix}.alerts"]) == {
            f"{prefix}.raw": 4,
            f"{prefix}.alerts": 1,
        }
    finally:
        admin.close()


def _specs(prefix: str) -> list[TopicSpec]:
    return [TopicSpec(name=f"{prefix}.raw", partitions=4), TopicSpec(name=f"{prefix}.alerts", partitions=1)]


def test_topics_created_with_their_partition_counts_idempotently(broker):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    first = ensure_topics(broker, _specs(prefix))
    assert sorted(first.created) == [f"{prefix}.alerts", f"{prefix}.raw"]
    assert_raw_4_alerts_1(broker, prefix)
    second = ensure_topics(broker, _specs(prefix))
    assert second.created == [] and sorted(second.existing) == sorted(first.created)


def test_partition_mismatch_is_reported(broker):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    ensure_topics(broker, _specs(prefix))
    with pytest.raises(TopicMismatch, match=rf"{prefix}\.raw: has 4 partitions, settings ask for 8"):
        ensure_topics(broker, [TopicSpec(name=f"{prefix}.raw", partitions=8)])


def test_dead_broker_is_a_clear_error():
    with pytest.raises(BrokerUnavailable, match=r"no Kafka broker at 127\.0\.0\.1:1"):
        ensure_topics("127.0.0.1:1", _specs("x"), timeout_s=1)


def _produce(broker: str, topic: str, n: int) -> list[bytes]:
    producer = KafkaProducer(bootstrap_servers=broker, acks="all", retries=5)
    values = [f"headline {i}".encode() for i in range(n)]
    for i, v in enumerate(values):
        producer.send(topic, key=f"id-{i}".encode(), value=v).get(timeout=10)
    producer.close()
    return values


def test_kafka_python_to_aiokafka(broker):
    topic = f"t{uuid.uuid4().hex[:8]}.raw"
    ensure_topics(broker, [TopicSpec(name=topic, partitions=4)])
    sent = _produce(broker, topic, 40)

    async def consume() -> list[bytes]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker, auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        got: list[bytes] = []
        try:
            async with asyncio.timeout(20):
                while len(got) < len(sent):
                    batch = await consumer.getmany(timeout_ms=500)
                    got.extend(m.value for msgs in batch.values() for m in msgs)
        finally:
            await consumer.stop()
        return got

    received = asyncio.run(consume())
    assert sorted(received) == sorted(sent)


def test_kafka_python_to_faust_worker(broker, tmp_path: Path):
    topic = f"t{uuid.uuid4().hex[:8]}.raw"
    ensure_topics(broker, [TopicSpec(name=topic, partitions=2)])
    sent = _produce(broker, topic, 10)
    out = tmp_path / "seen.txt"
    probe = Path(__file__).parents[1] / "faust_probe.py"
    proc = subprocess.run(
        [sys.executable, str(probe), broker, topic, str(out), str(len(sent))],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(out.read_bytes().split(b"\n")) == sorted(sent)


def test_topics_command_creates_then_checks_what_the_deploy_topic_init_job_needs(broker, tmp_path):
    """`finsent topics` is deploy/'s topic-init job: created once, then found; a mismatch exits 1 with the reason."""

    prefix = f"t{uuid.uuid4().hex[:8]}"
    env = {
        **environ_without_finsent(),
        "FINSENT_KAFKA__BOOTSTRAP": broker,
        "FINSENT_PATHS__STATE_DIR": str(tmp_path),
        **{
            f"FINSENT_TOPICS__{t.upper()}__NAME": f"{prefix}.{t}"
            for t in ("raw", "scored", "alerts", "feedback", "dlq", "windows", "checkpoints")
        },
    }

    def run(**extra):
        return subprocess.run(
            [sys.executable, "-m", "finsent.cli", "topics"],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )

    first = run()
    assert first.returncode == 0 and f"{prefix}.raw" in first.stderr.split("created")[1].split("existing")[0], (
        first.stderr
    )
    assert_raw_4_alerts_1(broker, prefix)
    second = run()
    assert second.returncode == 0 and "created none" in second.stderr
    mismatch = run(FINSENT_TOPICS__RAW__PARTITIONS="12")
    assert mismatch.returncode == 1 and "has 4 partitions, settings ask for 12" in mismatch.stderr
