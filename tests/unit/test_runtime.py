"""The foreground stack's stop: a Ctrl-C that comes the moment the stack says it is up is a clean stop."""

import os
import signal

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
