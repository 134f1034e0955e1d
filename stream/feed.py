"""The model's in-tray: batches that wait while the model is busy go into it together.

Why: the model's speed on a CPU depends on how much padding it computes, and a batch sorted by token length
pads less the more texts it holds (bare ``predict`` on this project's headlines, 2 cores: ~300 texts/s in
arrival-order slices of 128, ~400 in slices of 512). Faust hands the agent 100–200 records at a time however
large ``stream.max_batch`` is, so the model call must not be tied to Faust's batch: the agent puts each
prepared batch here and goes on taking the next, and whenever the model comes free it takes everything that
waited (up to ``max_records``) as one call. A backlog therefore gets large, well-sorted model calls, and a quiet
stream still sends a lone headline at once (nothing waits for company).

Order and safety: the merged call's outputs are delivered in the order the batches were put, one delivery
after the other, and each batch's ``release`` (the agent's offset hold) runs only after its outputs are
acknowledged, so commit-after-ack holds as before. ``put`` waits while ``max_records`` already wait
(backpressure into Faust's buffer), and the model starts no new call while more than two deliveries are
outstanding beside the calls in progress. Anything unforeseen inside the feed's own tasks goes to ``on_error``
(the worker exits, crash-only): a task that died quietly would leave a worker that holds its partitions and
scores nothing.
A merged call that fails costs more to recover (the worker retries and bisects all its items); that is rare,
and the price of the large calls. The core is free of Kafka and of the model: the steps are callables, so
the tests drive it with plain coroutines.

Calls side by side (``calls`` > 1): up to ``calls`` model calls run at once (on 2 cores, two single-threaded ONNX
calls score more than one two-threaded call: ``finsent.model.placement``). A call starts as soon as one is free
and takes its share of what waits, in whole batches: ``ceil(waiting / calls)`` records (at least the oldest
batch), the rest left to the next call to come free. Why not everything: a single-threaded call is half as fast
as a call on both cores, so a pile-up (a slow poll, a burst) taken whole by one call would keep its headlines
twice as long, and whatever arrived meanwhile behind them, while the other core idles. Outputs are still
delivered in put order: a later call that finishes first waits for the earlier one's delivery.

Alone below a backlog (``infer_alone`` and ``split_from``): calls side by side drain a backlog faster, but at a
moderate rate they cost latency (each headline waits in a one-thread call, half as fast as one on all cores). So
a call that would start with no other running, while fewer than ``split_from`` records wait, goes to
``infer_alone`` (the model on all cores) with everything waiting, and no other call starts beside it; from
``split_from`` waiting records on (a backlog, a burst), or while another call runs, calls go side by side.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

B = TypeVar("B")
T = TypeVar("T")

MAX_DELIVERIES = 2  # the model starts no new call while more are outstanding (beyond one per call in progress)


def cut_for_calls(batch: Sequence[T], calls: int, min_part: int) -> list[Sequence[T]]:
    """``batch`` in up to ``calls`` consecutive parts of at least ``min_part`` each (sizes differ by one at most).

    Why: with calls side by side, a burst that arrives as one batch would go into one call on one core while the
    other idles (a caught-up stream's fetch hands over ~40 headlines every 0.1 s). Cut, its parts go to the free
    calls together; under a backlog the in-tray merges them back into large calls, so nothing is lost there."""
    ways = max(1, min(calls, len(batch) // max(1, min_part)))
    size, extra = divmod(len(batch), ways)
    parts, start = [], 0
    for k in range(ways):
        end = start + size + (1 if k < extra else 0)
        parts.append(batch[start:end])
        start = end
    return parts


class _Halted(Exception):
    """A delivery that cannot go on because an earlier step failed (that step's task reported the error)."""


class ModelFeed(Generic[B]):
    def __init__(
        self,
        infer: Callable[[B], Awaitable[B]],
        deliver: Callable[[B], Awaitable[None]],
        merge: Callable[[list[B]], B],
        size: Callable[[B], int],
        max_records: int,
        on_error: Callable[[BaseException], None],
        calls: int = 1,
        infer_alone: Callable[[B], Awaitable[B]] | None = None,
        split_from: int = 0,
    ):
        if calls < 1:
            raise ValueError("calls must be at least 1")
        self.infer, self.deliver, self.merge, self.size = infer, deliver, merge, size
        self.on_error = on_error
        self.max_records = max_records
        self.calls = calls
        # a call alone (nothing else running, fewer than split_from waiting) goes to infer_alone, if given
        self.infer_alone = infer_alone if calls > 1 and split_from > 0 else None
        self.split_from = min(split_from, max_records)  # put() waits at max_records: more would never split
        self._alone: asyncio.Task | None = None  # the call running alone now: no other starts beside it
        self._call_free = asyncio.Event()
        self._calls: set[asyncio.Task] = set()  # the model calls running now
        self._waiting: deque[tuple[B, Callable[[], None]]] = deque()
        self._waiting_records = 0
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()  # nothing waiting and nothing in the model
        self._idle.set()
        self._runner: asyncio.Task | None = None
        self._deliveries: deque[asyncio.Task] = deque()

    async def put(self, batch: B, release: Callable[[], None]) -> None:
        """Queue a prepared batch; ``release`` runs once its outputs are acknowledged. Waits while the in-tray is full."""
        while self._waiting_records >= self.max_records:
            self._room.clear()
            await self._room.wait()
        self._waiting.append((batch, release))
        self._waiting_records += self.size(batch)
        self._idle.clear()
        self._arrived.set()
        if self._runner is None:
            self._runner = self._watched(self._run())

    async def join(self) -> None:
        """Until everything put so far is classified, delivered and released; then the feed's task ends."""
        await self._idle.wait()
        while self._deliveries:
            await self._deliveries.popleft()
        if self._runner is not None and not self._waiting:
            self._runner.cancel()
            self._runner = None

    def parts_for(self, records: int) -> int:
        """Parts to cut a batch of ``records`` into before ``put``, so that a burst goes to every free call: one
        where a call alone would take it whole on all cores (two parts would be two calls one after the other)."""
        if self.infer_alone is not None and records < self.split_from:
            return 1
        return self.calls

    def _watched(self, step) -> asyncio.Task:
        task = asyncio.create_task(step)
        task.add_done_callback(self._check)
        return task

    def _check(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None and not isinstance(task.exception(), _Halted):
            self.on_error(task.exception())  # type: ignore[arg-type]

    def cancel(self) -> None:
        """Stop mid-way: what is not delivered is not released (so never committed: a fresh worker redelivers it)."""
        for task in (self._runner, *self._calls, *self._deliveries):
            if task is not None:
                task.cancel()

    def _take(self, limit: int) -> list[tuple[B, Callable[[], None]]]:
        """The oldest waiting batch and as many after it as fit in ``limit`` records together."""
        taken = [self._waiting.popleft()]
        records = self.size(taken[0][0])
        while self._waiting and records + self.size(self._waiting[0][0]) <= limit:
            taken.append(self._waiting.popleft())
            records += self.size(taken[-1][0])
        self._waiting_records -= records
        self._room.set()
        return taken

    async def _run(self) -> None:
        while True:
            if not self._waiting:
                self._idle.set()
                self._arrived.clear()
                await self._arrived.wait()
            while len(self._calls) >= (1 if self._alone is not None else self.calls):
                self._call_free.clear()
                await self._call_free.wait()
            infer_alone = self.infer_alone if not self._calls and self._waiting_records < self.split_from else None
            share = 1 if infer_alone is not None else self.calls
            taken = self._take(min(self.max_records, math.ceil(self._waiting_records / share)))
            batches = [batch for batch, _ in taken]
            call = self._watched(self._call(batches, infer_alone or self.infer))
            if infer_alone is not None:
                self._alone = call
            self._calls.add(call)
            call.add_done_callback(self._call_ended)
            previous = self._deliveries[-1] if self._deliveries else None
            self._deliveries.append(self._watched(self._deliver(call, [r for _, r in taken], previous)))
            while self._deliveries and self._deliveries[0].done():
                self._deliveries.popleft()
            if len(self._deliveries) > MAX_DELIVERIES + self.calls - 1:
                await self._deliveries[0]

    async def _call(self, batches: list[B], infer: Callable[[B], Awaitable[B]]) -> B:
        return await infer(batches[0] if len(batches) == 1 else self.merge(batches))

    def _call_ended(self, call: asyncio.Task) -> None:
        self._calls.discard(call)
        if call is self._alone:
            self._alone = None
        self._call_free.set()

    async def _deliver(
        self, call: asyncio.Task, releases: list[Callable[[], None]], previous: asyncio.Task | None
    ) -> None:
        try:
            batch = await call
            if previous is not None:
                await previous  # deliveries in the order the batches were put
        except Exception as err:  # reported by the task where it happened; nothing after it is released
            raise _Halted from err
        await self.deliver(batch)
        for release in releases:
            release()


__all__ = ["ModelFeed", "cut_for_calls"]
