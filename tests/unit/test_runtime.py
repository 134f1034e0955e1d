"""The foreground stack's stop: a Ctrl-C that comes the moment the stack says it is up is a clean stop, and the
stop signal is taken by sigwait, not by a handler interrupting the main thread."""

import os
import signal
import threading
import time

from finsent.local.procs import Supervisor
from finsent.local.runtime import wait_for_signal


def test_a_ctrl_c_right_after_the_announcement_stops_cleanly_with_exit_0():
    """``finsent demo`` wrote its state file (which tests and operators wait for) before its handler was in place:
    a SIGINT in that gap was a KeyboardInterrupt, exit 130 (seen once in a fresh-clone run)."""
    said: list[str] = []

    def announce() -> None:
        said.append("up")
        os.kill(os.getpid(), signal.SIGINT)  # the reader of the announcement presses Ctrl-C at once

    before = signal.getsignal(signal.SIGINT)
    assert wait_for_signal(Supervisor(), poll_s=0.01, announce=announce) == 0
    assert said == ["up"] and signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_the_stop_signal_waits_for_sigwait_instead_of_interrupting_the_main_thread():
    """A handler that sets an Event runs in the main thread and can interrupt it inside that Event's own lock (a
    stop that hangs for ever). So while waiting, SIGINT and SIGTERM are blocked in the main thread and taken by
    sigtimedwait; the mask is restored after."""
    seen: dict[str, set] = {}

    def announce() -> None:
        seen["mask"] = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert wait_for_signal(Supervisor(), poll_s=0.01, announce=announce) == 0
    assert {signal.SIGINT, signal.SIGTERM} <= seen["mask"]
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before


def test_a_stop_signal_another_thread_takes_still_stops_the_wait():
    """A thread started before the wait does not block the signals: one the kernel hands to it runs the recording
    handler, and the wait sees it within its poll."""
    release = threading.Event()
    other = threading.Thread(target=release.wait, daemon=True)
    other.start()
    try:
        started = time.monotonic()
        code = wait_for_signal(
            None, poll_s=0.05, announce=lambda: signal.pthread_kill(other.ident or 0, signal.SIGTERM)
        )
        assert code == 0 and time.monotonic() - started < 5
    finally:
        release.set()
