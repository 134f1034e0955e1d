"""Operating-system threads: a name the kernel sees, the timer that bounds a graceful stop, and how soon a thread
that holds the GIL hands it to one that waits.

``name_os_thread`` gives a thread a name the kernel sees, so ``top -H``, ``py-spy`` and the stream benchmark's CPU
profile can tell the worker's stages apart.

CPython 3.11 names threads for Python only: to the kernel every thread carries its creator's name, and a
profile of the worker's cores could not say whether the tokenizer, the model or the event loop burnt them.
Threads a named thread starts later (the tokenizers' Rust pool) inherit its name, which is what we want.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_PR_SET_NAME = 15
_MAX = 15  # the kernel keeps 15 bytes of a thread's name


def name_os_thread(name: str) -> None:
    """Name the calling thread (Linux; a no-op elsewhere or when libc refuses: a name is never worth failing for)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(_PR_SET_NAME, name.encode()[:_MAX], 0, 0, 0)
    except (OSError, AttributeError):
        return


def exit_later(timeout_s: float, code: int, what: str) -> None:
    """End the process with ``code`` if it is still alive ``timeout_s`` from now: the bound on a graceful stop.

    Why: when the demo's parent dies its children all get SIGTERM at once, and a process whose broker went first
    waits out Kafka timeouts (half a minute was seen) before it exits. Called from a stop-signal handler; the
    callers' ordering (offsets after results, marks after the archive) makes the early exit lossless."""

    def hard_exit() -> None:
        logging.getLogger("finsent").warning(
            "stop took too long; exiting now", extra={"what": what, "timeout_s": timeout_s, "exit_code": code}
        )
        os._exit(code)

    timer = threading.Timer(timeout_s, hard_exit)
    timer.daemon = True
    timer.start()


# How long a thread may hold the GIL while another waits for it, in seconds (CPython's default: 5 ms).
PROMPT_SWITCH_S = 0.0005


@contextmanager
def prompt_gil_handoff(interval_s: float = PROMPT_SWITCH_S) -> Iterator[None]:
    """Make a thread that holds the GIL hand it over within ``interval_s`` of another asking, for a run.

    Why: model threads spend most of their time in ONNX Runtime, without the GIL, but each forward returns into
    Python and needs the GIL for a moment to start the next. When another thread is running Python meanwhile (the
    backtest's bookkeeping), the returning model thread waits until that thread is made to drop it: up to 5 ms by
    default, with the model thread's core idle all the while. Measured on the 2-core machine, the backtest's speed
    against bare model calls side by side went from a median 0.930 to 0.969 of it at 0.5 ms (4 interleaved rounds
    each; 3-7 pt better in every pair) and 0.965 against 0.950 (6 more pairs, 4 better); 0.1 ms was no better than
    0.5. The stream worker, two interleaved pairs of bench/bench_stream.py: 1.38 / 1.32 against 1.25 / 1.25 x the
    naive loop (its other figures moved both ways). Not the API: there the model thread took the GIL back before
    requests had gathered, and its calls shrank (bench_api: fewer requests/s, higher p99). The previous interval
    comes back on exit; a shorter one already set is kept. The interval is the process's: enter it once per process
    (the worker and the backtest each do), not from threads whose runs overlap, or the first to leave restores the
    old interval under the other."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, interval_s))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


__all__ = ["PROMPT_SWITCH_S", "exit_later", "name_os_thread", "prompt_gil_handoff"]
