"""Restore points as they are read back: the aggregator, in this process, on the real (Tansu) broker.

A record on the checkpoints topic that is not a restore point of this version (garbage bytes, another
format version) must not crash-loop the aggregator: it restores from the newest readable one before it
and counts what it skipped; with none readable it starts afresh, counted. An idle aggregator writes no
new restore points.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from datetime import datetime

import pytest
from factories import scored_item
from streamkit import (
    FAST_WINDOWS,
    create_topics,
    headlines,
    past,
    publish,
    read_topic,
    settings_from,
    topic,
    worker_env,
)

from finsent.errors import RestorePointError
from finsent.kafka import CHECKPOINT_CONFIG, bound_topic
from finsent.labels import TOPIC_LABELS
from finsent.records import COMPRESSED, RestorePoint, ScoredItem, SurgeAlert
from finsent.stream.aggregator import Aggregator
from finsent.stream.metrics import WorkerMetrics

FAST_CHECKPOINTS = {"FINSENT_STREAM__CHECKPOINT_INTERVAL_S": "0.2"}
# 2 s windows, no watermark delay: with nothing more to read, the aggregator has published all it will within seconds.
TINY_WINDOWS = {
    "FINSENT_WINDOWS__BUCKET_SECONDS": "2",
    "FINSENT_WINDOWS__ROLLING_SECONDS": "[2]",
    "FINSENT_WINDOWS__WATERMARK_DELAY_S": "0",
    "FINSENT_WINDOWS__IDLE_CLOSE_S": "0.5",
    "FINSENT_SURGE__WINDOW_S": "2",
}
V99 = COMPRESSED + zlib.compress(
    json.dumps(
        {"v": 99, "replay_from": {"0": 0}, "emitted_until": None, "detector": {}, "layout": "from the future"}
    ).encode()
)
GARBAGE = b"\x00\x9c not a restore point \xff"


def scored(n: int, start: datetime, step_s: float, prefix: str = "n") -> list[ScoredItem]:
    return [
        scored_item(it, "neutral", TOPIC_LABELS[0], sentiment_confidence=None, topic_confidence=None, model="test@1")
        for it in headlines(n, start, step_s, prefix=prefix)
    ]


def setup(broker, tmp_path, **extra):
    env = worker_env(broker, tmp_path, **{**FAST_WINDOWS, **FAST_CHECKPOINTS, **extra})
    create_topics(env)
    return env, settings_from(env)


def publish_scored(broker, env, items: list[ScoredItem]) -> None:
    publish(broker, topic(env, "scored"), [(s.item.id.encode(), s.to_json()) for s in items])


def sample(metrics: WorkerMetrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def step_until(agg: Aggregator, done, timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await agg.step(timeout_ms=100)


async def step_for(agg: Aggregator, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await agg.step(timeout_ms=100)


def run_to_a_restore_point(settings, n: int) -> None:
    """An aggregator reads ``n`` scored items, writes a restore point covering them, and stops."""

    async def main():
        agg = Aggregator(settings, WorkerMetrics())
        await agg.start()
        try:
            await step_until(
                agg,
                lambda: sum(agg.positions.values()) == n and agg.written_positions == agg.positions,
                what="a restore point covering every item",
            )
        finally:
            await agg.stop()

    asyncio.run(main())


def test_records_that_are_no_restore_point_of_this_version_say_why():
    good = RestorePoint({0: 1}, 1.7e9, {"keys": {}}, {0: 2})
    assert RestorePoint.from_json(good.to_json()).positions == {0: 2}
    assert RestorePoint.from_json(good.to_json()).alerts_from is None  # an older build's: not "nothing published"
    recorded = RestorePoint({0: 1}, 1.7e9, {"keys": {}}, {0: 2}, alerts_from={0: 0, 1: 7})
    assert RestorePoint.from_json(recorded.to_json()).alerts_from == {0: 0, 1: 7}
    for value, reason in (
        (GARBAGE, "unreadable"),
        (None, "unreadable"),
        (b"[1, 2]", "unreadable"),
        (COMPRESSED + b"not zlib", "unreadable"),
        (V99, "version"),
        (json.dumps({"v": 2, "replay_from": {"0": "x"}}).encode(), "unreadable"),
    ):
        with pytest.raises(RestorePointError) as err:
            RestorePoint.from_json(value)
        assert err.value.reason == reason, value


def test_garbage_and_a_foreign_version_after_a_good_restore_point_are_skipped(broker, tmp_path):
    env, settings = setup(broker, tmp_path)
    publish_scored(broker, env, scored(60, past(600), 2.0))
    run_to_a_restore_point(settings, 60)
    checkpoints = topic(env, "checkpoints")
    good = RestorePoint.from_json(read_topic(broker, checkpoints)[-1].value)
    # Likely one batch: Tansu's end offset then names the first of them (see test_offsets.py).
    publish(broker, checkpoints, [(b"aggregator", GARBAGE), (b"aggregator", V99)])

    async def restart():
        metrics = WorkerMetrics()
        agg = Aggregator(settings, metrics)
        await agg.start()
        try:
            assert agg.restore_until == {p: good.positions[p] for p in agg.restore_until}  # the good one's span
            assert sample(metrics, "finsent_restore_points_skipped_total", reason="unreadable") == 1
            assert sample(metrics, "finsent_restore_points_skipped_total", reason="version") == 1
            assert sample(metrics, "finsent_restore_fresh_starts_total", reason="none_readable") == 0
            await step_until(agg, lambda: not agg.restoring and agg.written_positions is not None, what="the replay")
            assert sample(metrics, "finsent_window_restored_items_total") > 0  # rebuilt from the scored log
        finally:
            await agg.stop()

    asyncio.run(restart())
    newest = read_topic(broker, checkpoints)[-1]
    assert RestorePoint.from_json(newest.value).positions == good.positions  # a readable one is on top again


def test_only_unreadable_records_start_afresh_and_are_counted(broker, tmp_path):
    env, settings = setup(broker, tmp_path)
    publish_scored(broker, env, scored(20, past(600), 2.0))
    unreadable = [(b"aggregator", GARBAGE), (b"aggregator", b"[]"), (b"aggregator", None)]  # None: a tombstone
    publish(broker, topic(env, "checkpoints"), unreadable)

    async def start():
        metrics = WorkerMetrics()
        agg = Aggregator(settings, metrics)
        await agg.start()
        try:
            assert not agg.restoring and set(agg.positions.values()) == {0}  # from the beginning of the scored log
            assert sample(metrics, "finsent_restore_points_skipped_total", reason="unreadable") == 3
            assert sample(metrics, "finsent_restore_fresh_starts_total", reason="none_readable") == 1
            await step_until(agg, lambda: sum(agg.positions.values()) == 20, what="every item read")
        finally:
            await agg.stop()

    asyncio.run(start())


def test_an_idle_aggregator_writes_no_new_restore_points(broker, tmp_path):
    env, settings = setup(broker, tmp_path, **TINY_WINDOWS)
    checkpoints = topic(env, "checkpoints")
    publish_scored(broker, env, scored(30, past(120), 1.0))

    async def main():
        metrics = WorkerMetrics()
        agg = Aggregator(settings, metrics)
        await agg.start()
        try:
            await step_until(agg, lambda: sum(agg.positions.values()) == 30, what="every item read")
            closed = -1.0
            while closed != sample(metrics, "finsent_windows_closed_total"):  # until 3 idle seconds publish nothing
                closed = sample(metrics, "finsent_windows_closed_total")
                await step_for(agg, 3.0)
            written = len(read_topic(broker, checkpoints))
            covered = sample(metrics, "finsent_window_restore_point_timestamp_seconds")
            await step_for(agg, 2.0)  # ten checkpoint intervals
            assert len(read_topic(broker, checkpoints)) == written
            assert sample(metrics, "finsent_window_restore_point_timestamp_seconds") > covered  # checked: still current
            publish_scored(broker, env, scored(5, past(60), 1.0, prefix="m"))  # a change: a restore point follows
            await step_until(
                agg,
                lambda: sum(agg.positions.values()) == 35 and agg.written_positions == agg.positions,
                what="a restore point covering the new items",
            )  # a condition, not a fixed half second: a slow scheduler must not fail it
            assert len(read_topic(broker, checkpoints)) > written
        finally:
            await agg.stop()

    asyncio.run(main())


def test_the_checkpoints_topic_gets_bounded_retention_tansu_accepts_but_does_not_report_it(broker, tmp_path):
    env, _ = setup(broker, tmp_path)
    assert CHECKPOINT_CONFIG["cleanup.policy"] == "compact,delete"
    assert {"retention.ms", "retention.bytes"} <= CHECKPOINT_CONFIG.keys()
    # Tansu 0.6 answers IncrementalAlterConfigs with OK and DescribeConfigs with nothing; Apache Kafka reports them.
    assert bound_topic(broker, topic(env, "checkpoints"), CHECKPOINT_CONFIG) == "unverified"


def test_an_early_firing_acknowledged_after_the_newest_restore_point_is_settled_after_a_crash(broker, tmp_path):
    """The process dies between an early firing's acknowledgement and the restore point that would cover it.

    Aggregator A reads 8 negatives that open a 2 s window and fires early; its restore-point writer is cut
    off for that step (``maybe_checkpoint`` replaced: the one stand-in here, for a kill -9 at that instant).
    200 neutrals of the same window follow. Aggregator B restarts from the older restore point and reads
    the negatives and the neutrals in one poll (one partition, one fetch), so its own re-run never fires
    early. The firing A published must still be settled (here retracted) on the alerts topic: only the
    alerts topic past the restore point says it went out.
    """
    env, settings = setup(broker, tmp_path, **TINY_WINDOWS)
    alerts_topic = topic(env, "alerts")
    start = past(400)
    publish_scored(broker, env, scored(150, start, 0.4, prefix="q"))  # 30 quiet windows of 5 neutrals
    t = (int(past(200).timestamp()) // 2) * 2  # a window boundary, 200 s after the quiet minute
    at = datetime.fromtimestamp
    negatives = [
        scored_item(it, "negative", TOPIC_LABELS[0], model="test@1")
        for it in headlines(8, at(t + 0.05, start.tzinfo), 0.05, prefix="s")
    ]
    neutrals = scored(200, at(t + 0.6, start.tzinfo), 0.006, prefix="d")
    one_partition = b"crash-test"

    async def crash_after_the_early_firing():
        agg = Aggregator(settings, WorkerMetrics())
        await agg.start()
        try:
            await step_until(
                agg, lambda: sum(agg.positions.values()) == 150 and agg.written_positions == agg.positions, what="quiet"
            )
            await step_for(agg, 1.5)  # the quiet windows judged (the baseline) and covered by a restore point
            covered = dict(agg.written_positions)

            async def no_restore_point(force: bool = False) -> None:
                return None

            agg.maybe_checkpoint = no_restore_point  # the kill -9 falls after the acknowledgement, before this
            publish(broker, topic(env, "scored"), [(one_partition, s.to_json()) for s in negatives])
            fired: list = []
            deadline = time.monotonic() + 30
            while not fired:
                assert time.monotonic() < deadline, "no early firing"
                out = await agg.step(timeout_ms=100)
                fired = [a for a in out.alerts if a.trigger == "early"]
            return fired, covered
        finally:
            await agg.stop()

    fired, covered = asyncio.run(crash_after_the_early_firing())
    newest_point = RestorePoint.from_json(read_topic(broker, topic(env, "checkpoints"))[-1].value)
    assert newest_point.positions == covered  # the restart really starts from before the negatives
    publish(broker, topic(env, "scored"), [(one_partition, s.to_json()) for s in neutrals])

    def settled() -> bool:
        records = [SurgeAlert.from_json(r.value) for r in read_topic(broker, alerts_topic)]
        newest = {a.transition: a for a in records}
        return all(newest[a.transition] != a for a in fired)

    async def restart():
        agg = Aggregator(settings, WorkerMetrics())
        await agg.start()
        try:
            await step_until(agg, lambda: sum(agg.positions.values()) == 150 + 208, what="every item read")
            deadline = time.monotonic() + 30
            while not settled():
                assert time.monotonic() < deadline, "the early firing was neither confirmed nor retracted"
                await step_for(agg, 1.0)
        finally:
            await agg.stop()

    asyncio.run(restart())
    records = [SurgeAlert.from_json(r.value) for r in read_topic(broker, alerts_topic)]
    assert sum(a.trigger == "early" for a in records) == len(fired)  # B did not fire it again itself
    newest = {a.transition: a for a in records}
    assert all(newest[a.transition].retracted for a in fired)  # 8 of 208: the complete window does not hold
    # B's restore point says where the alerts topic ends: past every record on it (offsets from the acks).
    alerts_from = RestorePoint.from_json(read_topic(broker, topic(env, "checkpoints"))[-1].value).alerts_from
    assert alerts_from is not None and sum(alerts_from.values()) == len(records)


def test_a_scored_record_dated_decades_ahead_is_clamped_and_pins_no_restore_point(broker, tmp_path):
    """The worker checks raw items at the edge, but any producer can write the scored topic: a record dated 2068
    was counted in a 2068 bucket, which never left memory and held every restore point's replay_from at its
    offset for good. The aggregator checks scored records the same way, and counts what it corrected."""
    from datetime import UTC, timedelta

    from factories import news_item

    env, settings = setup(broker, tmp_path, **TINY_WINDOWS)
    future = datetime(2068, 1, 2, tzinfo=UTC)
    rogue = scored_item(news_item("rogue", "Rogue producer headline", at=future), "negative", TOPIC_LABELS[0])
    publish_scored(broker, env, [*scored(20, past(60), 1.0), rogue])
    time.sleep(2.5)  # more than a 2-s bucket between the record's time on the topic and the aggregator's first poll

    async def main():
        metrics = WorkerMetrics()
        agg = Aggregator(settings, metrics)
        await agg.start()
        try:
            await step_until(agg, lambda: sum(agg.positions.values()) == 21, what="every item read")
            ceiling = (datetime.now(UTC) + timedelta(seconds=settings.windows.future_tolerance_s)).timestamp()
            buckets = [start for lows in agg.lows.values() for start in lows]
            assert buckets and max(buckets) <= ceiling  # counted at the time it was fetched, clamped: not in 2068
            assert sample(metrics, "finsent_worker_items_corrected_total", fix="clamped") == 1
            # clamped to the record's own time on the topic, which a restart's replay meets again (not the poll's clock)
            (record,) = [r for r in read_topic(broker, topic(env, "scored")) if r.key == b"rogue"]
            assert agg.lows[record.partition].get(agg.agg.bucket_of(record.timestamp / 1000)) == record.offset
        finally:
            await agg.stop()

    asyncio.run(main())


def test_an_item_counted_in_the_open_window_is_read_again_by_a_restarts_replay(broker, tmp_path):
    """windows.too_late = open_window: the restore point's replay_from must still reach the record, or the list of
    such items it carries is never used (the offset was kept under the item's own, long-closed bucket, and
    replay_from moved past it at once: a review found the counted item gone after a restart)."""
    env, settings = setup(
        broker,
        tmp_path,
        **TINY_WINDOWS,
        FINSENT_WINDOWS__ALLOWED_LATENESS_S="4",
        FINSENT_WINDOWS__TOO_LATE="open_window",
    )
    publish_scored(broker, env, scored(30, past(120), 1.0))
    (late,) = scored(1, past(600), 1.0, prefix="late")

    async def main():
        agg = Aggregator(settings, WorkerMetrics())
        await agg.start()
        try:
            await step_until(agg, lambda: sum(agg.positions.values()) == 30, what="every on-time item read")
            await step_for(agg, 9.0)  # idle: the watermark moves on and no on-time bucket is revisable any more
            publish_scored(broker, env, [late])
            await step_until(agg, lambda: agg.agg.retimed == 1, what="the late item counted in the open window")
            (record,) = [r for r in read_topic(broker, topic(env, "scored")) if r.key == late.item.id.encode()]
            assert agg.replay_from()[record.partition] <= record.offset
            assert late.item.id in agg.agg.snapshot()["retimed"]
        finally:
            await agg.stop()

    asyncio.run(main())
