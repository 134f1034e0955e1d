"""``finsent demo``: the whole embedded stack on 127.0.0.1, for a new user's first five minutes.

Stages are started in dependency order (broker → Prometheus → Alertmanager → …) and stopped in
reverse. The worker is crash-only: if it exits (a bug, a broker that lost its log) it is started again.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from finsent.local.broker import start_broker
from finsent.local.feeds import DEMO_FEEDS
from finsent.local.procs import Child, Supervisor, http_ok, state_dir
from finsent.local.runtime import wait_for_signal, write_state
from finsent.local.services import (
    alertmanager_auth,
    alertmanager_child,
    alertmanager_password_file,
    prometheus_child,
    ready_check,
    register_target,
)
from finsent.net import port_open
from finsent.settings import Settings

log = logging.getLogger("finsent.local.demo")


def finsent_child(
    name: str,
    args: list[str],
    logs: Path,
    *,
    restart: bool = False,
    config: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Child:
    """A finsent command as a child process, sharing this process's settings: its environment and the settings
    file ``config`` (the demo's ``--config``), handed on as FINSENT_CONFIG, which every command reads. Without
    it the stages ran on the defaults while the demo itself used the file. ``env``: more variables, applied last."""
    settings_file = {"FINSENT_CONFIG": str(Path(config).resolve())} if config is not None else {}
    child_env = {**os.environ, "FINSENT_LOG_JSON": "1", **settings_file, **(env or {})}
    return Child(
        name, [sys.executable, "-m", "finsent.cli", *args], logs / f"{name}.log", env=child_env, restart=restart
    )


# The demo compresses time so a new user sees windows close and the scripted burst raise a surge within
# minutes: 10 s buckets, the detector on 60 s windows, a short warm-up. Set any FINSENT_WINDOWS__*/
# FINSENT_SURGE__* variable to override; production defaults are 60 s buckets and 5 min windows.
DEMO_STREAM_ENV = {
    "FINSENT_WINDOWS__BUCKET_SECONDS": "10",
    "FINSENT_WINDOWS__ROLLING_SECONDS": "[30, 60, 300]",
    "FINSENT_WINDOWS__WATERMARK_DELAY_S": "20",
    "FINSENT_WINDOWS__IDLE_CLOSE_S": "5",
    "FINSENT_SURGE__WINDOW_S": "60",
    "FINSENT_SURGE__WARMUP_WINDOWS": "5",
    "FINSENT_SURGE__COOLDOWN_S": "300",
}


def demo_stream_env() -> dict[str, str]:
    """The demo's time scale, unless the user set windows/surge settings themselves (they go together)."""
    if any(k.startswith(("FINSENT_WINDOWS__", "FINSENT_SURGE__")) for k in os.environ):
        return {}
    return dict(DEMO_STREAM_ENV)


def demo_feed_list(path: Path, feeds_url: str, interval: float = 10.0) -> Path:
    """The demo's feed list: the local feeds, polled often so the demo moves."""
    lines = []
    for name in DEMO_FEEDS:
        lines += ["[[feeds]]", f'name = "{name}"', f'url = "{feeds_url}/feeds/{name}"', f"interval = {interval}"]
        if name == "oil-desk":
            lines.append('tickers = ["USO"]')
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


DEMO_RUNS_KEPT = 3


def demo_dedup_path(state: Path, keep: int = DEMO_RUNS_KEPT) -> Path:
    """A fresh dedup store for this demo run (the last ``keep`` runs' stores are kept, older ones removed).

    The demo feeds serve the same shipped sample on every run: with one dedup memory a second ``make demo``
    would publish nothing new and show an empty dashboard. A store per run keeps every run's story whole
    without touching the store real feeds use (``<state_dir>/ingest/dedup.sqlite``)."""
    runs = state / "demo-runs"
    runs.mkdir(parents=True, exist_ok=True)
    old = sorted(p for p in runs.iterdir() if p.is_dir())
    for stale in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(stale, ignore_errors=True)
    run_dir = runs / datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    run_dir.mkdir()
    return run_dir / "dedup.sqlite"


def run(settings: Settings, config: Path | None = None) -> int:
    """The demo on ``settings``; ``config``: the settings file they were loaded from (``--config``), which every
    stage process loads too."""
    state = state_dir(settings)
    logs = state / "logs"
    supervisor = Supervisor()
    urls: dict[str, str] = {}
    try:
        broker, report = start_broker(settings, logs)
        supervisor.children.append(broker)
        urls["kafka"] = f"{settings.broker.host}:{settings.broker.port}"
        host, timeout = settings.services.host, settings.services.start_timeout_s
        kafka = {"FINSENT_KAFKA__BOOTSTRAP": urls["kafka"]}
        am, am_url = alertmanager_child(settings, state)
        prom, prom_url = prometheus_child(settings, state)
        feeds_url = f"http://{host}:{settings.ingest.demo_feeds_port}"
        feeds = finsent_child(
            "feeds", ["ingest", "demo-feeds", "--port", str(settings.ingest.demo_feeds_port)], logs, config=config
        )
        receiver_url = f"http://{host}:{settings.receiver.port}"
        receiver = finsent_child("receiver", ["receiver"], logs, restart=True, config=config, env=kafka)
        stream_env = {**kafka, **demo_stream_env()}
        worker = finsent_child("worker", ["worker"], logs, restart=True, config=config, env=stream_env)
        api_url = f"http://{host}:{settings.web.port}"
        # the dashboard charts the detector's window width
        api = finsent_child("api", ["serve"], logs, restart=True, config=config, env=stream_env)
        # Everything but ingest needs only the broker: start them side by side (the worker and the API
        # load the model meanwhile). Ingest comes last, so the first headlines meet a consuming worker.
        supervisor.start_together(
            (am, ready_check(am_url, alertmanager_auth(settings, state)), timeout),
            (prom, ready_check(prom_url), timeout),
            (feeds, http_ok(f"{feeds_url}/healthz"), timeout),
            (receiver, http_ok(f"{receiver_url}/healthz"), timeout),
            (worker, http_ok(f"http://{host}:{settings.stream.metrics_port}/metrics"), 120),
            (api, http_ok(f"{api_url}/readyz"), 120),
        )
        urls["alertmanager"], urls["prometheus"] = am_url, prom_url
        urls["feeds"] = f"{feeds_url}/feeds/"
        feed_list = demo_feed_list(state / "demo-feeds.toml", feeds_url)
        ingest = finsent_child(
            "ingest",
            ["ingest", "--feeds", str(feed_list)],
            logs,
            config=config,
            env={
                **kafka,
                "FINSENT_ALLOW_PRIVATE_FEEDS": "1",
                "FINSENT_INGEST__DEDUP_PATH": str(demo_dedup_path(state)),
            },
        )
        supervisor.start(ingest, lambda: port_open(host, settings.ingest.metrics_port), timeout)
        urls["ingest metrics"] = f"http://{host}:{settings.ingest.metrics_port}/metrics"
        urls["receiver"] = f"{receiver_url}/alerts"
        urls["worker metrics"] = f"http://{host}:{settings.stream.metrics_port}/metrics"
        urls["api"] = f"{api_url}/openapi.json"
        urls["dashboard"] = f"{api_url}/"
        for name, port in (
            ("ingest", settings.ingest.metrics_port),
            ("receiver", settings.receiver.port),
            ("worker", settings.stream.metrics_port),
            ("api", settings.web.port),
        ):
            register_target(state, name, f"{host}:{port}")
    except BaseException:
        supervisor.stop()
        raise

    def announce() -> None:
        write_state(state / "demo.json", supervisor, urls)
        width = max(map(len, urls))
        print("finsent demo is up (Ctrl-C to stop):", file=sys.stderr)
        for name, url in urls.items():
            print(f"  {name:<{width}}  {url}", file=sys.stderr)
        print(f"  topics created: {report.created or 'none (all existed)'}", file=sys.stderr)
        password_file = alertmanager_password_file(settings, state)
        print(f"  alertmanager login: user finsent, password in {password_file}", file=sys.stderr)
        print(f"Open the live dashboard: {urls['dashboard']}", file=sys.stderr, flush=True)
        log.info("demo ready", extra={"urls": urls})

    try:
        return wait_for_signal(supervisor, announce=announce)
    finally:  # the file says what is up: once the stack is down it must not claim otherwise
        (state / "demo.json").unlink(missing_ok=True)
