"""Dynamic batching for ``POST /classify``: concurrent requests share one model call.

Why: a forward pass on a few dozen short headlines costs little more than on one, so eight clients that
each send one headline used to queue behind each other for eight model calls. Here every request joins a
queue, and one worker task makes ONE ``predict(all_texts)`` call for the queued requests as soon as they add
up to ``max_texts`` or the oldest of them has waited ``max_wait_s``, whichever comes first. While the model
runs, new requests gather for the next call, so batches grow by themselves under load, and at idle a lone
request waits at most ``max_wait_s`` before its call starts.

The rules, each of which a caller relies on:

* A batch holds requests in arrival order. With one free call slot it holds whole requests only, and a
  request of more than ``max_texts`` texts runs alone and whole. With several free slots, what is queued is
  shared among them, and a request larger than a slot's share is cut into consecutive parts, one per call
  (once cut, none of its parts is over ``max_texts``), so that a lone bulk request keeps every core busy as
  well. Each caller gets back exactly its own predictions, in order, once every part of its request is answered.
* A model call that raises (or answers the wrong number of texts) fails the requests of that batch only,
  each with the error (a request cut into parts fails with the first part that fails); the worker goes on with
  the next batch.
* A caller that goes away (its task cancelled) is dropped from the queue, or its answer discarded.
* ``close()`` fails every queued and in-flight caller with :class:`BatcherClosed`, so nobody waits for a
  model that will not answer, and later ``submit`` calls fail at once the same way.

The model runs in an executor of ``concurrency`` threads, never on the event loop (health checks keep
answering while it works), with at most ``concurrency`` calls at once: a batch is only collected once a
call slot is free, so while every slot is busy new requests gather for the next call. One slot is one batch
at a time. Several slots pay on a small CPU: eight single-headline clients make calls of a few texts, and
ONNX Runtime splits such a call's small matrices over its threads badly, while two single-threaded calls side
by side keep both cores busy (see ``web.classify_concurrency``). ``predict`` must then be safe to call from
several threads (``Classifier.predict`` is). Pure asyncio plus a callable, so it is tested without HTTP or a
model.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from finsent.errors import BatcherClosed

R = TypeVar("R")
# (requests, texts, model seconds) of each model call that answered: for the batch-size histogram
BatchObserver = Callable[[int, int, float], None]

log = logging.getLogger("finsent.web.batcher")


@dataclass(frozen=True, slots=True)
class Answer(Generic[R]):
    """One caller's share of a model call."""

    results: list[R]  # one per text of the request, in the request's order
    seconds: float  # duration of the model call that answered (shared by its whole batch; cut: the longest part's)
    batch_texts: int  # texts in that model call (cut: the largest part's call)


@dataclass(slots=True)
class _Request(Generic[R]):
    texts: list[str]
    future: asyncio.Future[Answer[R]]
    queued_at: float  # loop.time()
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
    """Texts ``start:end`` of a request: the whole of it unless it was cut to share it among call slots."""

    request: _Request[R]
    start: int
    end: int

    @property
    def texts(self) -> list[str]:
        return self.request.texts[self.start : self.end]


class Batcher(Generic[R]):
    """Collects ``submit(texts)`` calls into ``predict`` calls of at most ``max_texts`` texts (see the module)."""

    def __init__(
        self,
        predict: Callable[[list[str]], Sequence[R]],
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
        self.predict, self.max_texts, self.max_wait_s = predict, max_texts, max_wait_s
        self.concurrency = concurrency
        self.on_batch = on_batch
        self.name = name
        self._queue: deque[_Request[R]] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"finsent-{name}")
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Start the worker task on the running loop (call once, from inside it)."""
        if self._worker is not None:
            raise RuntimeError("batcher already started")
        self._worker = asyncio.get_running_loop().create_task(self._run(), name=f"finsent-{self.name}-batcher")
        self._worker.add_done_callback(self._worker_ended)

    async def close(self) -> None:
        """Stop: queued and in-flight callers get :class:`BatcherClosed`; a model call already running in the
        thread finishes there, unanswered (a thread cannot be interrupted)."""
        if self._closed:
            return
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.wait([self._worker])  # not `await worker`: that would swallow a cancel of close() itself
        self._fail(self._queue, BatcherClosed(f"{self.name} batcher shut down"))
        self._queue.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("batcher closed", extra={"batcher": self.name})

    async def __aenter__(self) -> Batcher[R]:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        """A worker that died of a bug must not leave callers waiting forever: fail them and refuse new ones."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("batcher worker died", exc_info=task.exception(), extra={"batcher": self.name})
        self._closed = True
        self._fail(self._queue, BatcherClosed(f"{self.name} batcher failed: {task.exception()!r}"))
        self._queue.clear()

    # ----------------------------------------------------------------------------------------------- callers

    async def submit(self, texts: Sequence[str]) -> Answer[R]:
        """Wait for the predictions of ``texts`` (in order), made in one model call with other callers' texts."""
        if self._closed or self._worker is None:
            raise BatcherClosed(f"{self.name} batcher is not running")
        if not texts:
            return Answer([], 0.0, 0)
        loop = asyncio.get_running_loop()
        request: _Request[R] = _Request(list(texts), loop.create_future(), loop.time())
        self._queue.append(request)
        self._wakeup.set()
        return await request.future  # a cancelled caller cancels its future: the worker then skips it

    # ------------------------------------------------------------------------------------------------ worker

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        calls: set[asyncio.Task[None]] = set()

        def call_ended(batch: list[_Part[R]], task: asyncio.Task[None]) -> None:
            calls.discard(task)
            slots.release()
            if not task.cancelled() and task.exception() is not None:  # a bug past the model call: answer anyway
                log.error("batch answer failed", exc_info=task.exception(), extra={"batcher": self.name})
                self._fail(batch, BatcherClosed(f"{self.name} batcher failed: {task.exception()!r}"))

        try:
            while True:
                await slots.acquire()  # a free call slot first: meanwhile requests gather for the next batch
                await self._until_due()
                # Share what is queued among the free slots: eight queued headlines and two idle slots make two
                # calls of four side by side, not one of eight beside an idle core.
                free = self.concurrency - len(calls)
                batch = self._take(min(self.max_texts, -(-self._queued_texts() // free)), cut=free > 1)
                if not batch:
                    slots.release()
                    continue
                call = asyncio.get_running_loop().create_task(self._answer(batch))
                calls.add(call)
                call.add_done_callback(functools.partial(call_ended, batch))
        finally:  # shut down (or died): the calls in flight fail their callers (see _answer)
            for call in list(calls):
                call.cancel()
            if calls:
                await asyncio.wait(calls)

    async def _until_due(self) -> None:
        """Return once a batch is due: ``max_texts`` texts queued, or the oldest queued request's wait is over."""
        loop = asyncio.get_running_loop()
        while True:
            self._drop_gone()
            timeout: float | None = None
            if self._queue:
                if self._queued_texts() >= self.max_texts:
                    return
                timeout = self._queue[0].queued_at + self.max_wait_s - loop.time()
                if timeout <= 0:
                    return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                pass  # the oldest's wait is over: checked at the top

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

    async def _answer(self, batch: list[_Part[R]]) -> None:
        """One model call for the batch, off the loop; each caller gets its slice, or the call's error."""
        texts = [t for part in batch for t in part.texts]
        t0 = time.perf_counter()
        try:
            predictions = await asyncio.get_running_loop().run_in_executor(self._executor, self.predict, texts)
            if len(predictions) != len(texts):
                raise RuntimeError(f"model answered {len(predictions)} predictions for {len(texts)} texts")
        except asyncio.CancelledError:
            self._fail(batch, BatcherClosed(f"{self.name} batcher shut down during the model call"))
            raise
        except Exception as err:  # noqa: BLE001 - a failing model must answer the waiting requests, not kill the batcher
            log.warning(
                "model call failed: its batch's requests get the error",
                extra={"batcher": self.name, "requests": len(batch), "texts": len(texts), "error": repr(err)},
            )
            self._fail(batch, err)
            return
        seconds = time.perf_counter() - t0
        self._split_back(batch, predictions, seconds)
        log.debug(
            "batch answered",
            extra={"batcher": self.name, "requests": len(batch), "texts": len(texts), "seconds": round(seconds, 4)},
        )
        if self.on_batch is not None:
            self.on_batch(len(batch), len(texts), seconds)

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


__all__ = ["Answer", "Batcher", "BatcherClosed"]
