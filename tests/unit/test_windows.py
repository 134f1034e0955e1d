"""The pure windowing core on hand-built event sequences: on-time results, late revisions, rejections."""

from datetime import UTC, datetime, timedelta

import pytest

from finsent.records import Evidence, WindowStat
from finsent.stream.pipeline import final_windows
from finsent.stream.windows import Observation, WindowStore, keys_for

T0 = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)


def obs(i, seconds, sentiment="negative", topic="Macro", tickers=(), p_neg=0.9):
    at = T0 + timedelta(seconds=seconds)
    score = {"negative": -p_neg, "neutral": 0.0, "positive": 0.8}[sentiment]
    ev = Evidence(
        item_id=f"n{i}",
        title=f"headline {i}",
        source="s",
        published=at,
        p_negative=p_neg if sentiment == "negative" else 0.05,
    )
    return Observation(f"n{i}", at, keys_for(topic, tickers), sentiment, score, ev)


def store(**kw):
    return WindowStore(
        **{"bucket_seconds": 60, "rolling_seconds": (60, 300), "watermark_delay_s": 30, "allowed_lateness_s": 600, **kw}
    )


def by(closed, key, width):
    return [c for c in closed if c.stat.key == key and c.width_s == width]


def feed(w, observations):
    """Add each observation (rejecting what is too late, as the Aggregation does); return every result."""
    out = []
    for o in observations:
        if w.too_late(o.at):
            w.rejected += 1
            continue
        out += w.add(o)
    return out


def test_bucket_closes_when_the_watermark_passes_its_end():
    w = store()
    assert w.add(obs(1, 10)) == [] and w.add(obs(2, 50, "positive")) == []
    assert w.add(obs(3, 80)) == []  # watermark 50: bucket [0, 60) still open
    closed = w.add(obs(4, 95, tickers=("AAPL",)))  # watermark 65 > 60
    (one,) = by(closed, "all", 60)
    assert (one.stat.count, one.stat.negative, one.stat.positive, one.stat.revision) == (2, 1, 1, 2)  # its content
    assert one.stat.start == T0 and one.stat.end == T0 + timedelta(minutes=1)
    assert abs(one.stat.mean_score - (-0.9 + 0.8) / 2) < 1e-15  # scores are summed in units of 2**-52
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


def test_a_late_item_counts_in_its_own_bucket_and_revises_every_window_it_touches():
    w = store()
    first = w.add(obs(1, 200))  # watermark 170: [0,60), [60,120) hold nothing yet
    first += w.add(obs(2, 400))  # watermark 370: the windows around 200 closed
    assert by(first, "all", 60)[0].stat.count == 1
    assert w.add(obs(3, 230)) == [] and w.late == 1  # bucket [180, 240) closed already
    revised = w.flush_revisions()
    one = by(revised, "all", 60)
    assert [(c.stat.end, c.stat.count, c.stat.revision) for c in one] == [(T0 + timedelta(seconds=240), 2, 2)]
    five = by(revised, "all", 300)  # every 5-min window holding [180,240) that had closed: ends 240..360
    assert [int((c.stat.end - T0).total_seconds()) for c in five] == [240, 300, 360]
    assert all(c.stat.revision == c.stat.count == 2 for c in five) and w.flush_revisions() == []  # flushed once


def test_an_item_older_than_the_allowed_lateness_is_rejected_not_counted():
    w = store(allowed_lateness_s=60)
    w.add(obs(1, 1000))  # watermark 970
    assert not w.too_late(obs(2, 911).at) and w.too_late(obs(3, 909).at)


def test_quiet_topic_closes_on_wall_clock():
    w = store()
    w.add(obs(1, 10))
    assert w.advance(T0 + timedelta(seconds=80)) == []  # 80 - 30 = 50 < 60
    assert by(w.advance(T0 + timedelta(seconds=95)), "all", 60)[0].stat.count == 1


def test_an_on_time_item_in_a_gap_the_close_jumped_over_still_gets_its_windows():
    """The issue's bare-core case: items at T, T+1000, T+900, T+1200, T+1300 must count 5 of 5."""
    w = WindowStore(10, (10, 30, 60), 120)
    out = feed(w, [obs(i, s) for i, s in enumerate((0, 1000, 900, 1200, 1300))])
    out += w.advance(T0 + timedelta(seconds=2000)) + w.flush_revisions()
    final = final_windows(c.stat for c in by(out, "all", 10))
    assert sum(s.count for s in final.values()) == 5 and w.late == 0 and w.rejected == 0


def test_an_item_before_the_first_one_is_not_late():
    w = store()
    w.add(obs(1, 500))
    w.add(obs(2, 490))  # watermark 470: [480, 540) has not closed
    w.add(obs(3, 10))  # behind the watermark: late, but not too late (lateness 600)
    closed = w.advance(T0 + timedelta(minutes=20)) + w.flush_revisions()
    assert sum(s.count for s in final_windows(c.stat for c in by(closed, "all", 60)).values()) == 3


def test_memory_is_bounded_by_the_lateness_plus_the_widest_window():
    w = store(allowed_lateness_s=120)
    for i in range(3000):
        w.add(obs(i, i * 7))
    buckets, ids = w.size()
    span = 120 + 300 + 2 * 60  # lateness + widest window + the open buckets
    assert buckets <= 2 * (span // 60 + 2) and ids <= 2 * (span // 7 + 20)


def test_evidence_is_the_most_negative_headlines():
    w = WindowStore(bucket_seconds=60, rolling_seconds=(60,), watermark_delay_s=0, evidence=2)
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


def test_a_future_dated_item_cannot_drag_the_watermark_past_the_ceiling():
    w = store()
    w.ceiling = (T0 + timedelta(seconds=300)).timestamp()  # "wall clock + tolerance"
    w.add(obs(1, 100))
    w.add(obs(2, 10**9))  # 2055: slipped past the edge checks
    assert w.watermark <= w.ceiling - w.delay
    w.ceiling += 600  # time goes on: windows keep closing, nothing is "late"
    closed = w.add(obs(3, 500)) + w.advance(T0 + timedelta(seconds=800))
    assert by(closed, "all", 60) and w.late == 0


@pytest.mark.parametrize(
    ("evidence_widths", "lateness"), [(None, 240), ((180,), 240), ((60, 300), 240), (None, 0), (None, 30)]
)
def test_every_result_matches_a_recount_of_what_was_accepted_with_late_items_and_eviction(evidence_widths, lateness):
    """Each window result (all widths at once for a boundary, or one width for a revision) against a brute-force
    recount of the counted observations in ``[start, end)``: counts, mean score and evidence (for the widths it is
    gathered for, none for the others), while late items revise and old buckets are evicted."""
    import random

    rng = random.Random(7)
    w = store(rolling_seconds=(60, 180, 300), allowed_lateness_s=lateness, evidence=3, evidence_widths=evidence_widths)
    gathered = evidence_widths or (60, 180, 300)
    accepted: list[Observation] = []
    clock = 0
    for i in range(1500):
        clock += rng.randint(0, 25)
        late = rng.random() < 0.2
        o = obs(
            i,
            clock - (rng.randint(60, 400) if late else 0),
            sentiment=rng.choice(["negative", "neutral", "positive"]),
            topic=rng.choice(["Macro", "Earnings", "M&A"]),
            tickers=("XOM",) if rng.random() < 0.3 else (),
            p_neg=round(rng.random(), 3),
        )
        if w.too_late(o.at):
            continue
        results = w.add(o) + w.flush_revisions()
        accepted.append(o)
        for c in results:
            inside = [a for a in accepted if c.stat.key in a.keys and c.stat.start <= a.at < c.stat.end]
            assert c.stat.count == len(inside) == c.stat.revision > 0  # a window's version is its content
            assert c.stat.negative == sum(a.sentiment == "negative" for a in inside)
            assert c.stat.positive == sum(a.sentiment == "positive" for a in inside)
            assert abs(c.stat.mean_score - sum(a.score for a in inside) / len(inside)) < 1e-9
            best = sorted(inside, key=lambda a: (a.evidence.p_negative, a.item_id), reverse=True)[:3]
            assert [e.item_id for e in c.evidence] == [a.item_id for a in best if c.width_s in gathered]
            assert c.width_s == (c.stat.end - c.stat.start).total_seconds()
            assert WindowStat.model_validate(c.stat.model_dump()) == c.stat  # the unvalidated record is valid
            assert (c.key, c.count, c.revision, c.end_s) == (
                c.stat.key,
                c.stat.count,
                c.stat.revision,
                c.stat.end.timestamp(),
            )
    assert w.late > (50 if lateness > 60 else -1)  # late items counted where the lateness allows them
    assert w.size()[0] < 3 * 3 * (lateness + 300 + 120) // 60  # memory bounded


def test_evidence_is_gathered_only_for_rolling_widths():
    with pytest.raises(ValueError, match="evidence_widths"):
        store(rolling_seconds=(60, 300), evidence_widths=(120,))


def test_window_scores_are_exactly_the_same_in_any_arrival_order():
    """The same headlines in another order (late ones counted as revisions) give bit-identical final windows:
    scores are summed as integers, so no float rounding depends on which item came first."""
    import random

    rng = random.Random(3)
    items = []
    for i in range(400):
        sentiment = rng.choice(["negative", "neutral", "positive"])
        o = obs(i, i * 9, sentiment, topic=rng.choice(["Macro", "Energy"]), p_neg=rng.random())
        items.append(Observation(o.item_id, o.at, o.keys, o.sentiment, rng.uniform(-1, 1), o.evidence))

    def final_results(order):
        w = store(allowed_lateness_s=3600, rolling_seconds=(60, 300, 900))
        out = feed(w, order)
        out += w.advance(T0 + timedelta(hours=3))
        out += w.flush_revisions()
        newest = {}
        for c in out:  # the highest revision of each window is its final result
            k = (c.key, c.width_s, c.end_s)
            if k not in newest or c.revision >= newest[k].revision:
                newest[k] = c
        return {k: (c.count, c.negative, c.score_sum, c.mean_score) for k, c in newest.items()}

    in_order = final_results(items)
    for _ in range(3):
        shuffled = sorted(items, key=lambda o: o.at.timestamp() + rng.uniform(0, 600))  # up to 10 minutes late
        assert final_results(shuffled) == in_order
    assert len(in_order) > 300


@pytest.mark.parametrize("bad", [{"score": float("nan")}, {"score": 1.5}, {"sentiment": "bullish"}])
def test_a_bad_observation_is_refused_before_anything_is_counted(bad):
    w = store()
    end = int(T0.timestamp()) + 60
    w.add(obs(1, 10))
    before = w.windows_at("all", end), w.size(), dict(w.seen)
    o = obs(2, 20)
    fields = {"score": o.score, "sentiment": o.sentiment, **bad}
    with pytest.raises(ValueError):
        w.add(Observation(o.item_id, o.at, o.keys, fields["sentiment"], fields["score"], o.evidence))
    assert (w.windows_at("all", end), w.size(), dict(w.seen)) == before
    w.add(o)  # the same item, well-formed, is then counted once
    assert w.windows_at("all", end)[0].count == 2


def test_items_dated_before_1970_close_their_windows_as_they_arrive():
    """-1 stood for "no event time yet", so a store whose items were all dated before 1970 (negative epoch seconds)
    never closed a window live, though the backtest's final advance closed them all."""
    t = datetime(1965, 3, 1, 12, 0, tzinfo=UTC)
    w = store()
    closed = []
    for i in range(30):
        o = obs(i, 0)
        closed += w.add(Observation(o.item_id, t + timedelta(seconds=20 * i), o.keys, o.sentiment, o.score, o.evidence))
    assert by(closed, "all", 60) and w.watermark == int((t + timedelta(seconds=20 * 29 - 30)).timestamp())
    w.expect(1)  # a lane with a backlog holds the watermark; once idle, the newest event time moves it again
    assert w.set_idle(1) == [] and w.watermark == int((t + timedelta(seconds=20 * 29 - 30)).timestamp())


def test_an_item_redelivered_with_other_keys_counts_once_in_the_keys_it_first_had():
    """Dedup was per key: an item re-scored on redelivery with another topic (a worker restarted on a new model)
    counted once in 'all' but in two topic keys. An item id counts once, in the keys it first came with."""
    w = store()
    w.add(obs(1, 5, topic="Macro"))
    w.add(obs(1, 5, topic="Energy | Oil", tickers=("XOM",)))  # the same item, redelivered, scored otherwise
    closed = w.add(obs(2, 400, "neutral"))
    assert [c.count for c in by(closed, "all", 60)] == [1] and [c.count for c in by(closed, "topic:Macro", 60)] == [1]
    assert not by(closed, "topic:Energy | Oil", 60) and not by(closed, "ticker:XOM", 60)
    assert w.duplicates == 1 and w.size()[1] == 2  # ids held once, not once per key
