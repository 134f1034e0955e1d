"""Crash-only children: the supervisor starts a restartable child again, but not forever."""

import sys
import time

from finsent.local.procs import Child, Supervisor


def test_a_restartable_child_is_revived_up_to_a_rate_limit(tmp_path):
    marker = tmp_path / "starts"
    code = f"open({str(marker)!r}, 'a').write('x'); import time; time.sleep(0.3); raise SystemExit(75)"
    child = Child("crashy", [sys.executable, "-c", code], tmp_path / "crashy.log", restart=True)
    sup = Supervisor()
    sup.start(child, lambda: marker.exists(), timeout=10)
    revived = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if not child.alive():
            if not sup.revive(child, max_per_minute=3):
                break
            revived += 1
    sup.stop()
    assert revived == 3 and len(marker.read_text()) == 4  # first start + 3 restarts, then it gives up


def test_a_plain_child_is_not_revived(tmp_path):
    child = Child("once", [sys.executable, "-c", "import time; time.sleep(0.2)"], tmp_path / "once.log")
    sup = Supervisor()
    sup.start(child, lambda: True, timeout=5)
    child.proc.wait(5)
    assert sup.revive(child) is False


def test_a_child_started_while_the_parent_blocks_its_stop_signals_still_stops_on_sigterm(tmp_path):
    """The demo waits for Ctrl-C with SIGINT/SIGTERM blocked (local.runtime.StopSignals) and revives crashed children
    meanwhile; a signal mask survives fork and exec, so a revived worker ignored its stop (SIGKILLed after 10 s, its
    offsets uncommitted) and its parent-death signal. Children start with nothing blocked."""
    import signal

    status = tmp_path / "status"
    code = f"open({str(status)!r}, 'w').write(open('/proc/self/status').read()); import time; time.sleep(60)"
    child = Child("masked", [sys.executable, "-c", code], tmp_path / "masked.log")
    sup = Supervisor()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        sup.start(child, lambda: status.exists() and "SigBlk" in status.read_text(), timeout=10)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    blocked = next(line for line in status.read_text().splitlines() if line.startswith("SigBlk:"))
    assert int(blocked.split()[1], 16) == 0, blocked
    started = time.monotonic()
    sup.stop()
    assert child.proc.returncode == -signal.SIGTERM and time.monotonic() - started < 5
