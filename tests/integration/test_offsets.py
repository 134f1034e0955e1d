"""Offsets you can trust: what the embedded broker (Tansu) answers for "latest offset", and reading a topic whole
in spite of it.

Tansu answers ListOffsets(latest) -- kafka-python's ``end_offsets``, aiokafka's too -- with the base offset of
the partition's last record batch + 1, not with the offset after its last record: after one batch of 1000
records it says 1, while a fetch's high watermark says 1000. A reader that stops "at the end offsets" then
returns one poll's worth of records (kafka-python's ``max_poll_records``, 500) and silently drops the rest.
Apache Kafka answers 1000; ``read_topic`` must be right on both.
"""

from __future__ import annotations

import time
import uuid

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from streamkit import read_topic

from finsent.kafka import ensure_topics
from finsent.settings import TopicSpec

N = 1000  # more than max_poll_records: a reader stopping at Tansu's end offset gets only the first poll


def _topic(broker: str, partitions: int = 1) -> str:
    name = f"t{uuid.uuid4().hex[:8]}.offsets"
    ensure_topics(broker, [TopicSpec(name=name, partitions=partitions)])
    return name


def _produce_one_batch(broker: str, name: str, n: int, first: int = 0) -> None:
    """``n`` records in one record batch: a long linger and a large batch keep them together until flush."""
    producer = KafkaProducer(bootstrap_servers=broker, acks="all", linger_ms=60_000, batch_size=4 << 20)
    futures = [producer.send(name, key=b"k%d" % i, value=b"v%d" % i, partition=0) for i in range(first, first + n)]
    producer.flush(30)
    producer.close()
    assert [f.get(0).offset for f in futures] == list(range(first, first + n))


def _end_offset_and_high_watermark(broker: str, name: str) -> tuple[int, int | None]:
    tp = TopicPartition(name, 0)
    consumer = KafkaConsumer(bootstrap_servers=broker, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100)
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        deadline = time.monotonic() + 10
        while consumer.highwater(tp) is None and time.monotonic() < deadline:
            consumer.poll(timeout_ms=100)
        return end, consumer.highwater(tp)
    finally:
        consumer.close()


def test_end_offsets_of_one_batch_understate_the_log_on_tansu_and_read_topic_reads_it_all(broker):
    name = _topic(broker)
    _produce_one_batch(broker, name, N)
    end, high = _end_offset_and_high_watermark(broker, name)
    assert high == N  # the fetch's high watermark counts every record
    if end < N:  # Tansu: the base offset of the last (here: only) batch, + 1
        assert end == 1
    else:  # a broker that answers ListOffsets as Apache Kafka does
        assert end == N
    records = read_topic(broker, name)
    assert [r.offset for r in records] == list(range(N))
    assert [r.value for r in records] == [b"v%d" % i for i in range(N)]


def test_read_topic_after_a_second_batch_and_on_an_empty_partition(broker):
    """Two batches (the end offset lands inside the second) on one partition, nothing on the other: every record,
    and no waiting for a partition that has none."""
    name = _topic(broker, partitions=2)
    _produce_one_batch(broker, name, N)
    _produce_one_batch(broker, name, N, first=N)
    started = time.monotonic()
    records = read_topic(broker, name)
    assert [r.offset for r in records] == list(range(2 * N))
    assert {r.partition for r in records} == {0}
    assert time.monotonic() - started < 8  # stops once caught up, not at the timeout


def test_read_topic_of_an_empty_topic_returns_soon(broker):
    started = time.monotonic()
    assert read_topic(broker, _topic(broker, partitions=3)) == []
    assert time.monotonic() - started < 5
