"""Which surge's headlines a notification gets: its own (by time or alert id), never an earlier surge's.

One real ``finsent receiver`` process following a real broker's alerts topic; each test uses its own key.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import httpx
import pytest
from streamkit import publish
from test_receiver import NOW, receiver_process, surge, webhook

from finsent.records import SurgeAlert

WAIT_S = 8.0  # long enough, on a loaded machine, for a SurgeAlert published a second after its webhook
YESTERDAY = NOW - timedelta(days=1)


@pytest.fixture(scope="module")
def receiver(broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evidence")
    topic = f"evidence-{tmp.name}.alerts"
    with receiver_process(
        tmp,
        FINSENT_KAFKA__BOOTSTRAP=broker,
        FINSENT_TOPICS__ALERTS__NAME=topic,
        FINSENT_RECEIVER__EVIDENCE_WAIT_S=str(WAIT_S),
    ) as url:
        yield url, lambda *alerts: publish(broker, topic, [(a.key.encode(), a.to_json()) for a in alerts])


def surges_read(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return float(
        next(line.split()[-1] for line in text.splitlines() if line.startswith("finsent_receiver_surges_total"))
    )


def publish_and_wait(receiver, *alerts: SurgeAlert) -> None:
    """Publish, then wait until the receiver has read them (so a test's premise holds before it posts)."""
    url, send = receiver
    before = surges_read(url)
    send(*alerts)
    deadline = time.monotonic() + 30
    while surges_read(url) < before + len(alerts):
        assert time.monotonic() < deadline, "the receiver did not read the alerts topic"
        time.sleep(0.1)


def post(url: str, hook: dict) -> tuple[dict, float]:
    """POST a webhook; (the row it recorded, seconds the request took)."""
    started = time.monotonic()
    r = httpx.post(f"{url}/alertmanager", json=hook, timeout=30)
    took = time.monotonic() - started
    assert r.status_code == 200 and r.json()["recorded"] == 1, r.text
    fp, status = hook["alerts"][0]["fingerprint"], hook["alerts"][0]["status"]
    rows = httpx.get(f"{url}/alerts", params={"status": status}, timeout=5).json()["notifications"]
    (row,) = [n for n in rows if n["fingerprint"] == fp]
    return row, took


def test_a_late_surgealert_is_awaited_and_an_earlier_surge_of_the_key_is_not_taken_for_it(receiver):
    """Yesterday's surge of the key is on the topic; today's arrives a second after the webhook. The
    receiver must wait for today's, not file yesterday's headlines as today's evidence."""
    url, send = receiver
    key, name = "topic:Energy | Oil", "Energy | Oil"
    publish_and_wait(receiver, surge(key, at=YESTERDAY, title="Yesterday's glut"))
    today = surge(key, title="Oil plunges today")
    sent_at: list[float] = []
    timer = threading.Timer(1.0, lambda: (sent_at.append(time.monotonic()), send(today)))
    timer.start()
    row, took = post(url, webhook(fingerprint="late1", name=name))  # startsAt 30 s after today's window end
    answered_at = time.monotonic()
    timer.join()
    assert row["evidence_match"] == "matched" and row["surge_alert_id"] == today.alert_id
    assert all(e["title"].startswith("Oil plunges today") for e in row["evidence"]) and len(row["evidence"]) == 3
    # it waited for it (answered after it was sent, not a fixed time after the request began: a slow scheduler can
    # start the request late), and stopped waiting once it came
    assert sent_at and sent_at[0] < answered_at and took < WAIT_S


def test_only_an_earlier_surge_of_the_key_is_stale_no_surge_at_all_is_missing(receiver):
    url, _ = receiver
    publish_and_wait(receiver, surge("topic:Metals", at=YESTERDAY))
    stale, took = post(url, webhook(fingerprint="stale1", name="Metals"))
    assert stale["evidence_match"] == "stale" and stale["evidence"] == [] and stale["surge_alert_id"] is None
    assert took >= WAIT_S - 0.5  # it waited for this alert's SurgeAlert, bounded
    missing, _ = post(url, webhook(fingerprint="missing1", name="Nobody Knows"))
    assert missing["evidence_match"] == "missing" and missing["evidence"] == []
    worker_down = {
        **webhook(fingerprint="wd1"),
        "alerts": [{**webhook()["alerts"][0], "fingerprint": "wd1", "labels": {"alertname": "WorkerDown"}}],
    }
    row, took = post(url, worker_down)
    assert row["evidence_match"] is None and took < WAIT_S / 2  # not a surge notification: nothing to match, no wait
    metrics = httpx.get(f"{url}/metrics", timeout=5).text
    assert 'finsent_receiver_evidence_total{match="stale"} 1.0' in metrics


def test_an_alert_id_on_the_alert_picks_that_surge_even_when_another_is_nearer_in_time(receiver):
    url, _ = receiver
    key, name = "topic:Banking", "Banking"
    first, second = surge(key, at=NOW - timedelta(minutes=3), title="First"), surge(key, at=NOW, title="Second")
    publish_and_wait(receiver, first, second)
    by_time, _ = post(url, webhook(fingerprint="bank1", name=name))
    assert by_time["evidence_match"] == "matched" and by_time["surge_alert_id"] == second.alert_id
    by_id, _ = post(url, webhook(fingerprint="bank2", name=name, labels={"alert_id": first.alert_id}))
    assert by_id["surge_alert_id"] == first.alert_id and by_id["evidence"][0]["title"].startswith("First")


def test_a_retracted_surge_keeps_its_pages_and_a_confirmed_surge_of_the_time_takes_over(receiver):
    """An early firing the complete window withdrew had paged already (Prometheus saw the gauge): its resolved
    notification, and a firing one that arrives after the retraction, are filed with that surge's headlines
    and say ``retracted``, never recorded as evidence-less. Once the complete window next to it confirms a
    surge, that one (standing) is what the alert was about."""
    url, _ = receiver
    key, name = "topic:Shipping", "Shipping"
    early = surge(key, title="Early shipping scare")
    publish_and_wait(receiver, early)
    fired, _ = post(url, webhook(fingerprint="ship1", name=name))
    assert fired["evidence_match"] == "matched" and fired["surge_alert_id"] == early.alert_id
    publish_and_wait(receiver, early.model_copy(update={"retracted": True, "trigger": "close"}))
    late, took = post(url, webhook(fingerprint="ship2", name=name))
    assert late["evidence_match"] == "retracted" and late["surge_alert_id"] == early.alert_id
    assert took < WAIT_S - 1  # the surge of its time is found: no waiting for another
    resolved, took = post(url, webhook(status="resolved", fingerprint="ship1", name=name, ends="2026-11-22T12:03:00Z"))
    assert resolved["surge_alert_id"] == early.alert_id and resolved["evidence_match"] == "retracted"
    assert [e["title"] for e in resolved["evidence"]] == [e.title for e in early.evidence]
    assert took < WAIT_S - 1
    confirmed = surge(key, at=NOW - timedelta(seconds=10), title="Confirmed shipping surge")
    publish_and_wait(receiver, confirmed)
    resolved, _ = post(url, webhook(status="resolved", fingerprint="ship2", name=name, ends="2026-11-22T12:03:00Z"))
    assert resolved["surge_alert_id"] == confirmed.alert_id and resolved["evidence_match"] == "matched"
    metrics = httpx.get(f"{url}/metrics", timeout=5).text
    assert 'finsent_receiver_evidence_total{match="retracted"} 2.0' in metrics


def test_a_resolution_is_filed_with_the_surge_its_firing_was_filed_with(receiver):
    """Not with a newer surge of the key whose window happens to hold the alert's start."""
    url, _ = receiver
    key, name = "topic:Rail", "Rail"
    first = surge(key, title="Rail strike")
    publish_and_wait(receiver, first)
    fired, _ = post(url, webhook(fingerprint="rail1", name=name))  # startsAt 30 s after first's window
    assert fired["surge_alert_id"] == first.alert_id
    newer = surge(key, at=NOW + timedelta(minutes=2), title="Newer rail surge")  # its window holds startsAt
    publish_and_wait(receiver, newer)
    resolved, _ = post(url, webhook(status="resolved", fingerprint="rail1", name=name, ends="2026-11-22T12:03:00Z"))
    assert resolved["surge_alert_id"] == first.alert_id and resolved["evidence_match"] == "matched"
    another, _ = post(url, webhook(fingerprint="rail2", name=name))  # a firing one goes by time: the newer
    assert another["surge_alert_id"] == newer.alert_id


def test_a_webhook_waiting_for_evidence_does_not_hold_up_other_requests(receiver):
    url, _ = receiver
    waiting = threading.Thread(target=post, args=(url, webhook(fingerprint="slow1", name="Still Nothing")))
    waiting.start()
    time.sleep(0.5)
    started = time.monotonic()
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    other = httpx.post(
        f"{url}/alertmanager",
        json={
            **webhook(fingerprint="wd2"),
            "alerts": [{**webhook()["alerts"][0], "fingerprint": "wd2", "labels": {"alertname": "WorkerDown"}}],
        },
        timeout=5,
    )
    assert other.status_code == 200 and time.monotonic() - started < WAIT_S / 2  # held up, it would take ~7.5 s
    waiting.join()
