"""The pure windowing core on hand-built event sequences."""

from datetime import UTC, datetime, timedelta

from finsent.records import Evidence
from finsent.stream.windows import Observation, WindowStore, keys_for

T0 = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)


def obs(i, seconds, sentiment="negative", topic="Macro", tickers=(), p_neg=0.9):
    at = T0 + timedelta(seconds=seconds)
    score = {"negative": -p_neg, "neutral": 0.0, "positive": 0.8}[sentiment]
    ev = Evidence(item_id=f"n{i}", title=f"headline {i}", source="s", published=at, p_negative=p_neg if sentiment == "negative" else 0.05)
    return Observation(f"n{i}", at, keys_for(topic, tickers), sentiment, score, ev)


def store(**kw):
    return WindowStore(**{"bucket_seconds": 60, "rolling_seconds": (60, 300), "allowed_lateness_s": 30, **kw})


def by(closed, key, width):
    return [c for c in closed if c.stat.key == key and c.width_s == width]


def test_bucket_closes_when_the_watermark_passes_its_end():
    w = store()
    assert w.add(obs(1, 10)) == [] and w.add(obs(2, 50, "positive")) == []
    assert w.add(obs(3, 80)) == []  # watermark 50: bucket [0, 60) still open
    closed = w.add(obs(4, 95, tickers=("AAPL",)))  # watermark 65 > 60
    (one,) = by(closed, "all", 60)
    assert (one.stat.count, one.stat.negative, one.stat.positive) == (2, 1, 1)
    assert one.stat.start == T0 and one.stat.end == T0 + timedelta(minutes=1)
    assert one.stat.mean_score == (-0.9 + 0.8) / 2
    assert [e.item_id for e in one.evidence] == ["n1", "n2"]
    assert by(closed, "topic:Macro", 300)[0].stat.count == 2 and not by(closed, "ticker:AAPL", 60)


def test_rolling_window_sums_buckets_and_keeps_emitting_after_activity_stops():
    w = store()
    for i in range(5):
        w.add(obs(i, 60 * i + 5))
    closed = w.advance(T0 + timedelta(minutes=10))
    five = by(closed, "all", 300)
    assert max(c.stat.count for c in five) == 5
    assert [c.stat.end for c in five][-1] == T0 + timedelta(minutes=9)  # last window still holding data
    assert all(c.stat.count for c in five)


def test_redelivered_items_count_once():
    w = store()
    for _ in range(3):
        w.add(obs(1, 10))
    closed = w.advance(T0 + timedelta(minutes=2))
    assert by(closed, "all", 60)[0].stat.count == 1 and w.duplicates == 2


def test_late_items_dropped_or_applied():
    for policy, expected in (("drop", 1), ("apply", 2)):
        w = store(late_policy=policy)
        w.add(obs(1, 200))  # watermark 170
        w.add(obs(2, 100))  # late: its bucket [60,120) is behind the watermark
        assert w.late == 1
        closed = w.advance(T0 + timedelta(minutes=10))
        assert sum(c.stat.count for c in by(closed, "all", 60)) == expected


def test_quiet_topic_closes_on_wall_clock():
    w = store()
    w.add(obs(1, 10))
    assert w.advance(T0 + timedelta(seconds=80)) == []  # 80 - 30 = 50 < 60
    assert by(w.advance(T0 + timedelta(seconds=95)), "all", 60)[0].stat.count == 1


def test_memory_is_bounded_by_the_widest_window():
    w = store()
    for i in range(3000):
        w.add(obs(i, i * 7))
    buckets, ids = w.size()
    assert buckets <= 3 * (300 // 60 + 3) and ids <= 3 * (420 // 7 + 20)


def test_evidence_is_the_most_negative_headlines():
    w = WindowStore(bucket_seconds=60, rolling_seconds=(60,), allowed_lateness_s=0, evidence=2)
    for i, p in enumerate([0.5, 0.99, 0.7, 0.95]):
        w.add(obs(i, i, p_neg=p))
    (c,) = by(w.advance(T0 + timedelta(minutes=1)), "all", 60)
    assert [e.item_id for e in c.evidence] == ["n1", "n3"]


def test_a_lane_with_a_backlog_holds_the_watermark_so_its_items_are_not_late():
    """Replaying partition 0 far ahead of partition 1 must not make partition 1's items late."""
    w = store()
    w.expect(1)
    assert w.add(obs(1, 10), lane=0) == [] and w.add(obs(2, 600), lane=0) == []  # lane 1 not heard from yet
    assert w.late == 0 and w.add(obs(3, 20), lane=1) == [] and w.late == 0
    closed = w.add(obs(4, 610), lane=1)  # both lanes past 600: watermark 580
    assert by(closed, "all", 60)[0].stat.count == 2 and w.late == 0
    # A caught-up (idle) lane no longer holds the watermark back.
    w.expect(2)
    w.set_idle(2)
    t0 = int(T0.timestamp())
    w.add(obs(5, 700), lane=0)
    assert w.watermark == t0 + 610 - 30  # lane 1 (busy) is at 610
    w.set_idle(1)
    assert w.watermark == t0 + 700 - 30
