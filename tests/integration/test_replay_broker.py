"""A replay's resume state belongs to one log on one broker (real Tansu): a broker that lost its log, or another
broker, gets the whole range again instead of "already sent by an earlier run" and an empty topic."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from factories import news_item

from finsent.ingest.archive import Archive
from finsent.ingest.replay import kafka_sender, replay, state_path
from finsent.ingest.sinks import KafkaSink
from finsent.kafka import TopicIdWatch, TopicSpec, ensure_topics, read_all
from finsent.local.broker import broker_child
from finsent.net import free_port, port_open

T0 = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)
TOPIC = "replay-state.raw"


def start_broker(port: int, logs: Path):
    child = broker_child("127.0.0.1", port, logs)
    child.start(lambda: port_open("127.0.0.1", port), timeout=15)
    ensure_topics(f"127.0.0.1:{port}", [TopicSpec(name=TOPIC, partitions=2)])
    return child


def replay_into(bootstrap: str, archive: Archive, state_dir: Path):
    sink = KafkaSink(bootstrap, TOPIC)
    watch = TopicIdWatch(bootstrap, TOPIC)
    try:
        state = state_path(state_dir, None, None, TOPIC, bootstrap)
        return replay(archive.read(), kafka_sender(sink), None, state, batch=4, log_id=watch.current)
    finally:
        watch.close()
        asyncio.run(sink.close())


def test_a_broker_that_lost_its_log_gets_the_replay_again(tmp_path):
    archive = Archive(tmp_path / "archive")
    archive.append([news_item(f"a{i:02d}", f"headline {i}", at=T0 + timedelta(minutes=i)) for i in range(10)])
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker = start_broker(port, tmp_path / "logs-1")
    try:
        first = replay_into(bootstrap, archive, tmp_path / "state")
        assert (first.published, first.skipped) == (10, 0)
        again = replay_into(bootstrap, archive, tmp_path / "state")  # the same log: nothing to send
        assert (again.published, again.skipped) == (0, 10)
    finally:
        broker.stop()
    broker = start_broker(port, tmp_path / "logs-2")  # same address, empty in-memory log, new topic id
    try:
        after = replay_into(bootstrap, archive, tmp_path / "state")
        assert (after.published, after.skipped) == (10, 0)
        assert sorted(r.key.decode() for r in read_all(bootstrap, TOPIC, 10)) == [f"a{i:02d}" for i in range(10)]
    finally:
        broker.stop()

    other_port = free_port()  # another broker altogether: its own state
    other = start_broker(other_port, tmp_path / "logs-3")
    try:
        there = replay_into(f"127.0.0.1:{other_port}", archive, tmp_path / "state")
        assert (there.published, there.skipped) == (10, 0)
    finally:
        other.stop()
