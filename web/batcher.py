"""Dynamic batching for ``POST /classify``: concurrent requests share one model call.

Why: a forward pass on a few dozen short headlines costs little more than on one, so eight clients that
each send one headline used to queue behind each other for eight model calls. Here every request joins a
queue, and a model thread takes ONE model call's worth of queued requests as soon as they
add up to ``max_texts`` or the oldest of them has waited ``max_wait_s``, whichever comes first. While the
model runs, new requests gather for the next call, so batches grow by themselves under load, and at idle a
lone request waits at most ``max_wait_s`` before its call starts.

The rules, each of which a caller relies on:

* A batch holds requests in arrival order. With one idle model thread it holds whole requests only, and a
  request of more than ``max_texts`` texts runs alone and whole. With several idle threads, what is queued is
  shared among them, and a request larger than a thread's share is cut into consecutive parts, one per call
  (once cut, none of its parts is over ``max_texts``), so that a lone bulk request keeps every core busy as
  well. Each caller gets back exactly its own predictions, in order, once every part of its request is answered.
* A model call that raises (or answers the wrong number of texts) fails the requests of that batch only,
  each with the error (a request cut into parts fails with the first part that fails); its thread goes on with
  the next batch.
* A caller that goes away (its task cancelled) is dropped from the queue, or its answer discarded.
* ``close()`` fails every queued caller and every caller of a call still running with :class:`BatcherClosed`,
  so nobody waits for a model that will not answer, and later ``submit`` calls fail at once the same way (a
  call that had ended just before still answers its callers: its answers were already on their way).

The model runs in ``concurrency`` model threads, never on the event loop (health checks keep answering while
it works). Each thread *pulls*: the moment it may, it takes the next batch itself, under a lock it shares with
``submit``, without waiting for the loop. Why: when the loop chose each batch, every call waited for the loop to
answer the previous call's callers over HTTP and to come round to the queue; under 8 single-headline clients on 2
cores that gap between calls was 2.2 ms of each ~15 ms (14 % of the cores idle; 250-278 against 277-302
requests/s pulled, interleaved).

A call comes in two halves (``TwoStage``; a plain ``predict`` is all first half). The model thread *starts* it:
tokenizing and its own share of the forwards, which ``Classifier.start`` spreads over one single-threaded
session per core. A finishing thread of its own then waits for the other sessions' shares, makes the predictions
and hands them to the loop, while the model thread takes its next batch and starts it on its core at once; its
forwards on the other session queue behind the last call's. Why: a call of a few headlines cut into one forward
per core rarely ends together (a tail of ~4.4 ms of each ~14 ms call with one core idle, traced), and the
model thread used to wait out that tail. A model thread has at most two calls under way (one finishing, one
starting): more would only queue forwards and latency. Its slot is given back before its callers hear back, so
that a request one of them sends in reply finds the model thread free to take it (with several model threads,
another may take it first). Interleaved with the batcher
before it on 2 cores (8 single-headline clients): 278/266/280 -> 290/315/306 requests/s, 15-20 % -> 11-14 % of
the cores idle (bench/results/api-two-halves-ab/).

More than one model thread rarely pays on a small CPU: eight single-headline clients make calls of a few texts,
and two single-threaded calls side by side keep both cores busy but in calls of ~2 texts that cost more per text
than one call spread over both cores (see ``web.classify_concurrency``). ``predict`` (or ``start``) must then be
safe to call from several threads (``Classifier``'s are). Pure threading plus callables, so it is tested without
HTTP or a model.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from queue import SimpleQueue
from typing import Any, Generic, TypeVar

from finsent.errors import BatcherClosed
from finsent.osthreads import name_os_thread

R = TypeVar("R")
C = TypeVar("C")
# (requests, texts, model seconds) of each model call that answered: for the batch-size histogram
BatchObserver = Callable[[int, int, float], None]

log = logging.getLogger("finsent.web.batcher")

# Calls a model thread may have under way (started, not yet finished). A third, interleaved with two on 2 cores
# (8 single-headline clients, bench/results/api-three-calls-ab/): 274-288 against 269-309 requests/s, p99 higher.
# Nor are a call's callers answered before all its forwards end (those of the model thread's own share, at once):
# they come back sooner to smaller calls, 228-238 against 252-299 requests/s (bench/results/api-early-answers-ab/).
_CALLS_PER_THREAD = 2


@dataclass(frozen=True, slots=True)
class Answer(Generic[R]):
    """One caller's share of a model call."""

    results: list[R]  # one per text of the request, in the request's order
    seconds: float  # the model call's time, started to finished (shared by its batch; cut: the longest part's)
    batch_texts: int  # texts in that model call (cut: the largest part's call)


@dataclass(slots=True)
class _Request(Generic[R]):
    texts: list[str]
    future: asyncio.Future[Answer[R]]
    queued_at: float  # time.monotonic(): the model threads compare it with their own clock
    taken: int = 0  # texts handed to model calls so far: a request is queued until all are taken
    answered: int = 0  # texts whose predictions are in ``results``
    results: list[R | None] = field(default_factory=list)
    seconds: float = 0.0
    batch_texts: int = 0

    def receive(self, start: int, predictions: Sequence[R], seconds: float, batch_texts: int) -> None:
        """One part's predictions; the caller's answer once the last part is in."""
        if self.future.done():  # gone, or failed by another part
            return
        if not self.results:
            self.results = [None] * len(self.texts)
        self.results[start : start + len(predictions)] = predictions
        self.answered += len(predictions)
        self.seconds, self.batch_texts = max(self.seconds, seconds), max(self.batch_texts, batch_texts)
        if self.answered == len(self.texts):
            self.future.set_result(Answer(self.results, self.seconds, self.batch_texts))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class _Part(Generic[R]):
    """Texts ``start:end`` of a request: the whole of it unless it was cut to share it among model threads."""

    request: _Request[R]
    start: int
    end: int

    @property
    def texts(self) -> list[str]:
        return self.request.texts[self.start : self.end]


@dataclass(frozen=True, slots=True)
class TwoStage(Generic[C, R]):
    """A model call in two halves: ``start(texts)`` on the model thread, which on return may leave part of the call
    running elsewhere (``Classifier.start``: a spread call's other sessions), and ``finish(call)`` on the
    finishing thread, which waits for that part and returns the predictions (see the module)."""

    start: Callable[[list[str]], C]
    finish: Callable[[C], Sequence[R]]


@dataclass(slots=True)
class _ModelThread:
    """What the batcher knows of one model thread (under its lock): calls it has under way, and whether it is
    waiting for a batch."""

    under_way: int = 0
    waiting: bool = False

    @property
    def idle(self) -> bool:
        """Waiting for a batch, and free to start one: what is queued is shared among such threads."""
        return self.waiting and self.under_way < _CALLS_PER_THREAD


@dataclass(slots=True)
class _Started(Generic[R]):
    """A batch whose model call a model thread started (or the error starting it raised), to be finished."""

    batch: list[_Part[R]]
    call: object = None
    error: BaseException | None = None
    seconds: float = 0.0  # spent starting it


class Batcher(Generic[R]):
    """Collects ``submit(texts)`` calls into ``predict`` calls of at most ``max_texts`` texts (see the module)."""

    def __init__(
        self,
        predict: Callable[[list[str]], Sequence[R]] | TwoStage[Any, R],
        max_texts: int,
        max_wait_s: float,
        on_batch: BatchObserver | None = None,
        name: str = "classify",
        concurrency: int = 1,
    ):
        if max_texts < 1 or max_wait_s < 0 or concurrency < 1:
            raise ValueError(
                "max_texts and concurrency must be >= 1 and max_wait_s >= 0 "
                f"(got {max_texts}, {concurrency}, {max_wait_s})"
            )
        self.model: TwoStage[Any, R] = (
            predict if isinstance(predict, TwoStage) else TwoStage(predict, lambda predictions: predictions)
        )
        self.max_texts, self.max_wait_s = max_texts, max_wait_s
        self.concurrency = concurrency
        self.on_batch = on_batch
        self.name = name
        # Shared by the event loop (submit, close) and the model threads (which take batches): guarded by _work.
        self._work = threading.Condition()
        self._queue: deque[_Request[R]] = deque()
        self._model_threads = [_ModelThread() for _ in range(concurrency)]
        self._shares: deque[list[_Part[R]]] = deque()  # batches cut for idle threads, not yet taken by one
        self._in_flight: dict[int, list[_Part[R]]] = {}  # id(batch) -> a batch taken, not yet answered
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Start the model threads (call once, from inside the running loop: answers are handed out on it)."""
        if self._loop is not None:
            raise RuntimeError("batcher already started")
        self._loop = asyncio.get_running_loop()
        for k in range(self.concurrency):
            started: SimpleQueue[_Started[R] | None] = SimpleQueue()
            me = self._model_threads[k]
            self._threads += [
                threading.Thread(target=self._serve, args=(started, me), name=f"finsent-{self.name}-{k}", daemon=True),
                threading.Thread(
                    target=self._finishing, args=(started, me), name=f"finsent-{self.name}-fin-{k}", daemon=True
                ),
            ]
        for thread in self._threads:
            thread.start()

    async def close(self, wait_s: float = 0.0) -> None:
        """Stop: queued and in-flight callers get :class:`BatcherClosed` at once; a model call already running in
        its thread finishes there, unanswered (a thread cannot be interrupted). ``wait_s``: then wait up to that
        long for such a call to end (off the loop), so that a process about to exit does not tear the model's
        runtime down under it (the threads are daemons: a stuck model cannot hold the process up)."""
        self._shut(BatcherClosed(f"{self.name} batcher shut down"))
        if wait_s > 0:
            await asyncio.to_thread(self._join, wait_s)
        log.info("batcher closed", extra={"batcher": self.name})

    def _join(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    async def __aenter__(self) -> Batcher[R]:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _shut(self, err: BaseException) -> None:
        """On the loop: refuse new callers, stop the model threads, fail everyone still waiting with ``err``."""
        with self._work:
            if self._closed:
                return
            self._closed = True
            waiting: list[_Request[R] | _Part[R]] = list(self._queue)
            waiting += [part for batch in [*self._shares, *self._in_flight.values()] for part in batch]
            self._queue.clear()
            self._shares.clear()
            self._work.notify_all()
        self._fail(waiting, err)

    # ----------------------------------------------------------------------------------------------- callers

    async def submit(self, texts: Sequence[str]) -> Answer[R]:
        """Wait for the predictions of ``texts`` (in order), made in one model call with other callers' texts."""
        if self._closed or self._loop is None:
            raise BatcherClosed(f"{self.name} batcher is not running")
        if not texts:
            return Answer([], 0.0, 0)
        request: _Request[R] = _Request(list(texts), self._loop.create_future(), time.monotonic())
        with self._work:
            self._queue.append(request)
            self._work.notify_all()  # a model thread with two calls under way waits on the same condition
        return await request.future  # a cancelled caller cancels its future: the model threads then skip it

    # ------------------------------------------------------------------------------------------ model threads

    def _serve(self, started: SimpleQueue[_Started[R] | None], me: _ModelThread) -> None:
        """One model thread: take the next batch the moment it may, start its call, leave the rest to its finishing
        thread (``_finishing``). It may start a call while its last is still being finished (a spread call's other
        session running its last forward), never more than that: ``_CALLS_PER_THREAD``."""
        name_os_thread(f"finsent-{self.name}")
        try:
            while (batch := self._next_batch(me)) is not None:
                started.put(self._start(batch))
        except BaseException as err:  # noqa: BLE001 - a bug here must not leave callers waiting forever
            self._to_loop(self._died, err)
        finally:
            started.put(None)

    def _finishing(self, started: SimpleQueue[_Started[R] | None], me: _ModelThread) -> None:
        """One model thread's finishing thread: finish each call it started, in order, and hand the answers to the
        loop."""
        name_os_thread(f"finsent-{self.name}-fin")
        try:
            while (call := started.get()) is not None:
                outcome = self._finish(call)
                with self._work:
                    # Free to start another call (idle, if it waits for one) before its callers hear back: a
                    # request one of them sends in reply finds it so, and a bulk one is shared with it. Under the
                    # lock, so that a batch is either in flight (``close`` fails its callers) or its answers are on
                    # their way to the loop.
                    self._in_flight.pop(id(call.batch), None)
                    me.under_way -= 1
                    self._work.notify_all()
                    if not self._closed:
                        self._to_loop(self._answer, call.batch, *outcome)
        except BaseException as err:  # noqa: BLE001
            self._to_loop(self._died, err)

    def _next_batch(self, me: _ModelThread) -> list[_Part[R]] | None:
        """Block until this thread may start a call and a batch is due (``max_texts`` texts queued, or the oldest
        queued request waited ``max_wait_s``), then take it. What is queued then is cut once among the idle model
        threads, as the module says: this thread runs the first batch and leaves the others for them. None: shut
        down."""
        with self._work:
            me.waiting = True
            try:
                while True:
                    if self._closed:
                        return None
                    if me.under_way >= _CALLS_PER_THREAD:
                        self._work.wait()  # for its finishing thread
                        continue
                    if self._shares:
                        batch = self._shares.popleft()
                        break
                    self._drop_gone()
                    timeout: float | None = None
                    if self._queue:
                        timeout = self._queue[0].queued_at + self.max_wait_s - time.monotonic()
                        if self._queued_texts() >= self.max_texts or timeout <= 0:
                            batch = self._share_out()
                            if batch:  # empty: its callers went away while it was cut (cancelled on the loop)
                                break
                            continue
                    self._work.wait(timeout)
            finally:
                me.waiting = False
            me.under_way += 1
            self._in_flight[id(batch)] = batch
            return batch

    def _share_out(self) -> list[_Part[R]]:
        """Cut what is queued into one batch per idle model thread (eight queued headlines and two idle threads
        make two calls of four side by side, not one of eight beside an idle core); returns this thread's, and
        leaves the others in ``_shares`` for the threads it wakes."""
        batches = []
        for free in range(sum(t.idle for t in self._model_threads), 0, -1):
            if not self._queue:
                break
            batch = self._take(min(self.max_texts, -(-self._queued_texts() // free)), cut=free > 1)
            if batch:
                batches.append(batch)
        self._shares.extend(batches[1:])
        if len(batches) > 1:
            self._work.notify_all()  # not notify(n): threads with two calls under way wait on the same condition
        return batches[0] if batches else []

    def _start(self, batch: list[_Part[R]]) -> _Started[R]:
        """Start ``batch``'s model call in this thread (an error fails the batch once it is finished)."""
        t0 = time.perf_counter()
        try:
            call = self.model.start([t for part in batch for t in part.texts])
        except Exception as err:  # noqa: BLE001 - answered to this batch's callers, as a failing model call is
            return _Started(batch, error=err, seconds=time.perf_counter() - t0)
        return _Started(batch, call, seconds=time.perf_counter() - t0)

    def _finish(self, started: _Started[R]) -> tuple[Sequence[R] | None, BaseException | None, float]:
        """End a started call: (predictions, None, seconds) or (None, error, seconds)."""
        texts = sum(part.end - part.start for part in started.batch)
        t0 = time.perf_counter()
        try:
            if started.error is not None:
                raise started.error
            predictions = self.model.finish(started.call)
            if len(predictions) != texts:
                raise RuntimeError(f"model answered {len(predictions)} predictions for {texts} texts")
        except Exception as err:  # noqa: BLE001 - a failing model must answer the waiting requests, not kill the batcher
            return None, err, started.seconds + time.perf_counter() - t0
        return predictions, None, started.seconds + time.perf_counter() - t0

    def _to_loop(self, callback: Callable[..., None], *args: object) -> None:
        """Run ``callback(*args)`` on the loop (futures are not thread-safe); a closed loop has nobody to answer."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass

    # ------------------------------------------------------------------------------------- on the event loop

    def _answer(
        self, batch: list[_Part[R]], predictions: Sequence[R] | None, err: BaseException | None, seconds: float
    ) -> None:
        """Each caller gets its slice of the call's predictions, or the call's error."""
        texts = sum(part.end - part.start for part in batch)
        try:
            if err is not None:
                log.warning(
                    "model call failed: its batch's requests get the error",
                    extra={"batcher": self.name, "requests": len(batch), "texts": texts, "error": repr(err)},
                )
                self._fail(batch, err)
                return
            assert predictions is not None
            self._split_back(batch, predictions, seconds)
            log.debug(
                "batch answered",
                extra={"batcher": self.name, "requests": len(batch), "texts": texts, "seconds": round(seconds, 4)},
            )
            if self.on_batch is not None:
                self.on_batch(len(batch), texts, seconds)
        except Exception as bug:  # a bug past the model call: answer anyway
            log.error("batch answer failed", exc_info=bug, extra={"batcher": self.name})
            self._fail(batch, BatcherClosed(f"{self.name} batcher failed: {bug!r}"))

    def _died(self, err: BaseException) -> None:
        """A model thread that died of a bug must not leave callers waiting forever: fail them, refuse new ones."""
        log.error("batcher model thread died", exc_info=err, extra={"batcher": self.name})
        self._shut(BatcherClosed(f"{self.name} batcher failed: {err!r}"))

    # ------------------------------------------------------------------------- the queue (under self._work)

    def _drop_gone(self) -> None:
        """Forget requests whose callers went away, so they neither count towards a batch nor start its clock."""
        if any(r.future.done() for r in self._queue):
            self._queue = deque(r for r in self._queue if not r.future.done())

    def _queued_texts(self) -> int:
        return sum(len(r.texts) - r.taken for r in self._queue)

    def _take(self, limit: int, cut: bool) -> list[_Part[R]]:
        """Requests from the front, in order, up to ``limit`` texts. ``cut``: exactly up to ``limit``, cutting the
        last request taken (its rest stays first in the queue, and is cut again when it comes up); else whole
        requests only, the first always taken (alone if it is larger than that)."""
        batch: list[_Part[R]] = []
        n = 0
        while self._queue and n < limit:
            request = self._queue[0]
            if request.future.done():
                self._queue.popleft()
                continue
            left = len(request.texts) - request.taken
            cuttable = cut or request.taken > 0  # a request cut once is cut again to fit: no part over max_texts
            if batch and not cuttable and n + left > limit:
                break
            size = min(left, limit - n) if cuttable else left
            batch.append(_Part(request, request.taken, request.taken + size))
            request.taken += size
            n += size
            if request.taken == len(request.texts):
                self._queue.popleft()
        return batch

    @staticmethod
    def _split_back(batch: list[_Part[R]], predictions: Sequence[R], seconds: float) -> None:
        """Part k gets predictions[offset_k : offset_k + len(texts_k)]: the batch is its parts back to back."""
        offset = 0
        for part in batch:
            end = offset + part.end - part.start
            part.request.receive(part.start, predictions[offset:end], seconds, len(predictions))
            offset = end

    @staticmethod
    def _fail(items: Iterable[_Request[R] | _Part[R]], err: BaseException) -> None:
        for item in items:
            request = item.request if isinstance(item, _Part) else item
            if not request.future.done():
                request.future.set_exception(err)


__all__ = ["Answer", "Batcher", "BatcherClosed", "TwoStage"]
