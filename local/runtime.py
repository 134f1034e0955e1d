"""Foreground services: run until SIGINT/SIGTERM, then stop children cleanly.

Shared by ``finsent broker`` and ``finsent demo`` so both shut down the same way.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from finsent.files import replace_text
from finsent.local.procs import Supervisor

log = logging.getLogger("finsent.local.runtime")


def wait_for_signal(supervisor: Supervisor, poll_s: float = 0.5, announce: Callable[[], None] | None = None) -> int:
    """Block until SIGINT/SIGTERM (exit 0) or until a child dies on its own (exit 1); restartable
    children (crash-only services such as the worker) are started again instead, up to a rate limit.

    ``announce`` (saying the stack is up: the state file, the URLs) runs once the handlers are in place: a Ctrl-C
    that follows the announcement at once is a clean stop, not a KeyboardInterrupt (exit 130)."""
    stop = threading.Event()
    received: list[int] = []

    def handler(signum, _frame):
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if announce is not None:
            announce()
        while not stop.wait(poll_s):
            dead = [c for c in supervisor.dead() if not supervisor.revive(c)]
            if dead:
                for child in dead:
                    log.error(
                        "child exited",
                        extra={"child": child.name, "rc": child.proc.returncode, "log": str(child.log_path)},
                    )
                return 1
        log.info("stopping", extra={"signal": signal.Signals(received[0]).name})
        return 0
    finally:
        supervisor.stop()
        for sig, old in previous.items():
            signal.signal(sig, old)


def write_state(path: Path, supervisor: Supervisor, urls: dict[str, str]) -> None:
    """Record pids and URLs of a running stack (operators and tests read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"pid": os.getpid(), "children": {c.name: c.pid for c in supervisor.children}, "urls": urls}
    replace_text(path, json.dumps(doc, indent=2))
