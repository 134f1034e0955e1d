"""Compliance acts on alerts: acknowledge, assign, note, close with a disposition — each a new row of the
append-only, hash-chained audit log, never an edit; a re-firing alert joins its open case; the dispositions
come back as a metric. The receiver app in-process (TestClient), its real SQLite audit log."""

from __future__ import annotations

import sqlite3

import pytest
from conftest import make_settings
from starlette.testclient import TestClient
from test_receiver import webhook

from finsent.alerts.audit import verify_chain
from finsent.alerts.receiver import build_app


@pytest.fixture
def app_and_settings(tmp_path):
    settings = make_settings(
        tmp_path,
        kafka={"bootstrap": "127.0.0.1:1"},  # no broker: the case workflow needs none
        receiver={"evidence_wait_s": 0, "allowed_hosts": ["testserver"]},
    )
    with TestClient(build_app(settings, follow_alerts=False)) as client:
        yield client, settings


def fire(
    client, fingerprint="abc123", starts="2026-11-22T12:00:30Z", status="firing", name="Energy | Oil", labels=None
):
    hook = webhook(
        status=status,
        fingerprint=fingerprint,
        name=name,
        ends="2026-11-22T12:09:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        labels=labels,
    )
    hook["alerts"][0]["startsAt"] = starts
    r = client.post("/alertmanager", json=hook)
    assert r.status_code == 200, r.text


def act(client, case_id, action, **body):
    return client.post(f"/cases/{case_id}/{action}", json={"who": "alice", **body})


def rows(settings) -> list[tuple]:
    db = sqlite3.connect(settings.audit_db)
    try:
        return db.execute(
            "SELECT seq, status, action, actor, assignee, note, disposition FROM notifications"
        ).fetchall()
    finally:
        db.close()


def test_a_case_is_acknowledged_assigned_noted_and_closed_each_as_a_new_audit_row(app_and_settings):
    client, settings = app_and_settings
    fire(client)
    cases = client.get("/cases", params={"state": "open"}).json()["cases"]
    assert len(cases) == 1 and cases[0]["state"] == "open" and cases[0]["key"] == "topic:Energy | Oil"
    case_id = cases[0]["case_id"]

    assert client.get("/alerts").json()["notifications"][0]["case"]["state"] == "open"
    assert act(client, case_id, "acknowledge").json()["state"] == "acknowledged"
    assert act(client, case_id, "assign", assignee="bob").json()["assignee"] == "bob"
    listed = client.get("/alerts").json()["notifications"][0]["case"]  # GET /alerts: each alert's current state
    assert listed == {
        **listed,
        "case_id": case_id,
        "state": "acknowledged",
        "assignee": "bob",
        "acknowledged_by": "alice",
    }
    assert act(client, case_id, "note", note="called the desk; oil inventories report").status_code == 200
    before = rows(settings)
    closed = act(client, case_id, "close", disposition="false_positive", note="inventory data, not news").json()
    after = rows(settings)

    assert closed["state"] == "closed" and closed["disposition"] == "false_positive" and closed["closed_by"] == "alice"
    assert [e["event"] for e in closed["events"]] == ["notification:firing", "acknowledge", "assign", "note", "close"]
    assert after[: len(before)] == before and len(after) == len(before) + 1  # appended, nothing changed
    assert after[-1][1:] == ("close", "close", "alice", None, "inventory data, not news", "false_positive")
    assert verify_chain(settings.audit_db).bad_seq is None  # the chain holds over notifications and actions
    # the notification listing and count stay notifications only
    assert client.get("/healthz").json()["notifications"] == 1
    assert client.get("/alerts").json()["count"] == 1
    assert client.get("/alerts").json()["notifications"][0]["case"]["disposition"] == "false_positive"
    assert client.get("/cases", params={"state": "open"}).json()["count"] == 0
    metrics = client.get("/metrics").text
    assert 'finsent_receiver_case_dispositions{dim="topic",disposition="false_positive"} 1.0' in metrics
    assert 'finsent_receiver_cases{state="closed"} 1.0' in metrics


def test_an_alert_that_fires_again_while_its_case_is_open_joins_it(app_and_settings):
    client, _ = app_and_settings
    fire(client)
    fire(client, status="resolved")
    fire(client, starts="2026-11-22T12:20:30Z")  # the same alert fires again: same case
    fire(client, fingerprint="other", name="Macro")  # another alert: its own case
    cases = {c["key"]: c for c in client.get("/cases").json()["cases"]}
    assert len(cases) == 2
    oil = cases["topic:Energy | Oil"]
    assert oil["notifications"] == 3 and oil["alert_status"] == "firing" and oil["state"] == "open"
    act(client, oil["case_id"], "close", disposition="escalated")
    fire(client, starts="2026-11-22T13:00:30Z")  # after the case was closed: a new case
    oil_cases = [c for c in client.get("/cases").json()["cases"] if c["key"] == "topic:Energy | Oil"]
    assert [c["state"] for c in oil_cases] == ["open", "closed"]


def test_a_surge_that_escalates_to_critical_stays_one_case_that_fires_while_either_severity_does(app_and_settings):
    """Severity is a label, so the escalated alert has another Alertmanager fingerprint; it is the same surge (the
    same finsent key), and compliance must not get a second open case for it (nor count it twice when closed)."""
    client, _ = app_and_settings
    fire(client, fingerprint="warn1")
    fire(client, fingerprint="crit1", starts="2026-11-22T12:01:30Z", labels={"severity": "critical"})
    fire(client, fingerprint="warn1", status="resolved")  # the warning series ends after the critical fired
    (case,) = client.get("/cases").json()["cases"]
    assert (case["key"], case["severity"], case["notifications"]) == ("topic:Energy | Oil", "critical", 3)
    assert case["alert_status"] == "firing"  # the critical one still fires
    fire(client, fingerprint="crit1", starts="2026-11-22T12:01:30Z", status="resolved")
    (case,) = client.get("/cases").json()["cases"]
    assert case["alert_status"] == "resolved"


def test_pipeline_alerts_without_a_key_are_one_case_per_fingerprint(app_and_settings):
    client, _ = app_and_settings
    for fingerprint, instance in (("w1", "worker-0"), ("w2", "worker-1")):
        hook = webhook(fingerprint=fingerprint, labels={"alertname": "WorkerDown", "instance": instance})
        for label in ("dim", "name", "topic"):
            hook["alerts"][0]["labels"].pop(label)
        assert client.post("/alertmanager", json=hook).status_code == 200
    cases = client.get("/cases").json()["cases"]
    assert len(cases) == 2 and {c["key"] for c in cases} == {None} and {c["alertname"] for c in cases} == {"WorkerDown"}


def test_every_disposition_of_a_key_kind_is_exported_zeros_included(app_and_settings):
    """The false-positive share per key kind divides false_positive by all dispositions of the kind: a kind with
    closed cases and no false positive must export a 0 for it, or the panel leaves the kind out."""
    client, _ = app_and_settings
    fire(client)
    act(client, client.get("/cases").json()["cases"][0]["case_id"], "close", disposition="escalated")
    metrics = client.get("/metrics").text
    for disposition, n in (("escalated", 1), ("false_positive", 0), ("no_action", 0)):
        assert f'finsent_receiver_case_dispositions{{dim="topic",disposition="{disposition}"}} {n}.0' in metrics
    assert 'dim="ticker"' not in metrics  # kinds with no closed case are not made up


def test_actions_that_do_not_fit_are_refused_and_record_nothing(app_and_settings):
    client, settings = app_and_settings
    fire(client)
    case_id = client.get("/cases").json()["cases"][0]["case_id"]
    n = len(rows(settings))
    assert act(client, 999, "acknowledge").status_code == 404
    assert act(client, case_id, "close").status_code == 422  # no disposition
    assert act(client, case_id, "close", disposition="meh").status_code == 422
    assert act(client, case_id, "assign").status_code == 422  # no assignee
    assert act(client, case_id, "delete").status_code == 422
    # rows the log would keep for ever and the fold would show as nothing (a blank note, a field the action ignores)
    assert act(client, case_id, "note").status_code == 422  # a note without one
    assert act(client, case_id, "note", note="   ").status_code == 422
    assert act(client, case_id, "acknowledge", note="").status_code == 422
    assert act(client, case_id, "acknowledge", disposition="escalated").status_code == 422
    assert act(client, case_id, "note", note="x", assignee="bob").status_code == 422
    assert client.post(f"/cases/{case_id}/note", json={"note": "anonymous"}).status_code == 422  # who is required
    assert act(client, case_id, "note", who="   ").status_code == 422  # blanks are nobody
    bad = b'{"who": "\\ud800", "note": "x"}'  # valid JSON, but no UTF-8 can hold it
    r = client.post(f"/cases/{case_id}/note", content=bad, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert (
        client.post(f"/cases/{case_id}/note", content=b"{}", headers={"content-type": "text/plain"}).status_code == 415
    )
    assert len(rows(settings)) == n
    assert act(client, case_id, "close", disposition="no_action").status_code == 200
    assert act(client, case_id, "note", note="too late").status_code == 409  # closed cases take no more actions
    assert len(rows(settings)) == n + 1


def test_writes_need_the_token_when_one_is_set(tmp_path):
    settings = make_settings(
        tmp_path,
        kafka={"bootstrap": "127.0.0.1:1"},
        receiver={"evidence_wait_s": 0, "allowed_hosts": ["testserver"], "token": "s3cret"},
    )
    with TestClient(build_app(settings, follow_alerts=False)) as client:
        ok = client.post("/alertmanager", json=webhook(), headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        case_id = client.get("/cases").json()["cases"][0]["case_id"]
        assert act(client, case_id, "acknowledge").status_code == 401
        r = client.post(
            f"/cases/{case_id}/acknowledge", json={"who": "alice"}, headers={"Authorization": "Bearer s3cret"}
        )
        assert r.status_code == 200


def test_a_case_shows_the_headlines_and_links_of_its_newest_firing_after_the_surge_resolved(app_and_settings):
    """What a person acts on stays with the case: the dashboard's "active alerts" drops a surge once it resolves,
    while its case may stay open for days. The rule's dashboard path is made whole from grafana.url."""
    from datetime import UTC, datetime, timedelta

    from test_receiver import NOW, surge

    from finsent.alerts.audit import AuditLog

    client, settings = app_and_settings
    log = AuditLog(settings.audit_db)
    log.add_surges([surge("ticker:M&T", at=NOW, title="M&T shares slide")], datetime.now(UTC))
    log.close()
    annotations = {
        "dashboard": "/d/finsent-ticker/finsent-ticker?var-ticker=M%26T",
        "runbook_url": "docs/runbooks.md#negativesentimentsurge",
    }
    hook = webhook(labels={"dim": "ticker", "name": "M&T", "ticker": "M&T"}, fingerprint="mt1")
    hook["alerts"][0]["startsAt"] = (NOW - timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    hook["alerts"][0]["annotations"].update(annotations)
    assert client.post("/alertmanager", json=hook).status_code == 200
    fire(client, fingerprint="mt1", status="resolved", name="M&T", labels={"dim": "ticker", "ticker": "M&T"})

    (case,) = client.get("/cases", params={"state": "open"}).json()["cases"]
    assert case["key"] == "ticker:M&T" and case["alert_status"] == "resolved"
    assert [e["title"] for e in case["evidence"]] == [f"M&T shares slide #{i}" for i in range(3)]
    assert case["links"] == {
        "dashboard": settings.grafana.url + annotations["dashboard"],
        "runbook": annotations["runbook_url"],
    }
    acked = act(client, case["case_id"], "acknowledge").json()  # an action's answer is the case as listed
    assert acked["evidence"] == case["evidence"] and acked["links"] == case["links"]
    fire(client, fingerprint="other", name="Macro")  # no surge filed for it, no annotations: an empty list, no links
    macro = next(c for c in client.get("/cases").json()["cases"] if c["key"] == "topic:Macro")
    assert (macro["evidence"], macro["links"]) == ([], {})


def test_the_exports_hold_the_case_actions_beside_the_notifications(app_and_settings):
    """Compliance's export is the record of who did what: it held the notifications only, so after acknowledge,
    assign, note and close it had one row (and gaps in seq) while the log held five."""
    import csv
    import io
    import json
    import subprocess
    import sys

    from conftest import environ_without_finsent

    client, settings = app_and_settings
    fire(client)
    case_id = client.get("/cases").json()["cases"][0]["case_id"]
    act(client, case_id, "acknowledge")
    act(client, case_id, "assign", assignee="bob")
    act(client, case_id, "note", note="=HYPERLINK(evil)")  # a note is text anyone with the token typed
    act(client, case_id, "close", disposition="no_action")

    page = list(csv.DictReader(io.StringIO(client.get("/alerts", params={"format": "csv"}).text)))
    assert [int(r["seq"]) for r in page] == list(range(1, 6))
    assert [(r["status"], r["actor"], r["assignee"], r["disposition"]) for r in page[1:]] == [
        ("acknowledge", "alice", "", ""),
        ("assign", "alice", "bob", ""),
        ("note", "alice", "", ""),
        ("close", "alice", "", "no_action"),
    ]
    assert page[3]["note"] == "'=HYPERLINK(evil)" and {r["case_seq"] for r in page[1:]} == {str(case_id)}
    assert client.get("/alerts").json()["count"] == 1  # the JSON listing stays one row per notification

    out = settings.audit_db.parent / "export.json"
    env = {**environ_without_finsent(), "FINSENT_RECEIVER__AUDIT_DB": str(settings.audit_db)}
    r = subprocess.run(
        [sys.executable, "-m", "finsent.cli", "receiver", "export", "--format", "json", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    assert [x["seq"] for x in rows] == list(range(1, 6)) and rows[-1]["action"] == "close"
    assert "5 rows (notifications and case actions) written" in r.stderr
