"""``finsent demo``: the whole embedded stack on 127.0.0.1, for a new user's first five minutes.

Stages are started in dependency order (broker → Prometheus → Alertmanager → …) and stopped in
reverse. Later issues add ingest, worker, receiver and web here as they come into existence.
"""

from __future__ import annotations

import logging
import sys

from finsent.alerts.embedded import alertmanager_child, prometheus_child, ready_check
from finsent.procs import Supervisor
from finsent.runtime import wait_for_signal, write_state
from finsent.settings import Settings
from finsent.stream.embedded_broker import start_broker

log = logging.getLogger("finsent.demo")


def run(settings: Settings) -> int:
    state = settings.paths.state_dir
    logs = state / "logs"
    supervisor = Supervisor()
    urls: dict[str, str] = {}
    try:
        broker, report = start_broker(settings, logs)
        supervisor.children.append(broker)
        urls["kafka"] = f"{settings.broker.host}:{settings.broker.port}"
        am, am_url = alertmanager_child(settings, state)
        supervisor.start(am, ready_check(am_url), settings.services.start_timeout_s)
        urls["alertmanager"] = am_url
        prom, prom_url = prometheus_child(settings, state)
        supervisor.start(prom, ready_check(prom_url), settings.services.start_timeout_s)
        urls["prometheus"] = prom_url
    except BaseException:
        supervisor.stop()
        raise
    write_state(state / "demo.json", supervisor, urls)
    width = max(map(len, urls))
    print("finsent demo is up (Ctrl-C to stop):", file=sys.stderr)
    for name, url in urls.items():
        print(f"  {name:<{width}}  {url}", file=sys.stderr)
    print(f"  topics created: {report.created or 'none (all existed)'}", file=sys.stderr, flush=True)
    log.info("demo ready", extra={"urls": urls})
    return wait_for_signal(supervisor)
