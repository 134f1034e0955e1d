"""The API's live views keep what a consumer of the output topics must keep: newest revisions, standing alerts."""

from datetime import timedelta

from factories import T0, surge_alert, window_stat

from finsent.web.views import StreamViews


def window(minute, count, revision=0):
    return window_stat(at=T0 + timedelta(minutes=minute), width_s=60, count=count, revision=revision)


def test_a_window_revision_replaces_the_window_and_an_older_revision_does_not():
    v = StreamViews()
    for m in range(5):
        v.add_window(window(m, 1))
    v.add_window(window(2, 7, revision=6))  # late items counted in a closed window
    v.add_window(window(2, 3, revision=2))  # an older revision arriving after it (another partition)
    series = v.windows[("all", 60)]
    assert [w.count for w in series] == [1, 1, 7, 1, 1] and [w.end for w in series] == sorted(w.end for w in series)


def test_a_late_window_that_was_empty_at_close_is_inserted_in_order():
    v = StreamViews()
    for m in (0, 1, 3):
        v.add_window(window(m, 1))
    v.add_window(window(2, 4, revision=4))
    assert [w.count for w in v.windows[("all", 60)]] == [1, 1, 4, 1]


def test_a_retracted_provisional_alert_is_no_longer_listed():
    v = StreamViews()
    a = surge_alert(
        "all",
        at=T0,
        alert_id="all|x",
        count=9,
        negative=8,
        zscore=5.0,
        baseline_mean=0.1,
        baseline_std=0.05,
        trigger="early",
        evidence=(),
    )
    v.add_alert(a)
    assert list(v.alerts) == [a.transition]
    v.add_alert(a.model_copy(update={"retracted": True, "trigger": "close"}))
    assert not v.alerts


def test_a_late_window_for_an_end_not_held_fits_into_a_full_series_by_dropping_the_oldest():
    """A late item can make a window the view never saw (its key had nothing in it at close). Inserting it into a
    full series raised IndexError (a bounded deque), which the follower took for a broker failure: it reconnected
    from the start and hit the same record again, for ever."""
    v = StreamViews(max_points=10)
    for m in range(0, 20, 2):
        v.add_window(window(m, 1))
    v.add_window(window(15, 3, revision=3))
    series = v.windows[("all", 60)]
    assert len(series) == 10 and [w.end for w in series] == sorted(w.end for w in series)
    assert series[0].start == T0 + timedelta(minutes=2) and any(w.count == 3 for w in series)  # the oldest made room
    v.add_window(window(-1, 5, revision=5))  # older than anything held in a full series: nothing to make room for
    assert len(series) == 10 and series[0].start == T0 + timedelta(minutes=2)


def test_a_record_its_handler_fails_on_is_logged_and_counted_not_a_reason_to_reconnect(monkeypatch, caplog):
    """follow_topics reconnected from the earliest offset after any error in a record's handler, and met the same
    record again: the views stopped updating for good. One bad record is skipped; the follower reads on."""
    import asyncio
    from types import SimpleNamespace

    from aiokafka import TopicPartition

    from finsent import kafka

    made = []

    class Tail:
        def __init__(self):
            self.polls = 0

        async def start(self):
            pass

        async def stop(self):
            pass

        async def getmany(self, timeout_ms):
            self.polls += 1
            if self.polls > 1:
                raise asyncio.CancelledError  # the end of the test
            tp = TopicPartition("finsent.windows", 0)
            return {tp: [SimpleNamespace(value=b"bad", offset=0), SimpleNamespace(value=b"good", offset=1)]}

    def consumer(*args, **kwargs):
        if made:
            raise asyncio.CancelledError  # a reconnect: what the fix must not need
        made.append(Tail())
        return made[0]

    handled = []

    def handle(topic, value, offset):
        if value == b"bad":
            raise IndexError("deque already at its maximum size")
        handled.append(offset)

    monkeypatch.setattr(kafka, "aio_consumer", consumer)
    skipped = kafka.FOLLOW_SKIPPED
    before = skipped.get(("web", "finsent.windows"), 0)
    try:
        asyncio.run(kafka.follow_topics("127.0.0.1:1", ["finsent.windows"], handle, "web"))
    except asyncio.CancelledError:
        pass
    assert handled == [1] and len(made) == 1
    assert skipped[("web", "finsent.windows")] == before + 1
    assert "record skipped" in caplog.text
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(kafka.FollowSkippedCollector("web"))  # what the API's /metrics shows (the receiver's: its role)
    exposition = generate_latest(registry).decode()
    assert f'finsent_follow_skipped_records_total{{topic="finsent.windows"}} {before + 1}.0' in exposition
