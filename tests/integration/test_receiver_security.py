"""Closed by default: what a browser, a rebinding DNS name or an exposed address cannot do, and a
tamper-evident log (``finsent receiver verify``). Real receiver processes, real sqlite3 edits."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys

import httpx
import pytest
from test_receiver import NOW, receiver_env, receiver_process, webhook

from finsent.alerts.audit import AuditLog, Notification


def count(url: str, **headers) -> int:
    return httpx.get(f"{url}/healthz", headers=headers, timeout=5).json()["notifications"]


def test_browser_requests_and_foreign_hosts_are_refused_and_record_nothing(tmp_path):
    with receiver_process(tmp_path, FINSENT_RECEIVER__EVIDENCE_WAIT_S="0") as url:
        port = url.rsplit(":", 1)[1]
        body = httpx.Request("POST", "/", json=webhook()).content
        refused = [
            # a cross-site <form enctype="text/plain"> or fetch without preflight
            httpx.post(f"{url}/alertmanager", content=body, headers={"Content-Type": "text/plain"}),
            httpx.post(
                f"{url}/alertmanager", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
            ),
            httpx.post(f"{url}/alertmanager", content=body),  # no Content-Type at all
            httpx.post(f"{url}/alertmanager", json=webhook(), headers={"Origin": "http://evil.example"}),
            httpx.post(f"{url}/alertmanager", json=webhook(), headers={"Origin": "null"}),
            httpx.post(f"{url}/alertmanager", json=webhook(), headers={"Sec-Fetch-Site": "cross-site"}),
            httpx.post(
                f"{url}/alertmanager", json=webhook(), headers={"Host": f"rebound.evil.example:{port}"}
            ),  # DNS rebinding
            httpx.get(f"{url}/alerts", headers={"Host": f"rebound.evil.example:{port}"}),
        ]
        assert [r.status_code for r in refused] == [415, 415, 415, 403, 403, 403, 403, 403]
        assert "application/json" in refused[0].json()["error"] and "Host" in refused[-1].json()["error"]
        assert count(url) == 0
        ok = [
            httpx.post(f"{url}/alertmanager", json=webhook(fingerprint="f1")),  # what Alertmanager sends
            httpx.post(
                f"{url}/alertmanager",
                content=httpx.Request("POST", "/", json=webhook(fingerprint="f2")).content,
                headers={"Content-Type": "application/json; charset=utf-8", "Host": f"localhost:{port}"},
            ),
            httpx.post(f"{url}/alertmanager", json=webhook(fingerprint="f3"), headers={"Origin": url}),  # same origin
        ]
        assert [r.status_code for r in ok] == [200, 200, 200] and count(url) == 3
        metrics = httpx.get(f"{url}/metrics").text
        assert 'finsent_receiver_rejected_total{reason="not_json"} 3.0' in metrics
        assert 'finsent_receiver_rejected_total{reason="bad_host"} 2.0' in metrics


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_the_receiver_will_not_start_on_a_non_loopback_address_without_a_write_token(tmp_path, host):
    env = receiver_env(tmp_path, FINSENT_SERVICES__HOST=host)
    r = subprocess.run(
        [sys.executable, "-m", "finsent.cli", "receiver"], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: refusing to serve the receiver on") and "FINSENT_RECEIVER__TOKEN" in line


def test_the_read_token_guards_the_listing_and_only_the_listing(tmp_path):
    with receiver_process(
        tmp_path,
        FINSENT_RECEIVER__EVIDENCE_WAIT_S="0",
        FINSENT_RECEIVER__TOKEN="w-token",
        FINSENT_RECEIVER__READ_TOKEN="r-token",
    ) as url:
        assert (
            httpx.post(f"{url}/alertmanager", json=webhook(), headers={"Authorization": "Bearer w-token"}).status_code
            == 200
        )
        assert httpx.get(f"{url}/alerts").status_code == 401
        assert httpx.get(f"{url}/alerts", headers={"Authorization": "Bearer w-token"}).status_code == 401
        r = httpx.get(f"{url}/alerts", headers={"Authorization": "Bearer r-token"})
        assert r.status_code == 200 and r.json()["count"] == 1
        assert (
            httpx.post(
                f"{url}/alertmanager", json=webhook(fingerprint="x"), headers={"Authorization": "Bearer r-token"}
            ).status_code
            == 401
        )  # reading is not writing
        assert httpx.get(f"{url}/healthz").status_code == 200 and httpx.get(f"{url}/metrics").status_code == 200


def fill(db, n: int, start: int = 0) -> None:
    audit = AuditLog(db)
    for i in range(start, start + n):
        audit.record(
            Notification(
                "compliance",
                "firing",
                "WorkerDown",
                f"fp{i}",
                "2026-11-22T12:00:00Z",
                None,
                {"alertname": "WorkerDown"},
                {"summary": f"down #{i}"},
            ),
            NOW,
            None,
        )
    audit.close()


def verify(db) -> subprocess.CompletedProcess:
    env = receiver_env(db.parent, FINSENT_RECEIVER__AUDIT_DB=str(db))
    return subprocess.run(
        [sys.executable, "-m", "finsent.cli", "receiver", "verify"], env=env, capture_output=True, text=True, timeout=60
    )


def tamper(db, *sql: str) -> None:
    """What someone with the file and sqlite3 can do: lift the append-only trigger and edit."""
    con = sqlite3.connect(db)
    con.executescript("DROP TRIGGER notifications_no_update; DROP TRIGGER notifications_no_delete; " + ";".join(sql))
    con.close()


def test_verify_passes_on_a_good_log_and_names_the_first_edited_or_removed_row(tmp_path):
    edited, removed, cut = tmp_path / "edited.sqlite", tmp_path / "removed.sqlite", tmp_path / "cut.sqlite"
    for db in (edited, removed, cut):
        fill(db, 5)
    good = verify(edited)
    assert good.returncode == 0 and good.stdout.startswith("OK: 5 rows, head ")
    tamper(edited, 'UPDATE notifications SET annotations = \'{"summary": "nothing to see"}\' WHERE seq = 3')
    bad = verify(edited)
    assert (
        bad.returncode == 1
        and bad.stdout.startswith("FAILED: row seq=3:")
        and "2 rows before it verified" in bad.stdout
    )
    tamper(removed, "DELETE FROM notifications WHERE seq = 2")  # a row taken out, the chain otherwise intact
    gone = verify(removed)
    assert gone.returncode == 1 and gone.stdout.startswith("FAILED: row seq=3: expected seq 2: rows were removed")
    tamper(cut, "DELETE FROM notifications WHERE seq = 5")  # the newest row taken out …
    fill(cut, 1, start=5)  # … and the receiver appends on top: the gap gives it away
    assert verify(cut).stdout.startswith("FAILED: row seq=6: expected seq 5")


def test_a_log_written_before_the_chain_is_chained_on_first_open_and_stays_append_only(tmp_path, caplog):
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.executescript(OLD_SCHEMA)
    for i in range(3):
        con.execute(
            "INSERT INTO notifications (dedup_key, received_at, receiver, status, alertname, fingerprint, starts_at,"
            " labels, annotations, evidence) VALUES (?, ?, 'compliance', 'firing', 'WorkerDown', ?, ?, '{}', '{}', '[]')",
            (f"k{i}", NOW.isoformat(), f"fp{i}", NOW.isoformat()),
        )
    con.commit()
    con.close()
    assert verify(db).returncode == 1 and "no hash chain" in verify(db).stderr
    with caplog.at_level(logging.INFO, logger="finsent.alerts.audit"):
        fill(db, 2)  # opens (migrates), then appends two rows
    (migrated,) = [r for r in caplog.records if "chained from its current rows" in r.getMessage()]
    assert migrated.rows_chained == 3
    assert verify(db).stdout.startswith("OK: 5 rows")
    con = sqlite3.connect(db)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE notifications SET status = 'resolved' WHERE seq = 1")
    assert [r[0] for r in con.execute("SELECT evidence_match FROM notifications")] == [None] * 5


# The schema of the audit log before evidence_match and row_hash (git history: alerts/audit.py).
OLD_SCHEMA = """
PRAGMA journal_mode=WAL;
CREATE TABLE notifications (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, dedup_key TEXT NOT NULL UNIQUE, received_at TEXT NOT NULL,
    receiver TEXT NOT NULL, status TEXT NOT NULL, alertname TEXT NOT NULL, fingerprint TEXT NOT NULL,
    starts_at TEXT NOT NULL, ends_at TEXT, severity TEXT, dim TEXT, name TEXT, labels TEXT NOT NULL,
    annotations TEXT NOT NULL, surge_alert_id TEXT, evidence TEXT NOT NULL
);
CREATE INDEX notifications_received ON notifications (received_at);
CREATE TRIGGER notifications_no_update BEFORE UPDATE ON notifications
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER notifications_no_delete BEFORE DELETE ON notifications
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE surges (
    alert_id TEXT NOT NULL, state TEXT NOT NULL, severity TEXT NOT NULL, key TEXT NOT NULL, window_end TEXT NOT NULL,
    received_at TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (alert_id, state, severity)
);
"""


def test_a_content_length_that_is_not_a_number_is_400_as_in_the_api(tmp_path):
    """Both services read Content-Length with the same kit (finsent.http): a malformed one is a bad request,
    never recorded. (ASGI level through TestClient: uvicorn's own parser refuses it before any app would.)"""
    from conftest import make_settings
    from starlette.testclient import TestClient

    from finsent.alerts.receiver import build_app

    settings = make_settings(tmp_path)
    with TestClient(build_app(settings, follow_alerts=False), base_url="http://127.0.0.1") as client:
        r = client.post(
            "/alertmanager",
            content=httpx.Request("POST", "/", json=webhook()).content,
            headers={"content-type": "application/json", "content-length": "12x"},
        )
        assert r.status_code == 400 and "Content-Length" in r.json()["error"]
        assert client.get("/healthz").json()["notifications"] == 0
        assert b'finsent_receiver_rejected_total{reason="bad_length"} 1.0' in client.get("/metrics").content


def test_hostile_strings_and_times_are_bad_input_never_a_500(tmp_path):
    """A lone surrogate escape is valid JSON but no UTF-8 (the log's hashing and storage) can hold it; a time that
    leaves datetime's range once moved to UTC raised OverflowError. Both are the sender's error: 4xx, counted,
    nothing recorded, the chain intact."""
    from conftest import make_settings
    from starlette.testclient import TestClient

    from finsent.alerts.audit import verify_chain
    from finsent.alerts.receiver import build_app

    settings = make_settings(tmp_path, receiver={"evidence_wait_s": 0})
    with TestClient(build_app(settings, follow_alerts=False), base_url="http://127.0.0.1") as client:
        body = json.dumps(webhook()).replace('"Energy | Oil"', '"\\ud800"', 1).encode()
        r = client.post("/alertmanager", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "surrogate" in r.json()["error"]
        hook = webhook()
        hook["alerts"][0]["startsAt"] = "0001-01-01T00:00:00+01:00"
        assert client.post("/alertmanager", json=hook).status_code == 200  # unparseable start: recorded, no evidence
        for query in ({"from": "0001-01-01T00:00:00+01:00"}, {"to": "9999-12-31T23:59:59-01:00"}):
            r = client.get("/alerts", params=query)
            assert r.status_code == 422 and "out of range" in r.json()["error"]
        assert client.get("/healthz").json()["notifications"] == 1
        assert b'finsent_receiver_rejected_total{reason="bad_json"} 1.0' in client.get("/metrics").content
    assert verify_chain(settings.audit_db).bad_seq is None
