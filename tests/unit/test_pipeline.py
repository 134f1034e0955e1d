"""The stream's pure pipeline steps: decoding, batch scoring with bisection, aggregation with restore points."""

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from factories import news_item, scored_item

from finsent.errors import ModelBroken
from finsent.settings import load
from finsent.stream.pipeline import (
    Aggregation,
    PoisonRecord,
    decode_raw,
    final_alerts,
    final_windows,
    observation,
)
from finsent.stream.scoring import CANARY, RETRY_FOR_S, score_batch

T0 = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)


def item(i, seconds, title="Stocks steady", tickers=()):
    return news_item(f"n{i}", title, at=T0 + timedelta(seconds=seconds), tickers=tickers)


def raw_at(published: str, fetched: str) -> bytes:
    """A raw record, valid but for its times."""
    return json.dumps(
        {"v": 1, "id": "a", "title": "t", "source": "wire", "published": published, "fetched": fetched}
    ).encode()


def scored(i, seconds, sentiment="neutral", topic="Energy | Oil", tickers=()):
    return scored_item(item(i, seconds, tickers=tickers), sentiment, topic)


@pytest.mark.parametrize(
    "value, reason",
    [
        (None, "tombstone"),
        (b"x" * 5000, "exceeds max_record_bytes"),
        (b"{not json", "invalid NewsItem"),
        (b"\xff\xfe\x00", "NewsItem"),
        (json.dumps({"id": "a", "title": "t"}).encode(), "invalid NewsItem"),
        # Aware times valid as written but out of datetime's range in UTC: astimezone's OverflowError once escaped
        # decode_raw, and the worker crash-looped on the one record.
        (raw_at("0001-01-01T00:00:00+14:00", T0.isoformat()), "published: .*out of datetime's range"),
        (raw_at(T0.isoformat(), "9999-12-31T23:59:00-14:00"), "fetched: .*out of datetime's range"),
    ],
)
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
    def predict(texts):
        return list(texts) if texts == [CANARY] else texts[:-1]  # short on the items, fine on a known-good one

    res = score_batch(predict, ["a", "b"], text=lambda x: x, retries=0, sleep=lambda s: None)
    assert res.scored == [] and len(res.failed) == 2 and "returned 0 results for 1" in res.failed[0][1]


def test_a_model_failing_for_50_ms_is_waited_for_and_scores_the_whole_batch():
    """Retried at once and bisected at once, a 50 ms hiccup (a CUDA or ONNX Runtime out-of-memory) once turned a
    512-item call into 512 dead letters, committed. The batch is retried with backoff first."""
    t0 = time.monotonic()

    def predict(texts):
        if time.monotonic() - t0 < 0.05:
            raise RuntimeError("CUDA error: out of memory (transient)")
        return [t.upper() for t in texts]

    items = [f"headline {i}" for i in range(512)]
    res = score_batch(predict, items, text=lambda x: x, retries=1)
    assert [x for x, _ in res.scored] == items and res.failed == []
    assert res.calls <= 4  # whole-batch retries, no bisection
    assert time.monotonic() - t0 < 1.0


def test_a_model_that_always_fails_raises_and_dead_letters_nothing():
    """A broken model is not 512 poison headlines: ModelBroken (the worker exits 70 without committing, and a
    fresh worker gets the batch again) instead of a dead letter for each item, and without bisecting them all."""
    calls, slept = [], []

    def predict(texts):
        calls.append(len(texts))
        raise RuntimeError("ORT session gone")

    with pytest.raises(ModelBroken, match="fails on every input"):
        score_batch(predict, [f"headline {i}" for i in range(512)], text=lambda x: x, retries=1, sleep=slept.append)
    assert 1 < sum(slept) <= RETRY_FOR_S  # retried for seconds, with backoff
    # the whole batch after each wait, the known-good headline between (still failing: keep waiting) and last
    assert calls.count(512) == len(slept) + 1 and set(calls) == {512, 1} and calls[-1] == 1


def test_a_model_that_breaks_while_the_batch_is_bisected_raises_too():
    state = {"n": 0}

    def predict(texts):
        state["n"] += 1
        if state["n"] == 2 and texts == [CANARY]:
            return list(texts)  # the model still works when the batch first fails ...
        raise RuntimeError("device lost")  # ... then fails on everything

    with pytest.raises(ModelBroken):
        score_batch(predict, ["a", "b", "c"], text=lambda x: x, retries=0, retry_for_s=0, sleep=lambda s: None)


@pytest.mark.parametrize("good", [0, 7])
def test_a_lone_poison_item_still_goes_to_the_dlq_alone(good):
    """The model works (it answers the known-good headline), so an item it fails on by itself is poison: a dead
    letter, alone in its batch or among good ones."""

    def predict(texts):
        if any("BOOM" in t for t in texts):
            raise RuntimeError("model exploded")
        return [t.upper() for t in texts]

    items = [f"t{i}" for i in range(good)] + ["BOOM"]
    res = score_batch(predict, items, text=lambda x: x, retries=1, sleep=lambda s: None)
    assert [x for x, _ in res.failed] == ["BOOM"] and [x for x, _ in res.scored] == items[:-1]


def test_a_poison_item_is_bisected_at_once_when_the_model_answers_the_canary():
    """A batch that fails while the model answers a known-good headline holds poison: no seconds of backoff and
    whole-batch retries before the bisection (a 512 batch once cost 7 whole calls and 2.55 s of sleep)."""
    slept, sizes = [], []

    def predict(texts):
        sizes.append(len(texts))
        if any("BOOM" in t for t in texts):
            raise RuntimeError("model exploded")
        return [t.upper() for t in texts]

    items = [f"t{i}" for i in range(511)] + ["BOOM"]
    res = score_batch(predict, items, text=lambda x: x, retries=1, sleep=slept.append)
    assert [x for x, _ in res.failed] == ["BOOM"] and len(res.scored) == 511
    assert sum(slept) <= 0.05 and sizes.count(512) == 2  # the call and one quick retry, then bisection


def settings(windows=None, **surge):
    return load(
        windows={
            "bucket_seconds": 60,
            "rolling_seconds": [60, 300],
            "watermark_delay_s": 30,
            "allowed_lateness_s": 3600,
            **(windows or {}),
        },
        surge={"window_s": 300, "warmup_windows": 5, "cooldown_s": 600, **surge},
    )


def burst_sequence():
    """25 quiet minutes (1 of 10 negative), a 5-minute negative burst, 15 quiet minutes."""
    out, i = [], 0
    for minute in range(45):
        burst = 25 <= minute < 30
        for k in range(10):
            negative = (burst and k < 8) or (not burst and k == 0)
            out.append(
                scored(i, minute * 60 + k * 6, "negative" if negative else "neutral", tickers=("XOM",) if k % 2 else ())
            )
            i += 1
    return out


def run_all(agg, items, lanes=None, step=50):
    """Feed like the aggregator does: items in polls of ``step``, end_step after each, then the end of data."""
    windows, alerts = [], []

    def take(e):
        windows.extend(e.windows)
        alerts.extend(e.alerts)

    for n, s in enumerate(items):
        take(agg.add(s, lane=lanes[n] if lanes else 0))
        if n % step == step - 1:
            take(agg.end_step())
    take(agg.end_step())
    return windows, alerts


def finish(agg, windows, alerts):
    last = max(T0.timestamp(), agg.store.max_event)
    e = agg.advance(datetime.fromtimestamp(last + 3 * 3600, UTC))
    e.extend(agg.end_step())
    return windows + e.windows, alerts + e.alerts


def final(windows, alerts):
    fw = final_windows(c.stat for c in windows)
    return (
        {k: (w.count, w.negative) for k, w in fw.items()},
        {(a.key, a.window_start, a.window_end, a.state, a.severity) for a in final_alerts(alerts)},
    )


def test_the_burst_fires_once_and_resolves_once_per_key():
    _, alerts = run_all(Aggregation(settings()), burst_sequence())
    alerts = final_alerts(alerts)
    energy = [(a.state, a.severity) for a in alerts if a.key == "topic:Energy | Oil"]
    assert energy[0] == ("firing", energy[0][1]) and energy[-1][0] == "resolved"
    assert len({a.alert_id for a in alerts if a.key == "topic:Energy | Oil"}) == 1
    assert {a.key for a in alerts} >= {"all", "topic:Energy | Oil", "ticker:XOM"}


def test_the_detector_fires_on_the_open_window_before_it_closes():
    agg = Aggregation(settings())
    items = burst_sequence()
    first_burst = next(n for n, s in enumerate(items) if s.item.published >= T0 + timedelta(minutes=25))
    early = None
    for n, s in enumerate(items):
        agg.add(s)
        out = agg.end_step()  # a poll of one item: judged as soon as it arrives
        if hit := [a for a in out.alerts if a.key == "all" and a.trigger == "early"]:
            early = (n, hit[0], agg.store.closed_until)
            break
    assert early is not None, "no early firing"
    n, alert, closed_until = early
    assert alert.state == "firing" and alert.window_end.timestamp() > closed_until  # its window is still open
    assert n - first_burst < 30  # within the burst's first three minutes
    # The complete window confirms the surge under the same alert id (its severity may differ: the
    # share of the complete window decides), and the provisional record never stands on its own.
    _windows, alerts = run_all(agg, items[n + 1 :])
    standing = [a for a in final_alerts([alert, *alerts]) if a.alert_id == alert.alert_id]
    assert standing and all(a.trigger == "close" for a in standing)
    assert {a.state for a in standing} == {"firing", "resolved"}


def test_a_provisional_firing_that_the_complete_window_does_not_confirm_is_retracted():
    agg = Aggregation(settings(min_volume=5, window_s=60))
    quiet = [scored(i, m * 60 + k, "neutral") for i, (m, k) in enumerate((m, k) for m in range(10) for k in range(10))]
    _, _alerts = run_all(agg, quiet)
    spike = [scored(1000 + k, 10 * 60 + k, "negative") for k in range(6)]  # 6 negatives open minute 10 ...
    dilute = [scored(2000 + k, 10 * 60 + 10 + k, "neutral") for k in range(200)]  # ... then 200 neutrals
    _, a1 = run_all(agg, spike, step=6)
    assert [a.trigger for a in a1 if a.key == "all"] == ["early"]
    _, a2 = run_all(agg, dilute)
    _windows, a3 = finish(agg, [], [])
    retracted = [a for a in a2 + a3 if a.key == "all" and a.retracted]
    assert [a.transition for a in retracted] == [a1[0].transition]
    assert not [a for a in final_alerts(a1 + a2 + a3) if a.key == "all"]


def test_a_withdrawn_early_firing_whose_next_open_window_surges_is_judged_again_at_once():
    """The live worker's idle timer closes a window between polls. When that withdraws an early firing, the key's
    open window (which may surge all the same) is judged early again in that step, not at the key's next item:
    otherwise the surge gauge drops until then, and Prometheus resolves the alert and starts it again."""
    agg = Aggregation(settings(min_volume=5, window_s=60, cooldown_s=0))
    quiet = [scored(i, m * 60 + k, "neutral") for i, (m, k) in enumerate((m, k) for m in range(10) for k in range(10))]
    _, _alerts = run_all(agg, quiet)
    spike = [scored(1000 + k, 10 * 60 + k, "negative") for k in range(6)]  # 6 negatives open minute 10 ...
    _, a1 = run_all(agg, spike, step=6)
    assert [a.trigger for a in a1 if a.key == "all"] == ["early"]
    dilute = [scored(2000 + k, 10 * 60 + 10 + k, "neutral") for k in range(40)]  # ... 40 neutrals withdraw it ...
    again = [scored(3000 + k, 11 * 60 + k, "negative") for k in range(8)]  # ... and minute 11 opens negative
    run_all(agg, dilute + again)
    assert agg.store.closed_until < (T0 + timedelta(minutes=11)).timestamp()  # minute 10 is still open
    # The idle timer: event time runs on past minute 10's close (watermark delay 30 s), no item arrives.
    out = agg.advance(T0 + timedelta(minutes=11, seconds=40))
    out.extend(agg.end_step())
    alerts = [a for a in out.alerts if a.key == "all"]
    assert [(a.trigger, bool(a.retracted)) for a in alerts] == [("close", True), ("early", False)], alerts
    assert alerts[1].window_end == T0 + timedelta(minutes=12)  # the open window, judged before its next item
    gauges = {key: firing for key, _z, _mean, firing, _count in agg.surge_gauges()}
    assert gauges["all"] is not None and gauges["all"].transition == alerts[1].transition


def crash_after_an_early_firing(dilute: bool):
    """Quiet minutes, a restore point, then 6 negatives open minute 10 and fire early; the process dies after
    that firing's acknowledgement, before the next restore point. Returns the restore point, the items
    after it (``dilute``: 200 neutrals follow in the same minute, so the complete window does not fire) and
    the early firing."""
    agg = Aggregation(settings(min_volume=5, window_s=60))
    quiet = [scored(i, m * 60 + k, "neutral") for i, (m, k) in enumerate((m, k) for m in range(10) for k in range(10))]
    run_all(agg, quiet)
    point = json.loads(json.dumps({"emitted_until": agg.judged_until, "detector": agg.snapshot()}))
    spike = [scored(1000 + k, 10 * 60 + k, "negative") for k in range(6)]
    _, fired = run_all(agg, spike, step=6)
    early = [a for a in fired if a.key == "all"]
    assert [a.trigger for a in early] == ["early"]
    after = spike + ([scored(2000 + k, 10 * 60 + 10 + k, "neutral") for k in range(200)] if dilute else [])
    return point, quiet, after, early[0]


@pytest.mark.parametrize("published", [True, False], ids=["alerts topic read", "alerts topic not read"])
def test_an_early_firing_published_after_the_newest_restore_point_is_still_retracted_after_a_crash(published):
    """The restart re-reads the spike with the rest of the minute in one poll, so its own re-run never fires
    early; without the alerts topic's word the firing already published would stand for ever."""
    point, quiet, after, early = crash_after_an_early_firing(dilute=True)
    restarted = Aggregation(settings(min_volume=5, window_s=60))
    restarted.begin_restore(point["emitted_until"], point["detector"], published=[early] if published else None)
    assert run_all(restarted, quiet) == ([], [])  # the restored span: nothing published again
    restarted.finish_restore()
    _w, a = finish(restarted, *run_all(restarted, after, step=len(after)))
    assert not [x for x in a if x.key == "all" and x.trigger == "early"]  # not re-derived by the re-run
    standing = [x for x in final_alerts([early, *a]) if x.key == "all"]
    if published:
        assert standing == []
        assert [x.transition for x in a if x.key == "all" and x.retracted] == [early.transition]
    else:  # what happened before the fix, and still happens to a restore point that cannot name its alerts
        assert [x.alert_id for x in standing] == [early.alert_id]


def test_an_adopted_early_firing_that_its_window_confirms_is_not_retracted():
    point, quiet, after, early = crash_after_an_early_firing(dilute=False)
    restarted = Aggregation(settings(min_volume=5, window_s=60))
    restarted.begin_restore(point["emitted_until"], point["detector"], published=[early])
    run_all(restarted, quiet)
    restarted.finish_restore()
    _w, a = finish(restarted, *run_all(restarted, after, step=len(after)))
    assert not [x for x in a if x.retracted]
    confirmed = [x for x in a if x.key == "all" and x.trigger == "close" and x.state == "firing"]
    assert [x.transition for x in confirmed] == [early.transition]


@pytest.mark.parametrize(
    "after, held",
    [
        ({"retracted": True, "trigger": "close"}, False),  # its own window's close withdrew it
        ({"trigger": "close"}, False),  # ... or confirmed it
        ({"trigger": "close", "shift_s": 60}, False),  # a record of a later window of its key: long settled
        ({"trigger": "late", "shift_s": -60}, True),  # a correction of an earlier window settles nothing
    ],
    ids=["retracted", "confirmed", "later window", "earlier correction"],
)
def test_only_an_early_firing_that_nothing_published_after_it_settled_is_held_again(after, held):
    point, _quiet, _after, early = crash_after_an_early_firing(dilute=True)
    shift = timedelta(seconds=after.pop("shift_s", 0))
    other = early.model_copy(
        update={**after, "window_start": early.window_start + shift, "window_end": early.window_end + shift}
    )
    restarted = Aggregation(settings(min_volume=5, window_s=60))
    restarted.begin_restore(point["emitted_until"], point["detector"], published=[early, other])
    assert (restarted.provisional.get("all") == early) is held


def test_an_adopted_early_firing_replaces_an_older_one_the_restore_point_still_held():
    point, _quiet, _after, early = crash_after_an_early_firing(dilute=True)
    minute = timedelta(seconds=60)
    older = early.model_copy(
        update={"window_start": early.window_start - minute, "window_end": early.window_end - minute}
    )
    detector = {**point["detector"], "provisional": {"all": older.to_dict()}}
    settled = older.model_copy(update={"retracted": True, "trigger": "close"})
    restarted = Aggregation(settings(min_volume=5, window_s=60))
    restarted.begin_restore(point["emitted_until"] - 60, detector, published=[settled, early])
    assert restarted.provisional["all"] == early


@pytest.mark.parametrize("seed", range(6))
def test_final_windows_and_surges_do_not_depend_on_the_arrival_order(seed):
    """Live, items arrive out of order (slow partitions, feed delays); the answer must not change."""
    import random

    rng = random.Random(seed)
    items = burst_sequence()
    in_order = final(*finish(agg := Aggregation(settings()), *run_all(agg, items)))
    # Each item delayed by 0..8 minutes of arrival (a quarter of them), spread over 3 lanes, idle advances.
    delayed = sorted(items, key=lambda s: s.item.published.timestamp() + (rng.random() < 0.25) * rng.uniform(0, 480))
    lanes = [rng.randrange(3) for _ in delayed]
    shuffled = Aggregation(settings())
    w, a = run_all(shuffled, delayed, lanes=lanes, step=rng.choice([1, 7, 50]))
    assert shuffled.store.late > 0 and shuffled.store.rejected == 0  # the test exercises revisions
    assert final(*finish(shuffled, w, a)) == in_order


def test_items_later_than_the_allowed_lateness_are_rejected_and_reported():
    agg = Aggregation(settings(windows={"allowed_lateness_s": 120}))
    run_all(agg, [scored(i, i * 30) for i in range(40)])  # 20 minutes
    out = agg.add(scored(999, 60))  # 19 minutes late
    assert [o.item_id for o in out.rejected] == ["n999"] and agg.store.rejected == 1


def test_by_setting_an_item_past_the_allowed_lateness_is_counted_in_the_open_window_and_survives_a_restart():
    """windows.too_late = "open_window": counted (finsent_window_retimed_items_total) and applied to the window that
    is open now, not dropped; a restart's replay counts it there again, not in its own long-evicted bucket."""
    opened = settings(windows={"allowed_lateness_s": 120, "too_late": "open_window"})
    agg = Aggregation(opened)
    items = [scored(i, i * 30) for i in range(40)]  # 20 minutes, one a half minute
    w1, a1 = run_all(agg, items)
    late = scored(999, 60, "negative")  # 19 minutes late
    out = agg.add(late)
    assert out.rejected == [] and (agg.retimed, agg.store.rejected) == (1, 0)
    point = json.loads(json.dumps({"emitted_until": agg.judged_until, "detector": agg.snapshot()}))
    more = [scored(100 + i, 1200 + i * 30) for i in range(10)]
    w2, a2 = run_all(agg, more)
    windows, _ = finish(agg, w1 + w2, a1 + a2)
    counts = {k: (w.count, w.negative) for k, w in final_windows(c.stat for c in windows).items()}
    minute = timedelta(seconds=60)
    ones = {start: c for (key, start, end), c in counts.items() if key == "all" and end - start == minute}
    assert sum(n for n, _ in ones.values()) == 51  # every item in one one-minute window: the late one too
    (late_in,) = [start for start, (_, neg) in ones.items() if neg]  # in the window open when it came (~19 min on)
    assert late_in >= T0 + timedelta(minutes=18)

    restarted = Aggregation(opened)  # a crash after the late item: its restore point, the log replayed
    restarted.begin_restore(point["emitted_until"], point["detector"])
    run_all(restarted, sorted([*items[30:], late], key=lambda s: s.item.published))
    restarted.finish_restore()
    w3, a3 = run_all(restarted, more)
    assert final(*finish(restarted, w1 + w3, a1 + a3))[0] == final(windows, [])[0]


def test_a_restore_point_plus_replay_reproduces_exactly_what_a_clean_run_publishes():
    items = burst_sequence()
    clean = Aggregation(settings())
    clean_final = final(*finish(clean, *run_all(clean, items)))

    first = Aggregation(settings())
    w1, a1 = run_all(first, items[:270])  # "crash" during the burst, after some windows were published
    point = json.loads(json.dumps({"emitted_until": first.judged_until, "detector": first.snapshot()}))

    restarted = Aggregation(settings())
    restarted.begin_restore(point["emitted_until"], point["detector"])
    silent_w, silent_a = run_all(restarted, items[100:270])  # the restored span: nothing published again
    assert (silent_w, silent_a) == ([], [])
    restarted.finish_restore()
    w2, a2 = run_all(restarted, items[200:])  # redeliveries (at-least-once), then new items
    assert restarted.store.duplicates > 0
    assert final(*finish(restarted, w1 + w2, a1 + a2)) == clean_final


def test_revisions_made_by_the_last_replayed_poll_are_handed_over_when_the_restore_finishes():
    """The replay may close windows past ``emitted_until`` (a lane idles), and a late item in its last poll revises
    one. The worker finishes the restore in that step, before its ``end_step``: ``finish_restore`` must hand those
    revisions over to be published, not drop them (found by review: they were lost once end_step moved after it)."""
    first = Aggregation(settings())
    run_all(first, [scored(i, i * 20) for i in range(30)])  # 10 minutes, then a "crash"
    point = json.loads(json.dumps({"emitted_until": first.judged_until, "detector": first.snapshot()}))
    restarted = Aggregation(settings())
    restarted.begin_restore(point["emitted_until"], point["detector"])
    replayed, _ = run_all(restarted, [scored(i, i * 20) for i in range(45)])
    assert restarted.judged_until > point["emitted_until"] and replayed  # the replay published windows past it
    restarted.add(scored(999, 12 * 60 + 5))  # the last replayed poll: a late item for minute 12, closed already
    out = restarted.finish_restore()
    out.extend(restarted.end_step())
    end = (T0 + timedelta(minutes=13)).timestamp()
    revised = [c for c in out.windows if c.key == "all" and c.width_s == 60 and c.end_s == end]
    assert [(c.revised, c.count) for c in revised] == [(True, 4)], out.windows  # 3 a minute, and the late one


def test_a_restore_point_stays_small_with_100k_tickers_seen():
    from finsent.records import RestorePoint

    agg = Aggregation(settings(windows={"rolling_seconds": [60]}, window_s=60))  # one window per ticker: fast
    items = [
        scored(i, i * 0.5, "negative" if i % 3 == 0 else "neutral", tickers=(f"T{i:06d}",)) for i in range(100_000)
    ]
    run_all(agg, items, step=500)
    assert len(agg.detector.keys) <= agg.detector.cfg.max_keys and agg.forgotten > 0
    size = len(RestorePoint({0: 1}, agg.judged_until, agg.snapshot(), {0: 2}).to_json())
    assert size < 256 * 1024, size


def test_a_firing_key_that_goes_silent_resolves_with_an_empty_window():
    agg = Aggregation(settings(min_volume=3, warmup_windows=2))
    seq = [scored(2000 + m, m * 60, "neutral", topic="Currencies") for m in range(8)]  # a baseline
    seq += [scored(3000 + k, 8 * 60 + k, "negative", topic="Currencies") for k in range(10)]  # the burst
    seq += [scored(4000 + m, (9 + m) * 60, "neutral", topic="Macro") for m in range(15)]  # Currencies silent
    _, alerts = run_all(agg, seq)
    assert [a.state for a in final_alerts(alerts) if a.key == "topic:Currencies"] == ["firing", "resolved"]
    assert observation(seq[0]).keys == ("all", "topic:Currencies")


def test_a_restore_point_from_the_future_is_recognised_as_poisoned():
    import time

    from finsent.records import RestorePoint

    now = time.time()
    good = RestorePoint({0: 5}, now - 60, {"keys": {}}, {0: 9})
    back = RestorePoint.from_json(good.to_json())
    assert (back.replay_from, back.positions, back.emitted_until) == ({0: 5}, {0: 9}, now - 60)
    assert not back.poisoned(now, 300)
    assert RestorePoint({0: 5}, 3_093_000_000.0, {}, {}).poisoned(now, 300)  # windows dated 2068 were published


def test_a_restore_point_carries_a_firing_key_and_a_provisional_alert_through_json():
    items = burst_sequence()
    agg = Aggregation(settings(windows={"allowed_lateness_s": 0}))  # the snapshot is then the current state
    run_all(agg, items[:300])  # inside the burst: keys are firing
    assert any(st.firing for st in agg.detector.keys.values())
    agg.provisional["all"] = next(st.firing for st in agg.detector.keys.values() if st.firing)
    snap = json.loads(json.dumps(agg.snapshot()))
    restored = Aggregation(settings(windows={"allowed_lateness_s": 0}))
    restored.begin_restore(agg.judged_until, snap)
    firing = {k for k, st in restored.detector.keys.items() if st.firing}
    assert firing and restored.provisional["all"] == agg.provisional["all"]


def _restart(first, read, cfg):
    """A crash of ``first`` after it read ``read`` (in that order), restarted the way the aggregator does: a restore
    point through JSON, a silent replay of what was read from the first record still needed, in one large poll
    sorted by event time (``Aggregator.step`` sorts a poll), then ``finish_restore``. Returns the restarted
    aggregation and what finishing the restore published."""
    point = json.loads(json.dumps({"emitted_until": first.judged_until, "detector": first.snapshot()}))
    keep_from = first.revisable_from()
    start = next(n for n, s in enumerate(read) if first.bucket_of(s.item.published.timestamp()) >= keep_from)
    restarted = Aggregation(cfg)
    restarted.begin_restore(point["emitted_until"], point["detector"])
    silent = run_all(restarted, sorted(read[start:], key=lambda s: s.item.published), step=2000)
    assert silent == ([], [])
    return restarted, restarted.finish_restore()


def held(agg, key="all"):
    """The items ``key``'s buckets in memory hold."""
    return sum(b.count for b in agg.store.key_rows.get(key, []))


def _late_news_around_a_crash():
    """Two hours of news every 30 s, then late items for 13:30 (L1, L2 before the crash, L3 after it)."""
    steady = [scored(i, i * 30, topic="Macro") for i in range(240)]
    late = [scored(9000 + n, 90 * 60 + s, "negative", topic="Macro") for n, s in enumerate((5, 9, 20))]
    return steady, late


def test_a_window_revision_never_goes_backwards_across_a_restart():
    """Items late before a crash are replayed on time (a sorted poll), so a revision counted from late items
    restarted lower after it, and every reader (keeping the highest revision) kept the stale window. The revision
    is the window's content (its count): it only grows, and a restart publishes what a clean run does."""
    cfg = settings(windows={"rolling_seconds": [60, 300, 3600]})
    steady, (l1, l2, l3) = _late_news_around_a_crash()
    clean = Aggregation(cfg)
    clean_w, clean_a = finish(clean, *run_all(clean, [*steady, l1, l2, l3], step=1))

    first = Aggregation(cfg)
    before, before_a = run_all(first, [*steady, l1, l2], step=1)
    restarted, out = _restart(first, [*steady, l1, l2], cfg)
    after, after_a = run_all(restarted, [l3], step=1)
    after, after_a = finish(restarted, out.windows + after, out.alerts + after_a)

    def versions(windows, key):
        return [(c.stat.revision, c.stat.count) for c in windows if (c.key, c.width_s, c.end_s) == key]

    key = ("all", 300, int((T0 + timedelta(minutes=91)).timestamp()))
    published = versions(before + after, key)
    assert published == versions(clean_w, key) and len(published) == 4, published
    assert [r for r, _ in published] == sorted({r for r, _ in published})  # strictly growing
    assert final(before + after, before_a + after_a) == final(clean_w, clean_a)


def test_an_item_rejected_as_too_late_before_a_crash_is_rejected_again_by_the_replay():
    """The replay sorts its polls by event time, so an item rejected (dead-lettered) before the crash came back
    before the items that had moved the watermark past it and was counted silently. The restore point lists the
    rejections a replay could meet; the replay rejects them again."""
    cfg = settings(windows={"rolling_seconds": [60, 300, 3600]})
    steady = [scored(i, i * 30, topic="Macro") for i in range(240)]
    too_late = scored(9001, 50 * 60, "negative", topic="Macro")  # arrives ~68 min behind the watermark
    late = scored(9002, 90 * 60, "negative", topic="Macro")  # late, but within the hour

    clean = Aggregation(cfg)
    clean_w, clean_a = run_all(clean, [*steady, too_late, late], step=1)
    assert clean.store.rejected == 1
    clean_w, clean_a = finish(clean, clean_w, clean_a)

    first = Aggregation(cfg)
    first_w, first_a = run_all(first, [*steady, too_late], step=1)
    assert first.store.rejected == 1
    restarted, out = _restart(first, [*steady, too_late], cfg)
    assert restarted.store.rejected == 1 and held(restarted) == held(first)
    w, a = run_all(restarted, [late], step=1)
    # a second crash still knows: the restarted aggregation's restore point lists the rejection again
    again, _ = _restart(restarted, [*steady, too_late, late], cfg)
    assert again.store.rejected == 1 and held(again) == held(restarted)
    w, a = finish(restarted, first_w + out.windows + w, first_a + out.alerts + a)
    assert final(w, a) == final(clean_w, clean_a)


def test_a_counted_item_redelivered_after_it_became_too_late_is_a_duplicate_and_a_restart_keeps_it():
    """A redelivery (a restart's re-scoring, a producer retry) of an item counted while it was on time, arriving
    after it fell too late, was listed as a rejection; the restart's replay then skipped the original occurrence
    too, and the restarted windows held one item fewer (and, revision being the count, lost to the old ones)."""
    cfg = settings(windows={"rolling_seconds": [60, 300, 3600]})
    steady = [scored(i, i * 30, topic="Macro") for i in range(240)]
    again = scored(100, 100 * 30, topic="Macro")  # item 100, counted on time, delivered again ~70 min later

    first = Aggregation(cfg)
    run_all(first, [*steady, again], step=1)
    assert (first.store.rejected, first.store.duplicates) == (0, 1) and "n100" not in first.rejected_ids
    restarted, _ = _restart(first, [*steady, again], cfg)
    assert held(restarted) == held(first)


def test_a_restore_point_lists_a_bounded_number_of_rejections_else_none():
    """A restore point is one Kafka record: past the bound the list is left out, and a restart judges lateness
    again for that span (the behaviour before the list), rather than a record too large to write."""
    from finsent.stream.pipeline import MAX_LISTED_REJECTIONS

    agg = Aggregation(settings())
    agg.rejected_ids = {f"id{i}": 0 for i in range(MAX_LISTED_REJECTIONS)}
    assert len(agg.snapshot()["rejected"]) == MAX_LISTED_REJECTIONS
    agg.rejected_ids["one-more"] = 0
    assert agg.snapshot()["rejected"] is None
    restored = Aggregation(settings())
    restored.begin_restore(0.0, agg.snapshot())
    assert not restored.exact_replay


def test_the_newest_windows_kept_for_the_gauges_stay_bounded_with_ever_new_tickers():
    """``Aggregation.last`` kept the newest window of every (key, width) ever seen: with a new ticker in every
    headline it grew without bound (360k entries, 249 MiB after 120k headlines) while the store and the detector
    stayed bounded. The gauges read only the surge width's windows at the newest judged end: only those are kept."""
    agg = Aggregation(settings(max_keys=200))
    items = [scored(i, i * 6, "negative" if i % 3 == 0 else "neutral", tickers=(f"T{i}",)) for i in range(6000)]
    run_all(agg, items, step=100)
    assert agg.judged_until > (T0 + timedelta(hours=9)).timestamp()
    assert 0 < len(agg.last) <= len(agg.store.key_starts) // 5, (len(agg.last), len(agg.store.key_starts))
    gauges = {key: count for key, _, _, _, count in agg.surge_gauges()}
    newest = [c for c in agg.last.values() if c.key.startswith("ticker:")]
    assert newest and all(gauges[c.key] == c.count for c in newest if c.key in gauges)


def test_a_stream_dated_before_1970_is_windowed_live_as_the_backtest_does():
    t = datetime(1965, 3, 1, 12, 0, tzinfo=UTC)
    items = [
        scored_item(news_item(f"n{i}", "x", at=t + timedelta(seconds=20 * i)), "neutral", "Macro") for i in range(90)
    ]
    live = Aggregation(settings())
    windows, _ = run_all(live, items)
    windows += live.set_idle(0).windows
    assert windows and live.newest_event == (t + timedelta(seconds=20 * 89)).timestamp()
    assert Aggregation(settings()).newest_event is None  # nothing seen yet


def _idle_key_then_a_late_headline():
    """ticker:ZZZ builds a baseline on day 0, is silent for a week, gets one headline X 7 days 45 min later, then
    surges; background news every 5 min keeps event time moving. Returns (items, X's id)."""
    import random

    rng = random.Random(1)
    items = [scored(i, m * 60 + 7, topic="Macro") for i, m in enumerate(range(0, 8 * 24 * 60, 5))]
    n = len(items)
    for m in range(120):
        negative = rng.choice([1, 2, 3, 4])
        for k in range(4):
            items.append(scored(n, m * 60 + 10 + k * 10, "negative" if k < negative else "neutral", tickers=("ZZZ",)))
            n += 1
    day7 = 7 * 24 * 3600
    x = scored(n, day7 + 2 * 3600 + 45 * 60, tickers=("ZZZ",))
    items.append(x)
    for m in range(30):
        for k in range(6):
            at = day7 + 3 * 3600 + 30 * 60 + m * 60 + 5 + k * 9
            items.append(scored(n + 1 + m * 6 + k, at, "negative" if k < 5 else "neutral", tickers=("ZZZ",)))
    return sorted(items, key=lambda s: s.item.published), x.item.id


def test_forgetting_an_idle_key_depends_neither_on_arrival_order_nor_on_a_restart():
    """A key's baseline is forgotten after ``surge.forget_after_s`` without headlines. It was forgotten by an hourly
    sweep whose hours depended on when the process started and which saw late headlines or not depending on when
    they arrived: the same headlines gave a surge live and none in the backtest. Forgetting is now part of judging
    (a key idle that long is judged from a fresh baseline), so the sweep that frees the memory changes nothing."""
    cfg = settings(windows={"rolling_seconds": [60, 300]})
    items, x = _idle_key_then_a_late_headline()
    in_order = Aggregation(cfg)
    expected = final(*finish(in_order, *run_all(in_order, items)))
    late = sorted(items, key=lambda s: s.item.published.timestamp() + (1800 if s.item.id == x else 0))
    live = Aggregation(cfg)
    assert final(*finish(live, *run_all(live, late, step=20))) == expected
    crash = next(n for n, s in enumerate(items) if s.item.published >= T0 + timedelta(days=7, hours=2, minutes=40))
    first = Aggregation(cfg)
    w1, a1 = run_all(first, items[:crash], step=20)
    restarted, out = _restart(first, items[:crash], cfg)
    w2, a2 = run_all(restarted, items[crash:], step=20)
    assert final(*finish(restarted, w1 + out.windows + w2, a1 + out.alerts + a2)) == expected
