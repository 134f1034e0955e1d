"""Nothing stops at the 10,000 oldest rows: GET /alerts pages (and says so), export and ``grafana publish``
stream the whole log. Real receiver process, real CLI, a local HTTP server standing in for Grafana."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import tracemalloc
from datetime import UTC, datetime

import httpx
import pytest
from test_dashboards import FakeGrafana, fake_grafana, grafana_publish
from test_receiver import NOW, receiver_env, receiver_process, surge

from finsent.alerts.audit import AuditLog, Notification
from finsent.alerts.export import export

ROWS = 25_000
SURGES = 3  # the newest rows: a reader stopping at 10,000 rows never sees them


def notification(i: int, alertname: str = "WorkerDown", status: str = "firing") -> Notification:
    labels = {"alertname": alertname, "severity": "warning"}
    if alertname == "NegativeSentimentSurge":
        labels |= {"dim": "topic", "name": f"Topic {i}"}
    return Notification(
        "compliance",
        status,
        alertname,
        f"fp{i}",
        f"2026-11-22T12:{i % 60:02d}:00Z",
        None,
        labels,
        {"summary": f"row {i}", "description": "The worker is not scraped. " * 36},
    )  # ~1 KB a row


def fill(audit: AuditLog, start: int, n: int, alertname: str = "WorkerDown", status: str = "firing") -> None:
    for i in range(start, start + n):
        audit.record(
            notification(i, alertname, status), NOW, surge(f"topic:Topic {i}") if alertname != "WorkerDown" else None
        )


@pytest.fixture(scope="module")
def big_log(tmp_path_factory):
    """25,000 rows of ~1 KB, the last 3 of them surges with evidence."""
    db = tmp_path_factory.mktemp("big") / "audit.sqlite"
    audit = AuditLog(db)
    audit._db.execute("PRAGMA synchronous=OFF")  # test data only: 25k fsyncs would take minutes
    fill(audit, 0, ROWS - SURGES)
    fill(audit, ROWS - SURGES, SURGES, "NegativeSentimentSurge")
    audit.close()
    return db


def test_the_listing_pages_with_a_cursor_and_says_when_it_is_truncated(tmp_path):
    audit = AuditLog(tmp_path / "audit.sqlite")
    fill(audit, 0, 12)
    fill(audit, 12, 2, status="resolved")
    audit.close()
    with receiver_process(tmp_path, FINSENT_RECEIVER__PAGE_LIMIT="5") as url:
        pages, link = [], "/alerts?status=firing"
        while link and len(pages) < 10:  # a cursor that does not advance must fail here, not hang
            r = httpx.get(url + link, timeout=5)
            body = r.json()
            pages.append(body)
            assert body["truncated"] == (body["next"] is not None) == ("link" in r.headers)
            if body["next"]:
                assert r.headers["link"] == f'<{body["next"]}>; rel="next"'
            link = body["next"]
        assert [p["count"] for p in pages] == [5, 5, 2]
        assert [n["seq"] for p in pages for n in p["notifications"]] == list(range(1, 13))  # all firing, in order
        first = httpx.get(f"{url}/alerts", timeout=5).json()
        assert first["count"] == 5 and first["truncated"] is True
        small = httpx.get(f"{url}/alerts", params={"limit": 2, "after": 12}, timeout=5).json()
        assert [n["status"] for n in small["notifications"]] == ["resolved", "resolved"] and small["truncated"] is False
        csv_page = httpx.get(f"{url}/alerts", params={"format": "csv", "limit": 3}, timeout=5)
        assert csv_page.headers["x-truncated"] == "true" and "after=3" in csv_page.headers["link"]
        assert len(list(csv.DictReader(io.StringIO(csv_page.text)))) == 3
        bad = [
            httpx.get(f"{url}/alerts", params=p, timeout=5).status_code
            for p in ({"limit": 6}, {"limit": 0}, {"after": "x"})
        ]
        assert bad == [422, 422, 422]


def test_export_streams_every_row_of_a_25k_log_as_json_and_csv(big_log, tmp_path):
    env = receiver_env(tmp_path, FINSENT_RECEIVER__AUDIT_DB=str(big_log))
    out = tmp_path / "export.json"
    r = subprocess.run(
        [sys.executable, "-m", "finsent.cli", "receiver", "export", "--format", "json", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())
    assert len(rows) == ROWS and [x["seq"] for x in rows[:3]] == [1, 2, 3] and rows[-1]["seq"] == ROWS
    assert rows[-1]["alertname"] == "NegativeSentimentSurge" and rows[-1]["evidence"][0]["title"].startswith(
        "Oil plunges"
    )
    assert f"{ROWS} rows (notifications and case actions) written" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "finsent.cli", "receiver", "export", "--format", "csv"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    parsed = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(parsed) == ROWS and parsed[-1]["seq"] == str(ROWS) and parsed[-1]["summary"] == f"row {ROWS - 1}"


def test_export_memory_does_not_grow_with_the_log(big_log, tmp_path):
    """Streamed from a cursor: the peak is a batch of rows, not the 25 MB log."""
    audit = AuditLog(big_log)
    try:
        for fmt in ("json", "csv"):
            with (tmp_path / f"out.{fmt}").open("w") as fh:
                tracemalloc.start()
                n = export(audit.iter_rows(), fh, fmt)
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
            size = (tmp_path / f"out.{fmt}").stat().st_size
            assert n == ROWS and peak < 5_000_000, (fmt, size, peak)
            assert (
                fmt == "csv" or size > 25_000_000
            )  # the JSON export has every column: 5x the peak, and more as the log grows
        small = list(audit.iter_rows(batch=7))[:20]
        text = io.StringIO()
        export(small, text, "json")
        assert text.getvalue() == json.dumps(small, indent=2)  # the JSON export reads as it always did
    finally:
        audit.close()


def test_grafana_publish_annotates_surges_beyond_the_first_10000_rows(big_log):
    with fake_grafana() as url:
        r = grafana_publish(url, big_log, timeout=300)
        assert r.returncode == 0, r.stderr
    notes = [b for path, _, b in FakeGrafana.requests if path == "/api/annotations"]
    assert len(notes) == SURGES and f"{SURGES} surge annotations" in r.stderr
    assert [n["tags"][2] for n in notes] == [f"topic:Topic {i}" for i in range(ROWS - SURGES, ROWS)]
    assert datetime.fromtimestamp(notes[-1]["time"] / 1000, UTC).minute == (ROWS - 1) % 60
