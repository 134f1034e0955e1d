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

WAIT_S = 3.0
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
    fp = hook["alerts"][0]["fingerprint"]
    (row,) = [n for n in httpx.get(f"{url}/alerts", timeout=5).json()["notifications"] if n["fingerprint"] == fp]
    return row, took


def test_a_late_surgealert_is_awaited_and_an_earlier_surge_of_the_key_is_not_taken_for_it(receiver):
    """Yesterday's surge of the key is on the topic; today's arrives a second after the webhook. The
    receiver must wait for today's, not file yesterday's headlines as today's evidence."""
    url, send = receiver
    key, name = "topic:Energy | Oil", "Energy | Oil"
    publish_and_wait(receiver, surge(key, at=YESTERDAY, title="Yesterday's glut"))
    today = surge(key, title="Oil plunges today")
    timer = threading.Timer(1.0, send, [today])
    timer.start()
    row, took = post(url, webhook(fingerprint="late1", name=name))  # startsAt 30 s after today's window end
    timer.join()
    assert row["evidence_match"] == "matched" and row["surge_alert_id"] == today.alert_id
    assert all(e["title"].startswith("Oil plunges today") for e in row["evidence"]) and len(row["evidence"]) == 3
    assert 0.9 < took < WAIT_S + 2


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
    assert row["evidence_match"] is None and took < 2  # not a surge notification: nothing to match, no wait
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
    assert other.status_code == 200 and time.monotonic() - started < 1.5
    waiting.join()
