"""The real Prometheus scrapes a real /metrics endpoint registered the way finsent stages register;
the real Alertmanager accepts and lists an alert."""

import time
from datetime import UTC, datetime, timedelta

import httpx
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from finsent.local.services import register_target
from finsent.net import free_port


def _query(prometheus: str, promql: str) -> list[dict]:
    return httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5).json()["data"]["result"]


def test_prometheus_scrapes_a_registered_target(prometheus, services_settings):
    registry = CollectorRegistry()
    Gauge("finsent_probe_value", "test gauge", registry=registry).set(42)
    port = free_port()
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        register_target(services_settings.paths.state_dir, "probe", f"127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        result: list[dict] = []
        while time.monotonic() < deadline and not result:
            result = _query(prometheus, 'finsent_probe_value{job="probe"}')
            time.sleep(0.5)
        assert result and float(result[0]["value"][1]) == 42.0
    finally:
        server.shutdown()


def test_alertmanager_accepts_and_lists_alerts(alertmanager):
    now = datetime.now(UTC)
    alert = {
        "labels": {"alertname": "FinsentProbe", "severity": "warning"},
        "annotations": {"summary": "probe"},
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(minutes=5)).isoformat(),
    }
    assert httpx.post(f"{alertmanager}/api/v2/alerts", json=[alert], timeout=5).status_code == 200
    listed = httpx.get(f"{alertmanager}/api/v2/alerts", params={"filter": 'alertname="FinsentProbe"'}, timeout=5).json()
    assert [a["labels"]["alertname"] for a in listed] == ["FinsentProbe"]


def test_alertmanager_refuses_alerts_and_silences_without_its_password_even_from_a_page(alertmanager, prometheus):
    """Its API answers a browser's preflight from any origin: without a password any page the analyst opens could
    silence every surge. Prometheus, which has the password, still reaches it."""
    from urllib.parse import urlsplit

    parts = urlsplit(alertmanager)
    bare = f"{parts.scheme}://{parts.hostname}:{parts.port}"
    silence = {
        "matchers": [{"name": "alertname", "value": ".+", "isRegex": True}],
        "startsAt": datetime.now(UTC).isoformat(),
        "endsAt": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        "createdBy": "evil.example",
        "comment": "shh",
    }
    page = {"Origin": "http://evil.example"}
    assert httpx.post(f"{bare}/api/v2/silences", json=silence, headers=page, timeout=5).status_code == 401
    assert httpx.post(f"{bare}/api/v2/alerts", json=[], timeout=5).status_code == 401
    assert httpx.get(f"{alertmanager}/api/v2/silences", timeout=5).json() == []  # nothing got through
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        targets = httpx.get(f"{prometheus}/api/v1/targets", params={"state": "active"}, timeout=5).json()
        health = [t["health"] for t in targets["data"]["activeTargets"] if t["labels"]["job"] == "alertmanager"]
        if health == ["up"]:
            break
        time.sleep(0.5)
    assert health == ["up"]  # Prometheus scrapes it with the password
    ams = httpx.get(f"{prometheus}/api/v1/alertmanagers", timeout=5).json()["data"]["activeAlertmanagers"]
    assert [a["url"].startswith(bare) for a in ams] == [True]


def test_shipped_alertmanager_config_is_valid():
    import subprocess

    from finsent.local.services import ALERTMANAGER_CONFIG

    proc = subprocess.run(["amtool", "check-config", str(ALERTMANAGER_CONFIG)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_target_files_are_absolute_even_with_a_relative_state_dir(tmp_path, monkeypatch):
    """Prometheus resolves relative file_sd paths against its config file's folder, not our cwd: the default
    state dir (.state, relative) once left the demo's ingest/worker/receiver unscraped."""
    from pathlib import Path

    from finsent.local.services import prometheus_config
    from finsent.settings import load

    monkeypatch.chdir(tmp_path)
    cfg = prometheus_config(load(), Path(".state/prometheus/targets"), Path(".state/alertmanager/password"))
    (files,) = [c["file_sd_configs"][0]["files"] for c in cfg["scrape_configs"] if "file_sd_configs" in c]
    assert Path(files[0]).is_absolute() and files[0].startswith(str(tmp_path))
    (am,) = cfg["alerting"]["alertmanagers"]
    assert Path(am["basic_auth"]["password_file"]).is_absolute()
    assert all(Path(f).is_absolute() for f in cfg["rule_files"])


def test_the_alertmanager_password_file_is_private_and_never_empty(tmp_path):
    """An empty file (a full disk mid-write) would be the password ""; a file left readable by others (made
    before, or by hand) would show it to every user of the host."""
    from finsent.local.services import alertmanager_auth, alertmanager_password_file
    from finsent.settings import load

    settings = load()
    path = tmp_path / "alertmanager" / "password"
    path.parent.mkdir()
    path.write_text("")
    path.chmod(0o644)
    user, password = alertmanager_auth(settings, tmp_path)
    assert user == "finsent" and len(password) >= 20
    assert path.stat().st_mode & 0o777 == 0o600
    assert (
        alertmanager_password_file(settings, tmp_path) == path and alertmanager_auth(settings, tmp_path)[1] == password
    )
