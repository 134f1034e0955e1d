"""The receiver's body limit is ``receiver.max_body_bytes`` on every route, the case actions' too, enforced by the
HTTP kit's BodyLimit as in the web API: declared lengths checked before routing, bytes counted as they arrive.
Case actions once had a hard-coded 16 KiB limit and no declared-length check. The receiver app in-process
(TestClient, raw ASGI: uvicorn's own parser would refuse a malformed Content-Length before any app)."""

from __future__ import annotations

import json

from conftest import make_settings
from starlette.testclient import TestClient
from test_receiver_cases import act, fire, rows

from finsent.alerts.receiver import build_app

JSON = {"content-type": "application/json"}


def receiver(tmp_path, max_body_bytes: int):
    settings = make_settings(
        tmp_path,
        kafka={"bootstrap": "127.0.0.1:1"},
        receiver={"evidence_wait_s": 0, "allowed_hosts": ["testserver"], "max_body_bytes": max_body_bytes},
    )
    return TestClient(build_app(settings, follow_alerts=False)), settings


def test_a_valid_note_over_16_kib_of_json_is_recorded_under_the_receivers_limit(tmp_path):
    """4,000 characters is a valid note; escaped as JSON (``\\u20ac``, 6 bytes each) it is 24 KB, which the old
    hard-coded 16 KiB limit refused (413) although receiver.max_body_bytes is 1 MiB."""
    client, settings = receiver(tmp_path, 1024 * 1024)
    with client:
        fire(client)
        case_id = client.get("/cases").json()["cases"][0]["case_id"]
        body = json.dumps({"who": "alice", "note": "\u20ac" * 4000}, ensure_ascii=True).encode()
        assert len(body) > 16 * 1024
        r = client.post(f"/cases/{case_id}/note", content=body, headers=JSON)
        assert r.status_code == 200, r.text
    assert rows(settings)[-1][2:6] == ("note", "alice", None, "\u20ac" * 4000)


def test_a_case_action_over_the_setting_is_413_before_it_is_read_and_records_nothing(tmp_path):
    client, settings = receiver(tmp_path, 2048)
    with client:
        fire(client)
        case_id = client.get("/cases").json()["cases"][0]["case_id"]
        n = len(rows(settings))
        r = act(client, case_id, "note", note="x" * 3000)  # under 16 KiB, over receiver.max_body_bytes
        assert r.status_code == 413 and r.headers["connection"] == "close" and "2048 bytes" in r.json()["error"]
        assert b'finsent_receiver_rejected_total{reason="too_large"} 1.0' in client.get("/metrics").content
        assert act(client, case_id, "note", note="x" * 1000).status_code == 200
    assert len(rows(settings)) == n + 1


def test_a_malformed_content_length_on_a_case_action_is_400_not_a_lookup(tmp_path):
    """Was 404 (the case was looked up, the header never read)."""
    client, _ = receiver(tmp_path, 1024 * 1024)
    with client:
        r = client.post("/cases/1/note", content=b'{"who": "alice"}', headers={**JSON, "content-length": "16x"})
        assert r.status_code == 400 and "Content-Length" in r.json()["error"], r.text
        assert b'finsent_receiver_rejected_total{reason="bad_length"} 1.0' in client.get("/metrics").content
