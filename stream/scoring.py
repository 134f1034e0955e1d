"""Classify a micro-batch so that one bad headline cannot take the batch (or the stream) down with it.

A model error on a batch is retried (a transient failure: out of memory on a long batch, a CUDA
hiccup); if it persists, the batch is bisected until the items that fail on their own are isolated.
They come back as failures for the dead-letter queue; every other item is scored. Pure apart from
the ``predict`` callable, so it is tested with a predictor that fails on chosen inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger("finsent.stream.scoring")

T = TypeVar("T")
P = TypeVar("P")


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
) -> BatchResult[T, P]:
    calls = 0

    def attempt(part: Sequence[T], tries: int) -> tuple[list[tuple[T, P]], list[tuple[T, str]]]:
        nonlocal calls
        last: Exception | None = None
        for _ in range(tries):
            calls += 1
            try:
                preds = predict([text(x) for x in part])
                if len(preds) != len(part):
                    raise RuntimeError(f"predict returned {len(preds)} results for {len(part)} texts")
                return list(zip(part, preds)), []
            except Exception as err:  # noqa: BLE001 - the model is a black box here: any error is the batch's
                last = err
        if len(part) == 1:
            return [], [(part[0], f"{type(last).__name__}: {last}")]
        log.warning("batch failed, bisecting", extra={"batch": len(part), "error": f"{type(last).__name__}: {last}"})
        mid = len(part) // 2
        ok_a, bad_a = attempt(part[:mid], 1)
        ok_b, bad_b = attempt(part[mid:], 1)
        return ok_a + ok_b, bad_a + bad_b

    if not items:
        return BatchResult([], [], 0)
    scored, failed = attempt(items, 1 + retries)
    order = {id(x): i for i, x in enumerate(items)}
    scored.sort(key=lambda pair: order[id(pair[0])])
    return BatchResult(scored, failed, calls)


__all__ = ["BatchResult", "score_batch"]
