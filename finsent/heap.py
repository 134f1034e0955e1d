"""Keep the garbage collector's full passes off the objects a service loads once at start.

Why: after the model is loaded a worker or API process holds ~450,000 objects the cyclic collector
tracks (the classifier and tokenizer, and the modules of torch, transformers, faust, fastapi). Every
generation-2 collection walks all of them: 230 ms on the 2-core machine, during which the event loop
answers nothing. Under load such collections come every few seconds, and they were the API's p99
(a bimodal tail: 90 % of ``/healthz`` answers in 2 ms, 99 % in 234 ms). ``gc.freeze()`` moves what is
alive now into a permanent generation that later collections skip; objects made afterwards are
collected as usual. One full collection first, so no garbage is frozen with them.

The API uses it, and ``finsent backtest`` (its bookkeeping allocates windows and alerts by the million:
3,000-4,000 headlines/s of it with the startup objects walked, 5,700-6,300 frozen). The worker does not:
there it bought little (p99 132–137 against 144–145 ms at 270/s offered, two runs each) and, with it, the
second ``make demo`` run in the same state directory never raised its surge
(``tests/e2e/test_demo.py::test_a_second_demo_run_…``, failing every time with it and passing without); the
cause is not found yet, so the worker keeps the default collector.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("finsent.heap")


def freeze_startup_objects() -> int:
    """Collect once, then exempt every object alive now from later collections; returns how many."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("startup objects frozen", extra={"objects": frozen})
    return frozen


@contextmanager
def fewer_young_collections(threshold: int = 20_000) -> Iterator[None]:
    """Collect the youngest generation after ``threshold`` net allocations instead of 700, for a batch job's run.

    Why: a backtest's bookkeeping makes ~10 window results, a scored item and its records per headline, nearly all
    freed by reference counting within the batch. At the default threshold the collector still ran ~27 times per
    1,000 headlines and examined what happened to be alive, 7-10 us of CPU per headline (a tenth of the bookkeeping,
    taken from the model threads on a 2-core machine); at 20,000 it runs a few times per run. Memory is not at
    stake: only cyclic garbage waits longer, and the job makes little. The older generations keep their ratios.
    The previous thresholds come back on exit; a process with automatic collection off (threshold 0) keeps it off.
    """
    before = gc.get_threshold()
    if before[0]:  # 0: automatic collection is off; leave it so
        gc.set_threshold(max(threshold, before[0]), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


__all__ = ["fewer_young_collections", "freeze_startup_objects"]
