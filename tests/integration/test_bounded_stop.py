"""A stop that hangs ends the process anyway: the worker's SIGTERM/SIGINT handling is bounded, and the demo's
feed server stops on SIGTERM at any moment (sigwait, not a handler racing its own lock)."""

from __future__ import annotations

import subprocess
import sys
import time

from conftest import environ_without_finsent

from finsent.net import free_port

HANGING_STOP = """
import time
from finsent.stream.worker import _bounded_stop_worker

class Base:  # stands in for faust.Worker: its stop never finishes (a broker that went away first)
    def _on_sigterm(self):
        pass

_bounded_stop_worker(Base, 1.0)()._on_sigterm()
time.sleep(60)
"""


def test_a_worker_stop_that_hangs_exits_after_the_timeout():
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", HANGING_STOP], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 70, proc.stderr[-2000:]  # EX_SOFTWARE: not finished; offsets say what to redo
    assert time.monotonic() - t0 < 20


def test_the_demo_feed_server_stops_on_sigterm_right_after_start(tmp_path):
    port = free_port()
    for delay in (0.0, 0.5, 2.0):  # during imports, while starting, while serving
        proc = subprocess.Popen(
            [sys.executable, "-m", "finsent.cli", "ingest", "demo-feeds", "--port", str(port)],
            env={**environ_without_finsent(), "FINSENT_PATHS__STATE_DIR": str(tmp_path)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(delay)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"demo-feeds ignored SIGTERM sent {delay} s after start") from None
