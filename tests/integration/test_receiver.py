"""The compliance receiver: the real Starlette app, the real audit database, the real broker for evidence."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from conftest import environ_without_finsent, make_settings
from factories import surge_alert
from starlette.testclient import TestClient
from streamkit import publish

from finsent.alerts.receiver import build_app
from finsent.local.procs import Child, http_ok
from finsent.net import free_port
from finsent.records import Evidence, SurgeAlert

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def surge(
    key="topic:Energy | Oil", state="firing", n=3, at=NOW, title="Oil plunges as supply glut deepens"
) -> SurgeAlert:
    """A SurgeAlert whose window ends at ``at`` (its alert_id, as the detector makes it, says so too)."""
    ev = tuple(
        Evidence(
            item_id=f"e{i}",
            title=f"{title} #{i}",
            source="oil-desk",
            url=f"http://news.example/{i}",
            published=at - timedelta(seconds=i),
            p_negative=0.9 - i / 100,
        )
        for i in range(n)
    )
    return surge_alert(
        key,
        state=state,
        at=at - timedelta(minutes=5),
        count=40,
        negative=30,
        alert_id=f"{key}|{at.isoformat()}",
        evidence=ev,
    )


def receiver_env(tmp_path, **env) -> dict[str, str]:
    """The environment of a ``finsent receiver`` child: this one's without FINSENT_*, a free port, its own log."""
    base = environ_without_finsent()
    return {
        **base,
        "FINSENT_LOG_JSON": "1",
        "FINSENT_RECEIVER__PORT": str(free_port()),
        "FINSENT_RECEIVER__AUDIT_DB": str(tmp_path / "audit.sqlite"),
        "FINSENT_PATHS__STATE_DIR": str(tmp_path / "state"),
        "FINSENT_KAFKA__BOOTSTRAP": "127.0.0.1:1",
        **env,
    }  # no broker unless given: the receiver keeps serving


@contextmanager
def receiver_process(tmp_path, **env):
    """A real ``finsent receiver`` on 127.0.0.1; yields its base URL."""
    child_env = receiver_env(tmp_path, **env)
    url = f"http://127.0.0.1:{child_env['FINSENT_RECEIVER__PORT']}"
    child = Child(
        "receiver", [sys.executable, "-m", "finsent.cli", "receiver"], tmp_path / "receiver.log", env=child_env
    )
    child.start(http_ok(f"{url}/healthz"), timeout=60)
    try:
        yield url
    finally:
        child.stop()


def webhook(
    status="firing",
    fingerprint="abc123",
    name="Energy | Oil",
    receiver="compliance",
    ends="0001-01-01T00:00:00Z",
    labels=None,
):
    return {
        "version": "4",
        "groupKey": '{}:{alertname="NegativeSentimentSurge"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": {"alertname": "NegativeSentimentSurge"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [
            {
                "status": status,
                "labels": {
                    "alertname": "NegativeSentimentSurge",
                    "dim": "topic",
                    "name": name,
                    "topic": name,
                    "severity": "warning",
                    "kind": "market",
                    **(labels or {}),
                },
                "annotations": {"summary": f"Negative-sentiment surge: topic {name} (warning)", "value": "4.20"},
                "startsAt": "2026-11-22T12:00:30Z",
                "endsAt": ends,
                "generatorURL": "http://prom/graph",
                "fingerprint": fingerprint,
            }
        ],
    }


@pytest.fixture
def settings(tmp_path, broker):
    return make_settings(
        tmp_path,
        kafka={"bootstrap": broker},
        topics={"alerts": {"name": f"receiver-{tmp_path.name}.alerts"}},
        receiver={"evidence_wait_s": 10, "max_body_bytes": 1024 * 1024, "allowed_hosts": ["testserver"]},
    )  # TestClient's Host


def test_a_surge_notification_is_recorded_with_its_evidence_once_and_survives_a_restart(settings):
    publish(settings.kafka.bootstrap, settings.topics.alerts.name, [(b"topic:Energy | Oil", surge().to_json())])
    with TestClient(build_app(settings)) as client:
        r = client.post("/alertmanager", json=webhook())
        assert r.status_code == 200 and r.json() == {"recorded": 1, "duplicates": 0}
        assert client.post("/alertmanager", json=webhook()).json() == {"recorded": 0, "duplicates": 1}  # a retry
        resolved = webhook(status="resolved", ends="2026-11-22T12:05:00Z")
        assert client.post("/alertmanager", json=resolved).json() == {"recorded": 1, "duplicates": 0}
    with TestClient(build_app(settings, follow_alerts=False)) as client:  # a restarted receiver
        rows = client.get("/alerts").json()["notifications"]
        assert [r["status"] for r in rows] == ["firing", "resolved"]
        first = rows[0]
        assert first["surge_alert_id"] == surge().alert_id and len(first["evidence"]) == 3
        assert first["evidence_match"] == "matched" and len(first["row_hash"]) == 64
        assert first["evidence"][0]["title"].startswith("Oil plunges") and first["evidence"][0]["source"] == "oil-desk"
        assert first["labels"]["dim"] == "topic" and first["annotations"]["value"] == "4.20"
        csv_text = client.get("/alerts", params={"format": "csv", "status": "resolved"}).text
        assert csv_text.count("\n") == 2 and "Oil plunges as supply glut deepens #0" in csv_text
        future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        assert client.get("/alerts", params={"from": future}).json()["count"] == 0
        assert client.get("/alerts", params={"from": "2024-01-01T00:00:00"}).status_code == 422  # no zone


def test_bad_webhooks_get_4xx_and_leave_the_audit_log_intact(settings, monkeypatch):
    monkeypatch.setenv("FINSENT_RECEIVER__TOKEN", "s3cret")
    from finsent.settings import load

    s = load(
        **{k: v for k, v in settings.model_dump().items() if k != "receiver"},
        receiver={**settings.receiver.model_dump(exclude={"token"}), "evidence_wait_s": 0},
    )
    assert s.receiver.token is not None
    with TestClient(build_app(s, follow_alerts=False)) as client:
        auth = {"Authorization": "Bearer s3cret", "Content-Type": "application/json"}
        assert client.post("/alertmanager", json=webhook(), headers=auth).status_code == 200
        before = client.get("/alerts").json()["notifications"]
        cases = [
            client.post("/alertmanager", json=webhook(fingerprint="x1")),  # no token
            client.post("/alertmanager", json=webhook(fingerprint="x2"), headers={"Authorization": "Bearer wrong"}),
            client.post("/alertmanager", content=b"{not json", headers=auth),
            client.post("/alertmanager", content=b"\xff\xfe", headers=auth),
            client.post("/alertmanager", content=b"x" * (10 * 1024 * 1024), headers=auth),  # 10 MB
            client.post("/alertmanager", json={**webhook(), "version": "3"}, headers=auth),
            client.post("/alertmanager", json={**webhook(), "alerts": []}, headers=auth),
            client.post("/alertmanager", json={**webhook(), "alerts": [{"status": "firing"}]}, headers=auth),
        ]
        assert [r.status_code for r in cases] == [401, 401, 400, 400, 413, 422, 422, 422]
        assert {"field": "alerts.0.labels", "error": "Field required"} in cases[-1].json()["fields"]
        assert client.get("/alerts").json()["notifications"] == before
        metrics = client.get("/metrics").text
        assert 'finsent_receiver_rejected_total{reason="unauthorized"} 2.0' in metrics


def test_the_audit_log_refuses_edits_and_deletes(settings):
    with TestClient(build_app(settings, follow_alerts=False)) as client:
        client.post(
            "/alertmanager",
            json={**webhook(), "alerts": [{**webhook()["alerts"][0], "labels": {"alertname": "WorkerDown"}}]},
        )
    db = sqlite3.connect(settings.audit_db)
    for sql in ("UPDATE notifications SET status = 'resolved'", "DELETE FROM notifications"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(sql)
    assert db.execute("SELECT COUNT(*) FROM notifications").fetchone()[0] == 1


def test_export_cli_writes_csv_and_json_for_a_time_range(settings, tmp_path):
    with TestClient(build_app(settings, follow_alerts=False)) as client:
        client.post("/alertmanager", json=webhook())
    env = {"FINSENT_RECEIVER__AUDIT_DB": str(settings.audit_db)}

    base = environ_without_finsent()
    out = tmp_path / "export.json"
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "finsent.cli",
            "receiver",
            "export",
            "--from",
            since,
            "--format",
            "json",
            "--out",
            str(out),
        ],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    assert len(rows) == 1 and rows[0]["alertname"] == "NegativeSentimentSurge"
    r = subprocess.run(
        [sys.executable, "-m", "finsent.cli", "receiver", "export", "--format", "csv"],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.splitlines()[0].startswith("seq,received_at")


def test_csv_export_neutralises_formula_injection():
    from finsent.alerts.export import to_csv

    row = {
        "seq": 1,
        "received_at": "2024-05-02T12:00:00+00:00",
        "status": "firing",
        "alertname": '=HYPERLINK("x")',
        "annotations": {"summary": "+cmd|' /C calc'!A0"},
        "evidence": [{"title": "@SUM(1+1) oil slumps", "url": None}, {"title": "-2 jobs", "url": None}],
    }
    import csv
    import io

    (parsed,) = list(csv.DictReader(io.StringIO(to_csv([row]))))
    assert parsed["alertname"].startswith("'=") and parsed["summary"].startswith("'+")
    assert parsed["evidence_titles"].startswith("'@") and parsed["seq"] == "1"


def test_embedded_prometheus_has_no_lifecycle_api(tmp_path):
    """--web.enable-lifecycle would let anyone on the host shut Prometheus down with one POST."""
    from finsent.local.services import prometheus_child
    from finsent.settings import load

    child, _ = prometheus_child(load(), tmp_path)
    assert not any("lifecycle" in a for a in child.argv)


def _a_long_audit_log(path, notifications: int) -> None:
    """An audit log of ``notifications`` rows (years of alerts), bulk-inserted: the receiver's cases fold all of
    them. The hash chain is not computed (not what this is about), so ``verify`` would name row 1."""
    from finsent.alerts.audit import AuditLog

    AuditLog(path).close()  # the schema
    db = sqlite3.connect(path)
    with db:
        db.executemany(
            "INSERT INTO notifications (dedup_key, received_at, receiver, status, alertname, fingerprint, starts_at,"
            " labels, annotations, evidence, dim, name, severity) VALUES (?,?,?,?,?,?,?,'{}','{}','[]','topic',?,"
            "'warning')",
            (
                (
                    f"bulk{i}",
                    "2026-01-01T00:00:00+00:00",
                    "compliance",
                    ("firing", "resolved")[i % 2],
                    "NegativeSentimentSurge",
                    f"fp{i // 2}",
                    "2026-01-01T00:00:00Z",
                    f"Topic {i // 2}",  # one surge key per alert: a case each
                )
                for i in range(notifications)
            ),
        )
    db.close()


def test_a_scrape_of_a_long_audit_log_does_not_hold_up_the_webhooks(tmp_path):
    """Prometheus scrapes the receiver's /metrics, whose case figures fold the whole audit log: seconds on a
    long log. Webhooks arriving meanwhile must not wait for it (neither for the event loop nor for the log's
    write lock): Alertmanager times out and retries a slow receiver, and compliance's record is late."""
    import threading
    import time

    import httpx

    _a_long_audit_log(tmp_path / "audit.sqlite", 200_000)
    with receiver_process(tmp_path) as url:
        scrapes: list[float] = []
        open_cases: list[float] = []
        done = threading.Event()

        def scrape() -> None:
            while not done.is_set():
                started = time.monotonic()
                text = httpx.get(f"{url}/metrics", timeout=60).text
                scrapes.append(time.monotonic() - started)
                line = next(x for x in text.splitlines() if x.startswith('finsent_receiver_cases{state="open"}'))
                open_cases.append(float(line.split()[-1]))

        scraper = threading.Thread(target=scrape, daemon=True)
        scraper.start()
        posts: list[float] = []
        deadline = time.monotonic() + 8
        i = 0
        while time.monotonic() < deadline or len(scrapes) < 2:
            i += 1
            alert = {**webhook()["alerts"][0], "fingerprint": f"live{i}", "labels": {"alertname": "WorkerDown"}}
            started = time.monotonic()
            r = httpx.post(f"{url}/alertmanager", json={**webhook(), "alerts": [alert]}, timeout=60)
            posts.append(time.monotonic() - started)
            assert r.status_code == 200 and r.json()["recorded"] == 1
            time.sleep(0.05)
        done.set()
        scraper.join(timeout=60)
    scrape_s = sorted(scrapes)[len(scrapes) // 2]
    print(
        f"\nscrape of 200,000 rows: median {scrape_s:.2f} s; {len(posts)} webhooks during them, slowest {max(posts):.3f} s"
    )
    assert open_cases and min(open_cases) >= 100_000  # every scrape folded the whole log
    assert scrape_s > 0.3, "premise: on this machine a scrape of this log is too quick to hold anything up"
    assert max(posts) < scrape_s / 2
