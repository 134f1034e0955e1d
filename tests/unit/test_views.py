"""The API's live views keep what a consumer of the output topics must keep: newest revisions, standing alerts."""

from datetime import UTC, datetime, timedelta

from finsent.records import SurgeAlert, WindowStat
from finsent.web.views import StreamViews

T0 = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)


def window(minute, count, revision=0):
    return WindowStat(
        key="all",
        start=T0 + timedelta(minutes=minute),
        end=T0 + timedelta(minutes=minute + 1),
        count=count,
        negative=0,
        neutral=count,
        positive=0,
        mean_score=0.0,
        revision=revision,
    )


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
    a = SurgeAlert(
        alert_id="all|x",
        key="all",
        state="firing",
        severity="warning",
        window_start=T0,
        window_end=T0 + timedelta(minutes=5),
        count=9,
        negative=8,
        negative_share=8 / 9,
        zscore=5.0,
        baseline_mean=0.1,
        baseline_std=0.05,
        raised_at=T0 + timedelta(minutes=5),
        trigger="early",
    )
    v.add_alert(a)
    assert list(v.alerts) == [a.transition]
    v.add_alert(a.model_copy(update={"retracted": True, "trigger": "close"}))
    assert not v.alerts
