"""Which SurgeAlert a notification is filed with (alerts.audit.match_surge): the pure ranking, without the
receiver around it (its HTTP and topic handling: tests/integration/test_receiver_evidence.py)."""

from datetime import timedelta

from factories import T0, surge_alert

from finsent.alerts.audit import match_surge

KEY = "topic:Energy | Oil"


def _surge(alert_id: str, start_s: int, *, retracted: bool = False, severity: str = "warning"):
    return surge_alert(
        KEY, at=T0 + timedelta(seconds=start_s), alert_id=alert_id, retracted=retracted or None, severity=severity
    )


def _newest_first(*surges):
    return sorted(surges, key=lambda a: a.window_end, reverse=True)


def test_by_time_a_standing_surge_wins_over_a_withdrawn_one_whose_window_ends_later():
    confirmed, early = _surge("confirmed", 0), _surge("early", 10, retracted=True)
    m = match_surge(_newest_first(confirmed, early), T0 + timedelta(seconds=60), 300)
    assert (m.status, m.surge.alert_id) == ("matched", "confirmed")


def test_a_resolution_keeps_its_firings_surge_while_it_stands_even_when_a_newer_one_holds_the_start():
    first, newer = _surge("first", 0), _surge("newer", 20)
    m = match_surge(_newest_first(first, newer), T0 + timedelta(seconds=60), 300, filed_with="first")
    assert (m.status, m.surge.alert_id) == ("matched", "first")


def test_a_resolution_whose_surge_was_withdrawn_goes_to_a_standing_surge_of_its_time():
    early, confirmed = _surge("early", 20, retracted=True), _surge("confirmed", 10)
    m = match_surge(_newest_first(early, confirmed), T0 + timedelta(seconds=60), 300, filed_with="early")
    assert (m.status, m.surge.alert_id) == ("matched", "confirmed")


def test_a_resolution_with_no_standing_surge_is_filed_with_its_own_withdrawn_one_not_another():
    """Two early firings both withdrawn: the later window holds the start as well as the page's own, but the
    page went out with the first, and its resolution says so."""
    first, second = _surge("first", 0, retracted=True), _surge("second", 20, retracted=True)
    m = match_surge(_newest_first(first, second), T0 + timedelta(seconds=60), 300, filed_with="first")
    assert (m.status, m.surge.alert_id) == ("retracted", "first")
    # A firing notification has no such anchor: by time, the window ending last.
    m = match_surge(_newest_first(first, second), T0 + timedelta(seconds=60), 300)
    assert (m.status, m.surge.alert_id) == ("retracted", "second")


def test_the_alerts_own_id_wins_and_nothing_in_time_is_stale_not_a_guess():
    a, b = _surge("a", 0), _surge("b", 600)
    assert match_surge([b, a], T0 + timedelta(seconds=700), 300, alert_id="a").surge.alert_id == "a"
    m = match_surge([b, a], T0 + timedelta(hours=2), 300)
    assert (m.status, m.surge, m.nearest) == ("stale", None, "b")
    assert match_surge([], T0, 300).status == "missing"
