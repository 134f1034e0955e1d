"""Embedded Prometheus and Alertmanager (Debian packages) on 127.0.0.1 with finsent's config.

Prometheus discovers finsent's own endpoints through ``file_sd`` target files in its state
directory, so each stage the demo starts registers its /metrics by writing one small JSON file and
Prometheus needs no restart.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from finsent.alerts.config import ALERTMANAGER_CONFIG, RULES_DIR, render_alertmanager_config
from finsent.errors import MissingBinary
from finsent.files import replace_text
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


def prometheus_config(settings: Settings, targets_dir: Path) -> dict:
    s = settings.services
    return {
        "global": {
            "scrape_interval": f"{s.scrape_interval_s:g}s",
            "evaluation_interval": f"{s.evaluation_interval_s:g}s",
        },
        "rule_files": [str(RULES_DIR / "*.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"{s.host}:{s.alertmanager_port}"]}]}]},
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [f"{s.host}:{s.prometheus_port}"]}]},
            {"job_name": "alertmanager", "static_configs": [{"targets": [f"{s.host}:{s.alertmanager_port}"]}]},
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
    config.write_text(yaml.safe_dump(prometheus_config(settings, targets), sort_keys=False))
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
    url = f"http://{s.host}:{s.alertmanager_port}"
    argv = [
        _binary(s.alertmanager_bin),
        f"--config.file={config}",
        f"--storage.path={home}",
        f"--web.listen-address={s.host}:{s.alertmanager_port}",
        f"--web.external-url={url}",
        "--cluster.listen-address=",  # single instance: no gossip port
    ]
    return Child("alertmanager", argv, state_dir / "logs" / "alertmanager.log"), url


def ready_check(url: str):
    return http_ok(f"{url}/-/ready")
