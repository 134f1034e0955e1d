"""Give a thread a name the kernel sees, so ``top -H``, ``py-spy`` and the stream benchmark's CPU profile
can tell the worker's stages apart.

CPython 3.11 names threads for Python only: to the kernel every thread carries its creator's name, and a
profile of the worker's cores could not say whether the tokenizer, the model or the event loop burnt them.
Threads a named thread starts later (the tokenizers' Rust pool) inherit its name, which is what we want.
"""

from __future__ import annotations

import ctypes
import sys

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


__all__ = ["name_os_thread"]
