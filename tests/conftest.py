"""Shared fixtures: real services on 127.0.0.1, each on a free port, one per test session.

No mocks here: the broker is the Tansu binary, Prometheus and Alertmanager are the Debian packages.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from finsent.alerts.embedded import alertmanager_child, prometheus_child, ready_check
from finsent.procs import Child, free_port, port_open
from finsent.settings import Settings, load
from finsent.stream.embedded_broker import broker_child

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_finsent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see default settings unless they set FINSENT_* themselves."""
    for key in list(os.environ):
        if key.startswith("FINSENT_"):
            monkeypatch.delenv(key)


def make_settings(tmp: Path, **overrides) -> Settings:
    """Settings with every port free and every path under ``tmp``."""
    base = {
        "broker": {"port": free_port()},
        "services": {
            "prometheus_port": free_port(),
            "alertmanager_port": free_port(),
            "scrape_interval_s": 1,
            "evaluation_interval_s": 1,
        },
        "paths": {"state_dir": str(tmp / "state"), "archive_dir": str(tmp / "state" / "archive")},
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return load(**base)


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def broker(session_tmp: Path) -> Iterator[str]:
    """A Tansu broker for the whole session; yields its bootstrap address."""
    port = free_port()
    child: Child = broker_child("127.0.0.1", port, session_tmp / "logs")
    child.start(lambda: port_open("127.0.0.1", port), timeout=15)
    yield f"127.0.0.1:{port}"
    child.stop()


@pytest.fixture(scope="session")
def services_settings(session_tmp: Path) -> Settings:
    return make_settings(session_tmp)


@pytest.fixture(scope="session")
def alertmanager(services_settings: Settings) -> Iterator[str]:
    child, url = alertmanager_child(services_settings, services_settings.paths.state_dir)
    child.start(ready_check(url), timeout=30)
    yield url
    child.stop()


@pytest.fixture(scope="session")
def prometheus(services_settings: Settings, alertmanager: str) -> Iterator[str]:
    child, url = prometheus_child(services_settings, services_settings.paths.state_dir)
    child.start(ready_check(url), timeout=30)
    yield url
    child.stop()
