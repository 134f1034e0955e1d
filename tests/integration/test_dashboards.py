"""Grafana as code. Grafana cannot be installed here, so: the JSON must match its generator, every panel's
PromQL must return series from a real Prometheus scraping a real worker (``tests/panels.py``, run by the demo
test on its live stack), and ``finsent grafana publish`` is tested against a local HTTP server that
stands in for Grafana's API and checks the request shape."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import environ_without_finsent
from factories import surge_alert

from finsent.alerts.audit import AuditLog, Notification
from finsent.alerts.grafana.build import DASHBOARDS_DIR, dashboards, render
from finsent.records import Evidence


def test_committed_dashboards_match_their_generator(tmp_path):
    fresh = {p.name: p.read_text() for p in render(tmp_path)}
    committed = {p.name: p.read_text() for p in DASHBOARDS_DIR.glob("*.json")}
    assert fresh == committed, "run `finsent grafana build` and commit alerts/grafana/dashboards/"
    for d in dashboards():
        doc = d.to_json()
        assert all(t["datasource"]["uid"] == "finsent-prometheus" for p in doc["panels"] for t in p["targets"])
        boxes = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in doc["panels"]]
        assert len(set(boxes)) == len(boxes) and all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in doc["panels"])


class FakeGrafana(BaseHTTPRequestHandler):
    """Stands in for Grafana's HTTP API (Grafana is not installable here): records what the client sends."""

    requests: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeGrafana.requests.append((self.path, self.headers.get("Authorization"), body))
        if self.path == "/api/dashboards/db":
            reply = {"status": "success", "uid": body["dashboard"]["uid"], "version": 1, "id": 1}
        elif self.path == "/api/annotations":
            reply = {"id": len(FakeGrafana.requests), "message": "Annotation added"}
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def fake_grafana():
    """A ``FakeGrafana`` server on 127.0.0.1 for the block; yields its URL."""
    FakeGrafana.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGrafana)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def grafana_publish(url: str, audit_db, token: str | None = "glsa_test", timeout: float = 60):
    """``finsent grafana publish --url URL`` reading ``audit_db``, with only the FINSENT_* variables given here."""
    env = environ_without_finsent()
    env["FINSENT_RECEIVER__AUDIT_DB"] = str(audit_db)
    if token:
        env["FINSENT_GRAFANA__TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "finsent.cli", "grafana", "publish", "--url", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_publish_uploads_dashboards_and_surge_annotations_with_the_token(tmp_path):
    db = tmp_path / "audit.sqlite"
    audit = AuditLog(db)
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    ev = (
        Evidence(
            item_id="e1", title="Oil plunges as supply glut deepens", source="oil-desk", published=now, p_negative=0.95
        ),
    )
    surge = surge_alert(
        "topic:Energy | Oil",
        at=now,
        count=40,
        negative=30,
        alert_id="topic:Energy | Oil|x",
        window_end=now,
        raised_at=now,
        evidence=ev,
    )
    labels = {"alertname": "NegativeSentimentSurge", "dim": "topic", "name": "Energy | Oil", "severity": "warning"}
    for status, ends in (("firing", None), ("resolved", "2026-11-22T12:10:00Z")):
        audit.record(
            Notification(
                "compliance", status, "NegativeSentimentSurge", "fp1", "2026-11-22T12:00:00Z", ends, labels, {}
            ),
            now,
            surge,
        )
    audit.close()

    with fake_grafana() as url:
        r = grafana_publish(url, db)
        assert r.returncode == 0, r.stderr
        no_token = grafana_publish(url, db, token=None)
        assert no_token.returncode == 2 and "FINSENT_GRAFANA__TOKEN" in no_token.stderr
    boards = [b for path, _, b in FakeGrafana.requests if path == "/api/dashboards/db"]
    notes = [b for path, _, b in FakeGrafana.requests if path == "/api/annotations"]
    assert {auth for _, auth, _ in FakeGrafana.requests} == {"Bearer glsa_test"}
    assert sorted(b["dashboard"]["uid"] for b in boards) == ["finsent-overview", "finsent-pipeline", "finsent-ticker"]
    assert all(b["overwrite"] is True and b["dashboard"]["id"] is None and b["dashboard"]["panels"] for b in boards)
    (note,) = notes
    assert note["time"] == int(now.timestamp() * 1000) and note["timeEnd"] == note["time"] + 600_000
    assert {"finsent", "surge", "topic:Energy | Oil"} <= set(note["tags"]) and "Oil plunges" in note["text"]


def test_surge_annotations_escape_headlines_and_leave_out_a_row_whose_time_is_not_a_time(caplog):
    """The receiver records a notification whatever its startsAt says (the alert matters more than its time): one
    that was not a time stopped every later `finsent grafana publish` with a traceback, and headlines went into
    the annotation's HTML as they were."""
    from finsent.alerts.grafana.publish import surge_annotations

    def row(fingerprint, starts_at, title):
        return {
            "alertname": "NegativeSentimentSurge",
            "dim": "ticker",
            "name": "XOM",
            "fingerprint": fingerprint,
            "starts_at": starts_at,
            "ends_at": None,
            "status": "firing",
            "severity": "warning",
            "evidence": [{"title": title}],
        }

    got = surge_annotations(
        [row("a", "2026-11-22T12:00:30Z", "Exxon <img src=x onerror=alert(1)> slides"), row("b", "not a time", "x")]
    )
    assert len(got) == 1 and "<img" not in got[0]["text"] and "&lt;img src=x" in got[0]["text"]
    assert any("not a time left out" in r.getMessage() for r in caplog.records)
