"""The /classify batcher's logic, without HTTP or a model (web/batcher.py).

The model is a fake ``predict`` that records each call and answers ``"pred:<text>"`` per text. That is
enough here, and a fake is right for it: these tests are about who gets which answer, how requests are
grouped into calls and what happens on errors and shutdown, not about the model (test_api runs the real
tiny model over HTTP and checks the answers against one-by-one predictions).

Tests about which requests share a call never rest on the event loop queueing "concurrent" callers within
``max_wait_s`` of each other: on a loaded machine the loop can be off the CPU longer than that between two of
them (a fresh-clone run once saw [s2], [s3] where [s2, s3] was due). They stop the batcher's clock (``clock``:
a batch then comes due by its count only, or when the test moves the clock), and wait until every model thread
is waiting for work (``idle``) before sharing among threads is asserted.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from finsent.errors import BatcherClosed
from finsent.web import batcher as batcher_module
from finsent.web.batcher import Batcher, TwoStage


class FakeModel:
    """Records every call; answers one string per text; raises on a text "boom"; can be held (``gate``)."""

    def __init__(self, hold: bool = False):
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.started = threading.Event()
        self.in_flight = self.most_in_flight = 0  # calls running at once (the batcher's executor has threads)
        self._lock = threading.Lock()
        if not hold:
            self.gate.set()

    def predict(self, texts: list[str]) -> list[str]:
        with self._lock:
            self.calls.append(list(texts))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.started.set()
        try:
            assert self.gate.wait(10)
            if "boom" in texts:
                raise ValueError("model failed")
            return [f"pred:{t}" for t in texts]
        finally:
            with self._lock:
                self.in_flight -= 1


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


class FrozenClock:
    """The batcher's ``time`` with a ``monotonic`` that moves only when the test moves it (``advance``): a batch
    comes due by its count at once, by its wait only then. ``perf_counter`` (the calls' timing) is the real one."""

    perf_counter = staticmethod(time.perf_counter)

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float = 60.0) -> None:
        self.now += seconds  # a model thread waiting for the oldest request's wait sees it within that wait


@pytest.fixture
def clock(monkeypatch) -> FrozenClock:
    frozen = FrozenClock()
    monkeypatch.setattr(batcher_module, "time", frozen)
    return frozen


async def queued(b: Batcher, requests: int) -> None:
    """Until ``requests`` requests wait in the queue (none taken: the clock is stopped and they are too few)."""
    await until(lambda: len(b._queue) == requests)


async def ask_all_queued(b: Batcher, clock: FrozenClock, requests: Sequence[list[str]]) -> list:
    """``ask_all``, with every request queued before the clock moves on: they come due together, however slowly the
    loop queued them."""
    pending = asyncio.ensure_future(ask_all(b, requests))
    await queued(b, len(requests))
    clock.advance()
    return await pending


async def idle(b: Batcher) -> None:
    """Until every model thread waits for work, so that what is queued next is shared among all of them."""
    await until(lambda: all(t.waiting and t.under_way == 0 for t in b._model_threads))


async def ask_all(batcher: Batcher, requests: Sequence[list[str]]) -> list:
    """Every request at once, as concurrent callers; results or exceptions in request order."""
    return await asyncio.gather(*(batcher.submit(texts) for texts in requests), return_exceptions=True)


def test_each_caller_gets_exactly_its_own_answers_in_order(clock):
    model = FakeModel()
    requests = [[f"c{k}-t{i}" for i in range(size)] for k, size in enumerate([1, 3, 2, 1, 5, 1, 2, 1])]

    async def main():
        async with Batcher(model.predict, max_texts=64, max_wait_s=0.05) as b:
            return await ask_all_queued(b, clock, requests)

    answers = run(main())
    assert [a.results for a in answers] == [[f"pred:{t}" for t in texts] for texts in requests]
    assert len(model.calls) < len(requests)  # and they were answered from shared calls
    assert sorted(t for call in model.calls for t in call) == sorted(t for r in requests for t in r)  # each text once


def test_concurrent_single_text_callers_share_one_model_call(clock):
    model = FakeModel()
    seen: list[tuple[int, int]] = []

    async def main():
        async with Batcher(
            model.predict,
            max_texts=64,
            max_wait_s=0.05,
            on_batch=lambda requests, texts, s: seen.append((requests, texts)),
        ) as b:
            return await ask_all_queued(b, clock, [[f"headline {k}"] for k in range(8)])

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
    assert 0.04 <= seconds < 1.0, seconds  # waited for company, then did not wait for more (20 x max_wait)


def test_an_oversized_request_runs_alone_and_whole(clock):
    model = FakeModel()
    big = [f"big{i}" for i in range(6)]

    async def main():
        async with Batcher(model.predict, max_texts=4, max_wait_s=0.05) as b:
            pending = asyncio.ensure_future(ask_all(b, [["s1"], big, ["s2"], ["s3"]]))
            # s1 + big make a due count: [s1] (big does not fit beside it), then big alone; s2 and s3 wait for time
            await until(lambda: len(model.calls) == 2 and len(b._queue) == 2)
            clock.advance()
            return await pending

    answers = run(main())
    assert [a.results for a in answers] == [["pred:s1"], [f"pred:{t}" for t in big], ["pred:s2"], ["pred:s3"]]
    assert big in model.calls  # one call of exactly its texts: never split, never mixed with another caller's
    assert all(len(call) <= 4 for call in model.calls if call != big)
    assert model.calls == [["s1"], big, ["s2", "s3"]]  # arrival order kept around it


def test_a_model_error_fails_only_its_batch_and_the_batcher_keeps_serving(clock):
    model = FakeModel()

    async def main():
        async with Batcher(model.predict, max_texts=2, max_wait_s=0.05) as b:
            first = await ask_all(b, [["boom"], ["a"], ["b"], ["c"]])  # calls [boom, a] and [b, c], due by count
            later = asyncio.ensure_future(b.submit(["d"]))
            await queued(b, 1)
            clock.advance()
            return first, await later

    (boom, a, b, c), later = run(main())
    assert model.calls[:2] == [["boom", "a"], ["b", "c"]]
    assert isinstance(boom, ValueError) and isinstance(a, ValueError)  # the failed call's callers get its error
    assert b.results == ["pred:b"] and c.results == ["pred:c"]  # the other batch is untouched
    assert later.results == ["pred:d"]


def test_a_wrong_number_of_predictions_is_an_error_not_a_misaligned_answer(clock):
    async def main():
        async with Batcher(lambda texts: ["only one"], max_texts=8, max_wait_s=0.01) as b:
            return await ask_all_queued(b, clock, [["x"], ["y"]])

    answers = run(main())
    assert all(isinstance(a, RuntimeError) and "1 predictions for 2 texts" in str(a) for a in answers)


def test_a_caller_that_goes_away_is_dropped_before_the_model_call(clock):
    model = FakeModel()

    async def main():
        async with Batcher(model.predict, max_texts=64, max_wait_s=0.1) as b:
            gone = asyncio.ensure_future(b.submit(["gone"]))
            stays = asyncio.ensure_future(b.submit(["stays"]))
            await queued(b, 2)
            gone.cancel()
            await asyncio.sleep(0)  # the cancellation reaches its future
            clock.advance()
            return await stays

    assert run(main()).results == ["pred:stays"] and model.calls == [["stays"]]


def test_shutdown_fails_waiting_and_in_flight_callers_at_once_and_refuses_new_ones():
    model = FakeModel(hold=True)

    async def main():
        b = Batcher(model.predict, max_texts=1, max_wait_s=0)
        b.start()
        in_flight = asyncio.ensure_future(b.submit(["running"]))
        queued = asyncio.ensure_future(b.submit(["queued"]))
        while not model.started.is_set():  # the loop keeps running while the model works (in its thread)
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


async def until(condition, seconds: float = 5) -> None:
    """Let the loop run until ``condition()`` holds (the model works in its threads meanwhile)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("concurrency", [1, 2, 3])
def test_at_most_concurrency_model_calls_run_at_once_and_each_caller_keeps_its_answers(concurrency):
    """While the model is held, batches start in further call slots up to ``concurrency`` and no further;
    the requests behind them wait, then every caller gets its own answers."""
    model = FakeModel(hold=True)

    async def main():
        async with Batcher(model.predict, max_texts=2, max_wait_s=0, concurrency=concurrency) as b:
            pending = []
            for k in range(6):  # one at a time, so that each free slot takes a batch of its own
                pending.append(asyncio.ensure_future(b.submit([f"r{k}"])))
                await asyncio.sleep(0.02)
            await until(lambda: model.in_flight == concurrency)
            await asyncio.sleep(0.1)  # time for a wrongly started extra call to show
            running = model.in_flight
            model.gate.set()
            return running, await asyncio.gather(*pending)

    try:
        running, answers = run(main())
    finally:
        model.gate.set()
    assert running == concurrency and model.most_in_flight == concurrency
    assert [a.results for a in answers] == [[f"pred:r{k}"] for k in range(6)]
    assert sorted(t for call in model.calls for t in call) == [f"r{k}" for k in range(6)]  # each text once


def test_requests_that_arrive_while_every_slot_is_busy_share_the_next_call():
    model = FakeModel(hold=True)

    async def main():
        async with Batcher(model.predict, max_texts=64, max_wait_s=0, concurrency=2) as b:
            pending = []
            for k in range(6):
                pending.append(asyncio.ensure_future(b.submit([f"r{k}"])))
                await asyncio.sleep(0.02)  # r0 and r1 take a slot each; r2..r5 find both busy
            await until(lambda: model.in_flight == 2)
            model.gate.set()
            return await asyncio.gather(*pending)

    try:
        answers = run(main())
    finally:
        model.gate.set()
    assert model.calls[:2] == [["r0"], ["r1"]]
    # r2..r5 queued, not sent one by one to the executor: they share the next call, or the next two if both
    # slots are free by then (the two held calls end together)
    later = model.calls[2:]
    assert [t for call in later for t in call] == ["r2", "r3", "r4", "r5"] and len(later) <= 2, later
    assert [a.results for a in answers] == [[f"pred:r{k}"] for k in range(6)]


def test_a_batch_is_shared_among_the_free_slots_and_each_caller_keeps_its_answers(clock):
    model = FakeModel()

    async def main():
        async with Batcher(model.predict, max_texts=64, max_wait_s=0.05, concurrency=2) as b:
            await idle(b)
            return await ask_all_queued(b, clock, [[f"h{k}"] for k in range(7)] + [["h7", "h8"]])

    answers = run(main())
    # 9 queued texts, 2 idle threads: calls of up to 5 side by side (either may start first), whole requests in
    # arrival order
    assert sorted(model.calls) == [[f"h{k}" for k in range(5)], ["h5", "h6", "h7", "h8"]]
    assert [a.results for a in answers] == [[f"pred:h{k}"] for k in range(7)] + [["pred:h7", "pred:h8"]]


def test_with_free_slots_a_large_request_is_cut_into_parts_and_answered_whole_in_order():
    model = FakeModel()
    big = [f"t{i}" for i in range(10)]
    huge = [f"u{i}" for i in range(150)]

    async def main():
        async with Batcher(model.predict, max_texts=64, max_wait_s=0, concurrency=2) as b:
            await idle(b)
            first = await b.submit(big)
            calls_for_big = list(model.calls)
            await idle(b)  # both threads back for work: one alone would take the huge request whole
            second = await b.submit(huge)
            return first, calls_for_big, second

    first, calls_for_big, second = run(main())
    assert sorted(calls_for_big) == [big[:5], big[5:]]  # two idle threads: two calls of five side by side
    assert first.results == [f"pred:{t}" for t in big]
    assert second.results == [f"pred:{t}" for t in huge]  # answered once, whole, in order
    huge_calls = sorted(model.calls[2:], key=lambda call: huge.index(call[0]))  # calls side by side start in any order
    assert all(len(call) <= 64 for call in huge_calls) and [t for c in huge_calls for t in c] == huge
    assert model.most_in_flight <= 2


def test_a_failing_part_fails_its_whole_request_and_only_that():
    model = FakeModel()
    cut = ["a0", "a1", "boom", "a3"]

    async def main():
        async with Batcher(model.predict, max_texts=64, max_wait_s=0, concurrency=2) as b:
            await idle(b)
            failed = await ask_all(b, [cut])
            return failed, await b.submit(["later"])

    (failed,), later = run(main())
    assert sorted(model.calls[:2]) == [["a0", "a1"], ["boom", "a3"]]  # side by side: either may start first
    assert isinstance(failed, ValueError)  # not an answer with holes
    assert later.results == ["pred:later"]


def test_shutdown_fails_the_callers_of_every_call_in_flight():
    model = FakeModel(hold=True)

    async def main():
        b = Batcher(model.predict, max_texts=1, max_wait_s=0, concurrency=2)
        b.start()
        first = asyncio.ensure_future(b.submit(["first"]))
        second = asyncio.ensure_future(b.submit(["second"]))
        await until(lambda: model.in_flight == 2)
        await b.close()
        return await asyncio.gather(first, second, return_exceptions=True)

    try:
        outcomes = run(main())
    finally:
        model.gate.set()
    assert all(isinstance(o, BatcherClosed) for o in outcomes), outcomes


def test_the_next_call_starts_while_the_event_loop_is_busy_answering_the_last():
    """The model thread takes the next batch itself when its call ends: a loop busy with other work (in the API,
    answering the last call's callers over HTTP) does not hold up the model. Fails when the loop picks batches."""
    model = FakeModel(hold=True)

    async def main():
        async with Batcher(model.predict, max_texts=1, max_wait_s=0) as b:
            first = asyncio.ensure_future(b.submit(["first"]))
            second = asyncio.ensure_future(b.submit(["second"]))
            await until(lambda: model.in_flight == 1)
            model.gate.set()
            deadline = time.monotonic() + 5
            while len(model.calls) < 2 and time.monotonic() < deadline:
                time.sleep(0.001)  # the event loop is busy: nothing on it runs meanwhile
            calls_while_busy = list(model.calls)
            return calls_while_busy, await asyncio.gather(first, second)

    try:
        calls_while_busy, answers = run(main())
    finally:
        model.gate.set()
    assert calls_while_busy == [["first"], ["second"]]
    assert [a.results for a in answers] == [["pred:first"], ["pred:second"]]


def test_close_can_wait_for_a_model_call_still_running_to_end():
    """A process about to exit waits (bounded) for the model thread: its callers are failed at once all the same."""
    model = FakeModel(hold=True)

    async def main():
        b = Batcher(model.predict, max_texts=1, max_wait_s=0)
        b.start()
        running = asyncio.ensure_future(b.submit(["running"]))
        await until(lambda: model.in_flight == 1)
        threading.Timer(0.3, model.gate.set).start()  # the call ends 0.3 s from now
        t0 = time.monotonic()
        await b.close(wait_s=5)
        waited = time.monotonic() - t0
        outcome = await asyncio.gather(running, return_exceptions=True)
        return waited, outcome, [t.is_alive() for t in b._threads]

    try:
        waited, outcome, alive = run(main())
    finally:
        model.gate.set()
    assert 0.2 <= waited < 4, waited  # it waited for the call, not for the whole allowance
    assert alive and not any(alive) and isinstance(outcome[0], BatcherClosed)


class KeepsGoneCallers(Batcher):
    """Leaves cancelled requests in the queue until a batch is cut, as when a caller is cancelled on the loop
    between the model thread's clean-up and its cut (a narrow window, made certain here)."""

    def _drop_gone(self) -> None:
        pass


def test_a_batch_whose_callers_all_went_away_is_not_a_model_call():
    model = FakeModel()
    seen: list[int] = []

    async def main():
        async with KeepsGoneCallers(
            model.predict, max_texts=64, max_wait_s=0.05, on_batch=lambda r, texts, s: seen.append(texts)
        ) as b:
            gone = asyncio.ensure_future(b.submit(["gone"]))
            await asyncio.sleep(0.01)
            gone.cancel()
            await asyncio.sleep(0.1)  # its batch came due, empty
            return await b.submit(["later"])

    assert run(main()).results == ["pred:later"]
    assert model.calls == [["later"]] and seen == [1]  # no empty call, no empty batch in the histogram


def test_submit_before_start_is_refused():
    async def main():
        with pytest.raises(BatcherClosed):
            await Batcher(lambda texts: texts, max_texts=1, max_wait_s=0).submit(["x"])

    run(main())


class HalvedModel:
    """A model call in two halves (``TwoStage``): ``start`` records the call; ``finish`` waits for that call's own
    gate, as a spread call waits for another session's last forward. A fake for the same reason as FakeModel."""

    def __init__(self):
        self.started: list[list[str]] = []
        self.gates: list[threading.Event] = []
        self.finished: list[int] = []

    def start(self, texts: list[str]) -> int:
        self.gates.append(threading.Event())
        self.started.append(list(texts))
        return len(self.started) - 1

    def finish(self, call: int) -> list[str]:
        assert self.gates[call].wait(10)
        self.finished.append(call)
        return [f"pred:{t}" for t in self.started[call]]


def test_a_model_thread_starts_its_next_call_while_the_last_is_finishing_and_no_further():
    """The model thread takes and starts the next batch while its last call's other half is still running, each
    caller still gets its own answers, and a third call waits until one of the two is answered."""
    model = HalvedModel()

    async def main():
        async with Batcher(TwoStage(model.start, model.finish), max_texts=64, max_wait_s=0) as b:
            first = asyncio.ensure_future(b.submit(["a"]))
            await until(lambda: len(model.started) == 1)
            second = asyncio.ensure_future(b.submit(["b1", "b2"]))
            await until(lambda: len(model.started) == 2)  # started while the first is not finished
            third = asyncio.ensure_future(b.submit(["c"]))
            await asyncio.sleep(0.1)
            held = (len(model.started), first.done(), second.done())
            model.gates[0].set()
            answered_first = (await first).results
            await until(lambda: len(model.started) == 3)  # its slot came back: the third call starts
            model.gates[1].set()
            model.gates[2].set()
            return held, answered_first, (await second).results, (await third).results

    held, first, second, third = run(main())
    assert held == (2, False, False)  # two calls under way, the third waits for a slot
    assert (first, second, third) == (["pred:a"], ["pred:b1", "pred:b2"], ["pred:c"])
    assert model.finished == [0, 1, 2]


def test_an_error_starting_a_call_fails_that_batch_only():
    model = HalvedModel()

    def start(texts: list[str]) -> int:
        if "boom" in texts:
            raise ValueError("tokenizer failed")
        call = model.start(texts)
        model.gates[call].set()
        return call

    async def main():
        async with Batcher(TwoStage(start, model.finish), max_texts=64, max_wait_s=0) as b:
            failed = await asyncio.gather(b.submit(["boom"]), return_exceptions=True)
            return failed[0], (await b.submit(["fine"])).results

    failed, fine = run(main())
    assert isinstance(failed, ValueError) and fine == ["pred:fine"]


def test_close_fails_both_calls_under_way_and_the_one_waiting_for_a_slot_and_every_thread_ends():
    model = HalvedModel()

    async def main():
        b = Batcher(TwoStage(model.start, model.finish), max_texts=64, max_wait_s=0)
        b.start()
        first = asyncio.ensure_future(b.submit(["a"]))
        await until(lambda: len(model.started) == 1)
        second = asyncio.ensure_future(b.submit(["b"]))
        await until(lambda: len(model.started) == 2)
        third = asyncio.ensure_future(b.submit(["c"]))  # queued: the model thread waits for a slot
        await asyncio.sleep(0.05)
        threading.Timer(0.2, lambda: [gate.set() for gate in model.gates]).start()
        await b.close(wait_s=5)
        outcomes = await asyncio.gather(first, second, third, return_exceptions=True)
        return outcomes, [t.is_alive() for t in b._threads], len(model.started)

    outcomes, alive, started = run(main())
    assert all(isinstance(o, BatcherClosed) for o in outcomes)
    assert alive and not any(alive) and started == 2  # the queued call was never started
