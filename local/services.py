"""Embedded Prometheus and Alertmanager (Debian packages) on 127.0.0.1 with finsent's config.

Prometheus discovers finsent's own endpoints through ``file_sd`` target files in its state
directory, so each stage the demo starts registers its /metrics by writing one small JSON file and
Prometheus needs no restart.

Alertmanager asks for a password (basic auth, user ``finsent``): its API takes new alerts and silences from
anyone who reaches it and answers a browser's preflight from any origin (``Access-Control-Allow-Origin: *``),
so without one any web page the analyst opens could silence every surge before compliance sees it, or file
false ones. Prometheus, which sends it the alerts and scrapes it, reads the password from a 0600 file.
Prometheus itself takes no writes (no admin API, no lifecycle endpoint).
"""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

import yaml

from finsent.alerts.config import (
    ALERTMANAGER_CONFIG,
    ALERTMANAGER_USER,
    RULES_DIR,
    WEB_CONFIG,
    render_alertmanager_config,
    write_web_config,
)
from finsent.errors import MissingBinary
from finsent.files import replace_text, write_private
from finsent.local.procs import Child, http_ok
from finsent.settings import Settings


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MissingBinary(
            f"{name!r} not found on PATH; install the Debian packages prometheus and "
            "prometheus-alertmanager (make system-deps)"
        )
    return path


def alertmanager_auth(settings: Settings, state_dir: Path) -> tuple[str, str]:
    """(user, password) of the embedded Alertmanager: ``FINSENT_SERVICES__ALERTMANAGER_PASSWORD``, else the one made
    for this state dir on first use (kept, so a browser's saved login goes on working)."""
    path = alertmanager_password_file(settings, state_dir)
    return ALERTMANAGER_USER, path.read_text(encoding="utf-8").strip()


def alertmanager_password_file(settings: Settings, state_dir: Path) -> Path:
    """The 0600 file Prometheus reads the password from (``password_file``), written when missing or stale."""
    path = state_dir / "alertmanager" / "password"
    given = settings.services.alertmanager_password
    wanted = given.get_secret_value() if given is not None else None
    current = path.read_text(encoding="utf-8").strip() if path.exists() else None
    if not current or (wanted is not None and current != wanted):  # an empty file (a full disk) is no password
        write_private(path, (wanted or secrets.token_urlsafe(24)) + "\n")
    path.chmod(0o600)  # an older, wider file is narrowed even when its password is kept
    return path


def prometheus_config(settings: Settings, targets_dir: Path, am_password_file: Path) -> dict:
    s = settings.services
    am_auth = {"basic_auth": {"username": ALERTMANAGER_USER, "password_file": str(am_password_file.resolve())}}
    return {
        "global": {
            "scrape_interval": f"{s.scrape_interval_s:g}s",
            "evaluation_interval": f"{s.evaluation_interval_s:g}s",
        },
        "rule_files": [str(RULES_DIR / "*.yml")],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"{s.host}:{s.alertmanager_port}"]}], **am_auth}]
        },
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [f"{s.host}:{s.prometheus_port}"]}]},
            {
                "job_name": "alertmanager",
                "static_configs": [{"targets": [f"{s.host}:{s.alertmanager_port}"]}],
                **am_auth,
            },
            {
                "job_name": "finsent",
                "file_sd_configs": [{"files": [str(targets_dir.resolve() / "*.json")], "refresh_interval": "5s"}],
            },
        ],
    }


def register_target(state_dir: Path, job: str, address: str) -> Path:
    """Tell the embedded Prometheus to scrape ``address`` (host:port serving /metrics) as ``job``."""
    path = state_dir / "prometheus" / "targets" / f"{job}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return replace_text(path, json.dumps([{"targets": [address], "labels": {"job": job}}]))


def prometheus_child(settings: Settings, state_dir: Path) -> tuple[Child, str]:
    s = settings.services
    home = state_dir / "prometheus"
    targets = home / "targets"
    targets.mkdir(parents=True, exist_ok=True)
    config = home / "prometheus.yml"
    am_password = alertmanager_password_file(settings, state_dir)
    config.write_text(yaml.safe_dump(prometheus_config(settings, targets, am_password), sort_keys=False))
    url = f"http://{s.host}:{s.prometheus_port}"
    argv = [
        _binary(s.prometheus_bin),
        f"--config.file={config}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address={s.host}:{s.prometheus_port}",
        f"--web.external-url={url}",
        # No --web.enable-lifecycle: it lets anyone on the host shut Prometheus down; finsent stops it by signal.
        "--storage.tsdb.retention.time=2d",
    ]
    return Child("prometheus", argv, state_dir / "logs" / "prometheus.log"), url


def alertmanager_child(settings: Settings, state_dir: Path, config: Path = ALERTMANAGER_CONFIG) -> tuple[Child, str]:
    s = settings.services
    home = state_dir / "alertmanager"
    home.mkdir(parents=True, exist_ok=True)
    config = render_alertmanager_config(settings, home, config)
    user, password = alertmanager_auth(settings, state_dir)
    web_config = write_web_config(home / WEB_CONFIG, password, user)
    url = f"http://{s.host}:{s.alertmanager_port}"
    argv = [
        _binary(s.alertmanager_bin),
        f"--config.file={config}",
        f"--web.config.file={web_config}",
        f"--storage.path={home}",
        f"--web.listen-address={s.host}:{s.alertmanager_port}",
        f"--web.external-url={url}",
        "--cluster.listen-address=",  # single instance: no gossip port
    ]
    return Child("alertmanager", argv, state_dir / "logs" / "alertmanager.log"), url


def ready_check(url: str, auth: tuple[str, str] | None = None):
    return http_ok(f"{url}/-/ready", auth)
