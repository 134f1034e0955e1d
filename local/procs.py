"""Child processes for the embedded stack: start, wait until ready, stop without leaving orphans.

Each child gets its own process group (so a stop reaches its helpers too) and, on Linux, a
parent-death signal, so even a ``kill -9`` of finsent does not leave a broker or Prometheus running.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx

from finsent.errors import ConfigError, ProcessStartError
from finsent.settings import Settings

log = logging.getLogger("finsent.local.procs")

_PR_SET_PDEATHSIG = 1


def http_ok(url: str, auth: tuple[str, str] | None = None) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=1.0, auth=auth).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def _die_with_parent(parent: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child between fork and exec
        # A signal mask survives fork and exec: a child (re)started while the parent waits for its stop signal
        # with SIGINT/SIGTERM blocked (local.runtime.StopSignals) would ignore both, its stop and its parent-death
        # signal included. Every child starts with nothing blocked.
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        os.setsid()
        if sys.platform.startswith("linux"):
            with contextlib.suppress(Exception):
                ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # the parent died before the signal was armed: it will never come
                os._exit(1)

    return preexec


def _start_marker(name: str, argv: Sequence[str]) -> bytes:
    """The line a child's log gets before each start, as a JSON log line like the children's own."""
    doc = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "level": "info",
        "logger": "finsent.local.procs",
        "msg": "child starting",
        "child": name,
        "argv": list(argv),
    }
    return json.dumps(doc).encode() + b"\n"


def state_dir(settings: Settings) -> Path:
    """``paths.state_dir`` as a folder (made if missing): where the embedded stack keeps logs and state.

    A path that cannot be a folder (a file is there, no permission) is a ConfigError naming the setting, before
    any child starts; it was a NotADirectoryError traceback from the first child's log file."""
    path = settings.paths.state_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"paths.state_dir (FINSENT_PATHS__STATE_DIR) {str(path)!r} cannot be used as a folder: {err.strerror}; "
            "set it to a folder finsent may write"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"paths.state_dir (FINSENT_PATHS__STATE_DIR) {str(path)!r} is not writable; "
            "set it to a folder finsent may write"
        )
    return path


class Child:
    """One supervised child process whose output goes to a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        restart: bool = False,
    ):
        self.name = name
        self.restart = restart  # crash-only children (the worker): the supervisor starts them again
        self.restarts: list[float] = []
        self._ready: tuple[Callable[[], bool], float] | None = None
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self._log_from = 0  # where this run's lines start in the log (after its start marker)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, ready: Callable[[], bool], timeout: float) -> None:
        self.spawn(ready, timeout)
        self.wait_ready()

    def spawn(self, ready: Callable[[], bool], timeout: float) -> None:
        """Start the process without waiting for it (``wait_ready`` does): children that do not depend on each
        other start side by side."""
        self._ready = (ready, timeout)
        self._deadline = time.monotonic() + timeout
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = self.log_path.open("ab")
        except OSError as err:
            raise ProcessStartError(f"{self.name}: cannot write its log {self.log_path}: {err.strerror}") from None
        with out:
            # The log is appended to across runs: a start error quotes only what this run wrote (after the marker).
            out.write(_start_marker(self.name, self.argv))
            out.flush()
            self._log_from = out.tell()
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self.env,
                    cwd=self.cwd,
                    preexec_fn=_die_with_parent(os.getpid()),
                )
            except FileNotFoundError as err:
                raise ProcessStartError(f"{self.name}: cannot run {self.argv[0]!r}: {err.strerror}") from None

    def wait_ready(self) -> None:
        """Until ``ready()`` (the timeout counts from ``spawn``); a child that exits or times out meanwhile raises."""
        assert self.proc is not None and self._ready is not None, "spawn first"
        ready, timeout = self._ready
        while time.monotonic() < self._deadline:
            if self.proc.poll() is not None:
                raise ProcessStartError(
                    f"{self.name} exited with {self.proc.returncode} during start:\n{self.log_tail()}"
                )
            if ready():
                log.info("started", extra={"child": self.name, "pid": self.proc.pid})
                return
            time.sleep(0.05)
        self.stop()
        raise ProcessStartError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the child's process group, SIGKILL it if it has not gone after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("killing", extra={"child": self.name, "pid": self.proc.pid})
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        log.info("stopped", extra={"child": self.name, "rc": self.proc.returncode})

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines this run of the child wrote (earlier runs share the file, above its start marker)."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_from)
                text = fh.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(nothing logged)"


class Supervisor:
    """Starts children in order and stops them in reverse; usable as a context manager."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(self, child: Child, ready: Callable[[], bool], timeout: float) -> Child:
        child.start(ready, timeout)
        self.children.append(child)
        return child

    def start_together(self, *starts: tuple[Child, Callable[[], bool], float]) -> None:
        """Start children that do not depend on each other side by side, then wait until each is ready (each
        within its own timeout). Every one is supervised from its spawn, so a failure stops them all."""
        for child, ready, timeout in starts:
            child.spawn(ready, timeout)
            self.children.append(child)
        for child, _, _ in starts:
            child.wait_ready()

    def dead(self) -> list[Child]:
        return [c for c in self.children if not c.alive()]

    def revive(self, child: Child, max_per_minute: int = 5) -> bool:
        """Start a restartable child again, unless it keeps dying (then the stack should stop and say so)."""
        now = time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < 60]
        if not child.restart or child._ready is None or len(child.restarts) >= max_per_minute:
            return False
        child.restarts.append(now)
        log.warning("restarting", extra={"child": child.name, "rc": child.proc.returncode if child.proc else None})
        try:
            child.start(*child._ready)
        except ProcessStartError as err:
            log.error("restart failed", extra={"child": child.name, "error": str(err)[:500]})
            return False
        return True

    def stop(self) -> None:
        while self.children:
            self.children.pop().stop()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
