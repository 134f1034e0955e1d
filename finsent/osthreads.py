"""Operating-system threads: a name the kernel sees, and the timer that bounds a graceful stop.

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


__all__ = ["exit_later", "name_os_thread"]
