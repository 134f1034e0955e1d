"""Foreground services: run until SIGINT/SIGTERM, then stop cleanly.

Shared by ``finsent broker``, ``finsent demo`` and ``finsent ingest demo-feeds`` so all three wait for the stop
signal, and shut down, the same way.

The stop signal is waited for with ``sigtimedwait``, never with a handler that sets an Event: a handler runs in the
main thread and can interrupt it while it holds that Event's own lock (inside ``Event.wait``), and the stop then
hangs for ever. ``StopSignals`` blocks SIGINT and SIGTERM in the calling thread, so a signal meant for it stays
pending until the wait takes it; threads started inside the block inherit the mask. A signal the kernel hands to a
thread that does not block it (one started before) still runs a handler: that handler only records the signal (no
lock), and the wait sees it within ``poll_s``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from finsent.files import replace_text
from finsent.local.procs import Supervisor

log = logging.getLogger("finsent.local.runtime")

STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


class StopSignals:
    """``with StopSignals() as stop:`` SIGINT and SIGTERM are blocked in this thread (and the threads it starts
    inside) and recorded; ``stop.wait(timeout)`` returns the first that arrived, or None after ``timeout``. On exit
    the mask and the handlers are restored (a signal still pending then is recorded, not raised)."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._mask: set[int | signal.Signals] = set()
        self._handlers: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        self._handlers = {sig: signal.signal(sig, self._record) for sig in STOP_SIGNALS}
        self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        return self

    def _record(self, signum: int, _frame: object) -> None:
        self.received.append(signum)  # a list append: no lock the interrupted main thread could hold

    def wait(self, timeout: float | None = None, poll_s: float = 0.5) -> int | None:
        """The first stop signal received, waiting up to ``timeout`` seconds (None: until one comes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.received:
            left = poll_s if deadline is None else min(poll_s, deadline - time.monotonic())
            if left <= 0:
                return None
            info = signal.sigtimedwait(STOP_SIGNALS, left)
            if info is not None:
                self.received.append(info.si_signo)
        return self.received[0]

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)  # a pending signal now reaches _record
        for sig, old in self._handlers.items():
            signal.signal(sig, old)  # type: ignore[arg-type]


def wait_for_signal(
    supervisor: Supervisor | None = None, poll_s: float = 0.5, announce: Callable[[], None] | None = None
) -> int:
    """Block until SIGINT/SIGTERM (exit 0) or until a child dies on its own (exit 1); restartable
    children (crash-only services such as the worker) are started again instead, up to a rate limit.
    The supervisor's children are stopped on the way out.

    ``announce`` (saying the stack is up: the state file, the URLs) runs once the signals are blocked: a Ctrl-C
    that follows the announcement at once is a clean stop, not a KeyboardInterrupt (exit 130)."""
    with StopSignals() as stop:
        try:
            if announce is not None:
                announce()
            while (signum := stop.wait(poll_s, poll_s)) is None:
                dead = [c for c in supervisor.dead() if not supervisor.revive(c)] if supervisor else []
                if dead:
                    for child in dead:
                        log.error(
                            "child exited",
                            extra={
                                "child": child.name,
                                "rc": child.proc.returncode if child.proc else None,
                                "log": str(child.log_path),
                            },
                        )
                    return 1
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            return 0
        finally:
            if supervisor is not None:
                supervisor.stop()


def write_state(path: Path, supervisor: Supervisor, urls: dict[str, str]) -> None:
    """Record pids and URLs of a running stack (operators and tests read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"pid": os.getpid(), "children": {c.name: c.pid for c in supervisor.children}, "urls": urls}
    replace_text(path, json.dumps(doc, indent=2))
