"""The stream's pure pipeline steps: decoding, batch scoring with bisection, aggregation with restore points."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from finsent.labels import TOPIC_LABELS
from finsent.records import NewsItem, ScoredItem
from finsent.settings import load
from finsent.stream.pipeline import Aggregation, PoisonRecord, decode_raw, observation
from finsent.stream.scoring import score_batch

T0 = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)


def item(i, seconds, title="Stocks steady", tickers=()):
    at = T0 + timedelta(seconds=seconds)
    return NewsItem(id=f"n{i}", title=title, source="wire", published=at, fetched=at, tickers=tickers)


def scored(i, seconds, sentiment="neutral", topic="Energy | Oil", tickers=()):
    p = {"negative": 0.05, "neutral": 0.05, "positive": 0.05}
    p[sentiment] = 0.9
    topic_probs = {t: (0.9 if t == topic else 0.1 / (len(TOPIC_LABELS) - 1)) for t in TOPIC_LABELS}
    at = T0 + timedelta(seconds=seconds)
    return ScoredItem(item=item(i, seconds, tickers=tickers), topic=topic, topic_probs=topic_probs, sentiment=sentiment,
                      sentiment_probs=p, model="m@1", scored_at=at, latency_s=0.0)


@pytest.mark.parametrize("value, reason", [
    (None, "tombstone"),
    (b"x" * 5000, "exceeds max_record_bytes"),
    (b"{not json", "invalid NewsItem"),
    (b"\xff\xfe\x00", "NewsItem"),
    (json.dumps({"id": "a", "title": "t"}).encode(), "invalid NewsItem"),
])
def test_poison_records_are_named_not_raised_as_anything_else(value, reason):
    with pytest.raises(PoisonRecord, match=reason):
        decode_raw(value, max_bytes=4096)


def test_a_valid_record_decodes():
    it = item(1, 0)
    assert decode_raw(it.to_json(), max_bytes=4096) == it


def test_a_bad_item_is_isolated_by_bisection_and_the_rest_is_scored():
    calls = []

    def predict(texts):
        calls.append(len(texts))
        if any("BOOM" in t for t in texts):
            raise RuntimeError("model exploded")
        return [t.upper() for t in texts]

    texts = [f"t{i}" for i in range(10)]
    texts[3] = "BOOM 3"
    texts[8] = "BOOM 8"
    res = score_batch(predict, texts, text=lambda x: x, retries=1)
    assert [x for x, _ in res.scored] == [t for t in texts if "BOOM" not in t]  # input order kept
    assert all(p == x.upper() for x, p in res.scored)
    assert [x for x, _ in res.failed] == ["BOOM 3", "BOOM 8"] and "model exploded" in res.failed[0][1]
    assert calls[:2] == [10, 10]  # the whole batch is retried once before bisecting


def test_a_transient_model_error_is_retried_without_losing_anything():
    state = {"n": 0}

    def predict(texts):
        state["n"] += 1
        if state["n"] == 1:
            raise MemoryError("transient")
        return list(texts)

    res = score_batch(predict, ["a", "b"], text=lambda x: x, retries=1)
    assert [x for x, _ in res.scored] == ["a", "b"] and res.failed == [] and res.calls == 2


def test_a_predictor_returning_the_wrong_number_of_results_counts_as_a_failure():
    res = score_batch(lambda texts: texts[:-1] if len(texts) > 1 else [], ["a", "b"], text=lambda x: x, retries=0)
    assert res.scored == [] and len(res.failed) == 2


def settings(**surge):
    return load(windows={"bucket_seconds": 60, "rolling_seconds": [60, 300], "allowed_lateness_s": 30},
                surge={"window_s": 300, "warmup_windows": 5, "cooldown_s": 600, **surge})


def burst_sequence():
    """25 quiet minutes (1 of 10 negative), a 5-minute negative burst, 15 quiet minutes."""
    out, i = [], 0
    for minute in range(45):
        burst = 25 <= minute < 30
        for k in range(10):
            negative = burst and k < 8 or (not burst and k == 0)
            out.append(scored(i, minute * 60 + k * 6, "negative" if negative else "neutral",
                              tickers=("XOM",) if k % 2 else ()))
            i += 1
    return out


def run_all(agg, items):
    windows, alerts = [], []
    for s in items:
        e = agg.add(s)
        windows += e.windows
        alerts += e.alerts
    return windows, alerts


def test_the_burst_fires_once_and_resolves_once_per_key():
    _, alerts = run_all(Aggregation(settings()), burst_sequence())
    energy = [(a.state, a.severity) for a in alerts if a.key == "topic:Energy | Oil"]
    assert energy[0] == ("firing", energy[0][1]) and energy[-1][0] == "resolved"
    assert len({a.alert_id for a in alerts if a.key == "topic:Energy | Oil"}) == 1
    assert {a.key for a in alerts} >= {"all", "topic:Energy | Oil", "ticker:XOM"}


def test_a_restore_point_plus_replay_reproduces_exactly_what_a_clean_run_emits():
    items = burst_sequence()
    clean = Aggregation(settings())
    clean_windows, clean_alerts = run_all(clean, items)

    first = Aggregation(settings())
    run_all(first, items[:270])  # "crash" during the burst, after some windows were published
    point = (first.emitted_until, json.loads(json.dumps(first.detector_state())))

    restarted = Aggregation(settings())
    restarted.emitted_until, _ = point
    restarted.load_detector_state(point[1])
    # Replay from well before the restore point, with redeliveries (at-least-once) mixed in.
    replayed = items[100:270] + items[200:]
    windows, alerts = run_all(restarted, replayed)

    after = [c for c in clean_windows if c.stat.end.timestamp() > point[0]]
    assert [(c.stat, c.width_s) for c in windows] == [(c.stat, c.width_s) for c in after]
    assert alerts == [a for a in clean_alerts if a.window_end.timestamp() > point[0]]
    assert restarted.store.duplicates > 0  # the redeliveries were seen, and not counted


def test_a_firing_key_that_goes_silent_resolves_with_an_empty_window():
    agg = Aggregation(settings(min_volume=3, warmup_windows=2))
    seq = [scored(2000 + m, m * 60, "neutral", topic="Currencies") for m in range(8)]  # a baseline
    seq += [scored(3000 + k, 8 * 60 + k, "negative", topic="Currencies") for k in range(10)]  # the burst
    seq += [scored(4000 + m, (9 + m) * 60, "neutral", topic="Macro") for m in range(15)]  # Currencies silent
    _, alerts = run_all(agg, seq)
    assert [a.state for a in alerts if a.key == "topic:Currencies"] == ["firing", "resolved"]
    assert observation(seq[0]).keys == ("all", "topic:Currencies")
