"""The /classify batcher's logic, without HTTP or a model (web/batcher.py).

The model is a fake ``predict`` that records each call and answers ``"pred:<text>"`` per text. That is
enough here, and a fake is right for it: these tests are about who gets which answer, how requests are
grouped into calls and what happens on errors and shutdown, not about the model (test_api runs the real
tiny model over HTTP and checks the answers against one-by-one predictions).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from finsent.errors import BatcherClosed
from finsent.web.batcher import Batcher


class FakeModel:
    """Records every call; answers one string per text; raises on a text "boom"; can be held (``gate``)."""

    def __init__(self, hold: bool = False):
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.started = threading.Event()
        if not hold:
            self.gate.set()

    def predict(self, texts: list[str]) -> list[str]:
        self.calls.append(list(texts))
        self.started.set()
        assert self.gate.wait(10)
        if "boom" in texts:
            raise ValueError("model failed")
        return [f"pred:{t}" for t in texts]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def ask_all(batcher: Batcher, requests: Sequence[list[str]]) -> list:
    """Every request at once, as concurrent callers; results or exceptions in request order."""
    return await asyncio.gather(*(batcher.submit(texts) for texts in requests), return_exceptions=True)


def test_each_caller_gets_exactly_its_own_answers_in_order():
    model = FakeModel()
    requests = [[f"c{k}-t{i}" for i in range(size)] for k, size in enumerate([1, 3, 2, 1, 5, 1, 2, 1])]

    async def main():
        async with Batcher(model.predict, max_texts=64, max_wait_s=0.05) as b:
            return await ask_all(b, requests)

    answers = run(main())
    assert [a.results for a in answers] == [[f"pred:{t}" for t in texts] for texts in requests]
    assert len(model.calls) < len(requests)  # and they were answered from shared calls
    assert sorted(t for call in model.calls for t in call) == sorted(t for r in requests for t in r)  # each text once


def test_concurrent_single_text_callers_share_one_model_call():
    model = FakeModel()
    seen: list[tuple[int, int]] = []

    async def main():
        async with Batcher(
            model.predict,
            max_texts=64,
            max_wait_s=0.05,
            on_batch=lambda requests, texts, s: seen.append((requests, texts)),
        ) as b:
            return await ask_all(b, [[f"headline {k}"] for k in range(8)])

    answers = run(main())
    assert [a.results for a in answers] == [[f"pred:headline {k}"] for k in range(8)]
    assert len(model.calls) < 8 and seen == [(len(c), len(c)) for c in model.calls]
    assert model.calls == [[f"headline {k}" for k in range(8)]]  # all in one call, in arrival order
    assert {a.batch_texts for a in answers} == {8}


def test_a_full_batch_starts_at_once_without_waiting_out_max_wait():
    model = FakeModel()

    async def main():
        async with Batcher(model.predict, max_texts=4, max_wait_s=30) as b:
            t0 = time.monotonic()
            answers = await ask_all(b, [["a"], ["b", "c"], ["d"]])
            return answers, time.monotonic() - t0

    answers, seconds = run(main())
    assert seconds < 5 and model.calls == [["a", "b", "c", "d"]]
    assert [a.results for a in answers] == [["pred:a"], ["pred:b", "pred:c"], ["pred:d"]]


def test_a_lone_request_is_answered_after_about_max_wait():
    model = FakeModel()

    async def main():
        async with Batcher(model.predict, max_texts=64, max_wait_s=0.05) as b:
            t0 = time.monotonic()
            answer = await b.submit(["alone"])
            return answer, time.monotonic() - t0

    answer, seconds = run(main())
    assert answer.results == ["pred:alone"] and model.calls == [["alone"]]
    assert 0.04 <= seconds < 0.5, seconds  # waited for company, then did not wait for more


def test_an_oversized_request_runs_alone_and_whole():
    model = FakeModel()
    big = [f"big{i}" for i in range(6)]

    async def main():
        async with Batcher(model.predict, max_texts=4, max_wait_s=0.05) as b:
            return await ask_all(b, [["s1"], big, ["s2"], ["s3"]])

    answers = run(main())
    assert [a.results for a in answers] == [["pred:s1"], [f"pred:{t}" for t in big], ["pred:s2"], ["pred:s3"]]
    assert big in model.calls  # one call of exactly its texts: never split, never mixed with another caller's
    assert all(len(call) <= 4 for call in model.calls if call != big)
    assert model.calls == [["s1"], big, ["s2", "s3"]]  # arrival order kept around it


def test_a_model_error_fails_only_its_batch_and_the_batcher_keeps_serving():
    model = FakeModel()

    async def main():
        async with Batcher(model.predict, max_texts=2, max_wait_s=0.05) as b:
            first = await ask_all(b, [["boom"], ["a"], ["b"], ["c"]])  # calls [boom, a] and [b, c]
            later = await b.submit(["d"])
            return first, later

    (boom, a, b, c), later = run(main())
    assert model.calls[:2] == [["boom", "a"], ["b", "c"]]
    assert isinstance(boom, ValueError) and isinstance(a, ValueError)  # the failed call's callers get its error
    assert b.results == ["pred:b"] and c.results == ["pred:c"]  # the other batch is untouched
    assert later.results == ["pred:d"]


def test_a_wrong_number_of_predictions_is_an_error_not_a_misaligned_answer():
    async def main():
        async with Batcher(lambda texts: ["only one"], max_texts=8, max_wait_s=0.01) as b:
            return await ask_all(b, [["x"], ["y"]])

    answers = run(main())
    assert all(isinstance(a, RuntimeError) and "1 predictions for 2 texts" in str(a) for a in answers)


def test_a_caller_that_goes_away_is_dropped_before_the_model_call():
    model = FakeModel()

    async def main():
        async with Batcher(model.predict, max_texts=64, max_wait_s=0.1) as b:
            gone = asyncio.ensure_future(b.submit(["gone"]))
            stays = asyncio.ensure_future(b.submit(["stays"]))
            await asyncio.sleep(0.01)
            gone.cancel()
            return await stays

    assert run(main()).results == ["pred:stays"] and model.calls == [["stays"]]


def test_shutdown_fails_waiting_and_in_flight_callers_at_once_and_refuses_new_ones():
    model = FakeModel(hold=True)

    async def main():
        b = Batcher(model.predict, max_texts=1, max_wait_s=0)
        b.start()
        in_flight = asyncio.ensure_future(b.submit(["running"]))
        queued = asyncio.ensure_future(b.submit(["queued"]))
        while not model.started.is_set():  # the loop keeps running while the model works (in the executor)
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        await b.close()
        outcomes = await asyncio.gather(in_flight, queued, return_exceptions=True)
        with pytest.raises(BatcherClosed):
            await b.submit(["after"])
        return outcomes, time.monotonic() - t0

    try:
        outcomes, seconds = run(main())
    finally:
        model.gate.set()  # let the executor thread finish its (unanswered) call
    assert all(isinstance(o, BatcherClosed) for o in outcomes), outcomes
    assert seconds < 2 and model.calls == [["running"]]  # the queued request never reached the model


def test_submit_before_start_is_refused():
    async def main():
        with pytest.raises(BatcherClosed):
            await Batcher(lambda texts: texts, max_texts=1, max_wait_s=0).submit(["x"])

    run(main())
