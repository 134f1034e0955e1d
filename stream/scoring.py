"""Classify a micro-batch so that one bad headline cannot take the batch (or the stream) down with it.

A model error on a batch is retried with backoff (a transient failure: out of memory on a long batch, a CUDA or
ONNX Runtime hiccup), for at least ``retries`` retries and about ``retry_for_s`` seconds; if it persists, the
batch is bisected until the items that fail on their own are isolated. They come back as failures for the
dead-letter queue; every other item is scored. Retrying at once and bisecting at once once turned a 50 ms
hiccup into 512 dead letters, all committed.

A model that fails on everything is not a batch of poison: when the batch fails for good, and again when no item
of it succeeded alone, a known-good headline (``CANARY``) is tried; if that fails too, ``ModelBroken`` is raised
and nothing is dead-lettered (the worker exits without committing, crash-only, and a fresh one gets the batch).
A lone poison headline, where the canary succeeds, still goes to the dead letters. Pure apart from the
``predict`` callable and the clock, so it is tested with a predictor that fails on chosen inputs or for a while.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from finsent.errors import ModelBroken

log = logging.getLogger("finsent.stream.scoring")

T = TypeVar("T")
P = TypeVar("P")

CANARY = "Stocks steady as investors await earnings"  # any plain headline a working model answers
FIRST_DELAY_S = 0.05  # then doubled per retry, up to MAX_DELAY_S
MAX_DELAY_S = 1.0
RETRY_FOR_S = 3.0  # the whole batch is retried while the delays so far add up to at most this


@dataclass
class BatchResult(Generic[T, P]):
    scored: list[tuple[T, P]]
    failed: list[tuple[T, str]]
    calls: int  # predict calls made (1 when nothing went wrong)


def score_batch(
    predict: Callable[[list[str]], Sequence[P]],
    items: Sequence[T],
    text: Callable[[T], str],
    retries: int = 1,
    retry_for_s: float = RETRY_FOR_S,
    sleep: Callable[[float], None] = time.sleep,
) -> BatchResult[T, P]:
    """``items`` scored, and those the model fails on by themselves; raises ModelBroken when it fails on anything."""
    calls = 0

    def once(texts: list[str]) -> Sequence[P]:
        nonlocal calls
        calls += 1
        preds = predict(texts)
        if len(preds) != len(texts):
            raise RuntimeError(f"predict returned {len(preds)} results for {len(texts)} texts")
        return preds

    def whole(part: Sequence[T]) -> tuple[list[tuple[T, P]], Exception | None]:
        """The batch in one call, retried ``retries`` times at once-ish; then, only while the model fails the
        canary too (a hiccup of the model, not of this batch), with backoff within ``retry_for_s``. A model that
        answers the canary while this batch keeps failing holds poison: bisect now, not after seconds of waiting
        (seven whole-batch calls and 2.5 s per poison headline, as first written)."""
        waited, delay, tries = 0.0, FIRST_DELAY_S, 0
        while True:
            try:
                return list(zip(part, once([text(x) for x in part]))), None
            except Exception as err:  # noqa: BLE001 - the model is a black box here: any error is the batch's
                last = err
            if tries >= retries and (waited + delay > retry_for_s or canary_ok()):
                return [], last
            sleep(delay)
            waited, delay, tries = waited + delay, min(delay * 2, MAX_DELAY_S), tries + 1

    def canary_ok() -> bool:
        try:
            once([CANARY])
        except Exception:  # noqa: BLE001
            return False
        return True

    def alone(part: Sequence[T]) -> tuple[list[tuple[T, P]], list[tuple[T, str]]]:
        """Bisection, one call per part: what fails here fails again at once, so no more waiting."""
        try:
            return list(zip(part, once([text(x) for x in part]))), []
        except Exception as err:  # noqa: BLE001
            if len(part) == 1:
                return [], [(part[0], f"{type(err).__name__}: {err}")]
            mid = len(part) // 2
            ok_a, bad_a = alone(part[:mid])
            ok_b, bad_b = alone(part[mid:])
            return ok_a + ok_b, bad_a + bad_b

    def canary_or_raise(error: str) -> None:
        try:
            once([CANARY])
        except Exception as err:
            raise ModelBroken(
                f"the classifier fails on every input, a known-good headline included ({type(err).__name__}: "
                f"{err}); not dead-lettering a batch of {len(items)} for it (first error: {error})"
            ) from err

    if not items:
        return BatchResult([], [], 0)
    scored, last = whole(items)
    if last is None:
        return BatchResult(scored, [], calls)
    first_error = f"{type(last).__name__}: {last}"
    canary_or_raise(first_error)  # a model failing on everything: no bisection into hundreds of dead letters
    log.warning("batch failed, bisecting", extra={"batch": len(items), "error": first_error})
    mid = len(items) // 2
    ok_a, bad_a = alone(items[:mid]) if mid else ([], [])
    ok_b, bad_b = alone(items[mid:])
    scored, failed = ok_a + ok_b, bad_a + bad_b
    if not scored:  # every item failed alone: was the model what broke meanwhile?
        canary_or_raise(first_error)
    order = {id(x): i for i, x in enumerate(items)}
    scored.sort(key=lambda pair: order[id(pair[0])])
    return BatchResult(scored, failed, calls)


__all__ = ["CANARY", "BatchResult", "score_batch"]
