"""Dynamic batching for ``POST /classify``: concurrent requests share one model call.

Why: a forward pass on a few dozen short headlines costs little more than on one, so eight clients that
each send one headline used to queue behind each other for eight model calls. Here every request joins a
queue, and one worker task makes ONE ``predict(all_texts)`` call for the queued requests as soon as they add
up to ``max_texts`` or the oldest of them has waited ``max_wait_s``, whichever comes first. While the model
runs, new requests gather for the next call, so batches grow by themselves under load, and at idle a lone
request waits at most ``max_wait_s`` before its call starts.

The rules, each of which a caller relies on:

* A batch holds whole requests in arrival order, never a part of one; a request with more than
  ``max_texts`` texts runs alone. Each caller gets back exactly its own slice of the predictions, in order.
* A model call that raises (or answers the wrong number of texts) fails the requests of that batch only,
  each with the error; the worker goes on with the next batch.
* A caller that goes away (its task cancelled) is dropped from the queue, or its answer discarded.
* ``close()`` fails every queued and in-flight caller with :class:`BatcherClosed`, so nobody waits for a
  model that will not answer, and later ``submit`` calls fail at once the same way.

The model runs in a one-thread executor: never on the event loop (health checks keep answering while it
works) and never two calls at once (one model, one batch at a time). Pure asyncio plus a callable, so it is
tested without HTTP or a model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
    seconds: float  # duration of the model call that answered (shared by its whole batch)
    batch_texts: int  # texts in that model call


@dataclass(slots=True)
class _Request(Generic[R]):
    texts: list[str]
    future: asyncio.Future[Answer[R]]
    queued_at: float  # loop.time()


class Batcher(Generic[R]):
    """Collects ``submit(texts)`` calls into ``predict`` calls of at most ``max_texts`` texts (see the module)."""

    def __init__(
        self,
        predict: Callable[[list[str]], Sequence[R]],
        max_texts: int,
        max_wait_s: float,
        on_batch: BatchObserver | None = None,
        name: str = "classify",
    ):
        if max_texts < 1 or max_wait_s < 0:
            raise ValueError(f"max_texts must be >= 1 and max_wait_s >= 0 (got {max_texts}, {max_wait_s})")
        self.predict, self.max_texts, self.max_wait_s = predict, max_texts, max_wait_s
        self.on_batch = on_batch
        self.name = name
        self._queue: deque[_Request[R]] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"finsent-{name}")
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
        while True:
            await self._until_due()
            batch = self._take()
            if batch:
                await self._answer(batch)

    async def _until_due(self) -> None:
        """Return once a batch is due: ``max_texts`` texts queued, or the oldest queued request's wait is over."""
        loop = asyncio.get_running_loop()
        while True:
            self._drop_gone()
            timeout: float | None = None
            if self._queue:
                if sum(len(r.texts) for r in self._queue) >= self.max_texts:
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

    def _take(self) -> list[_Request[R]]:
        """Whole requests from the front, in order, up to ``max_texts`` texts; the first is always taken (alone
        if it is larger than that)."""
        batch: list[_Request[R]] = []
        n = 0
        while self._queue:
            request = self._queue[0]
            if request.future.done():
                self._queue.popleft()
                continue
            if batch and n + len(request.texts) > self.max_texts:
                break
            batch.append(self._queue.popleft())
            n += len(request.texts)
            if n >= self.max_texts:
                break
        return batch

    async def _answer(self, batch: list[_Request[R]]) -> None:
        """One model call for the batch, off the loop; each caller gets its slice, or the call's error."""
        texts = [t for request in batch for t in request.texts]
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
    def _split_back(batch: list[_Request[R]], predictions: Sequence[R], seconds: float) -> None:
        """Caller k gets predictions[offset_k : offset_k + len(texts_k)]: the batch is its requests back to back."""
        offset = 0
        for request in batch:
            end = offset + len(request.texts)
            if not request.future.done():
                request.future.set_result(Answer(list(predictions[offset:end]), seconds, len(predictions)))
            offset = end

    @staticmethod
    def _fail(requests: Iterable[_Request[R]], err: BaseException) -> None:
        for request in requests:
            if not request.future.done():
                request.future.set_exception(err)


__all__ = ["Answer", "Batcher", "BatcherClosed"]
