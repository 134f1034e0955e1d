"""The web API's state, owned in one object: the classifier and its batcher, the views of the output topics,
the bounds on scarce things, the feedback producer, the metrics.

Why an object: the routes (``finsent.web.routes``) are plain module-level functions that get it by dependency
(``api_state``) instead of closures over a mutable dict inside one long ``build_api``; its ``lifespan`` loads the
model, starts the batcher and the topic follower, and stops them in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from finsent.heap import freeze_startup_objects
from finsent.kafka import FollowSkippedCollector
from finsent.model.feedback_store import read_store
from finsent.model.placement import MODEL_INFO_LABELS, calls_at_once, model_info, side_by_side
from finsent.records import Feedback
from finsent.settings import ModelChoice, Settings, Web
from finsent.web.batcher import Batcher, TwoStage
from finsent.web.views import StreamViews, follow

log = logging.getLogger("finsent.web")


class ApiMetrics:
    """What operations watch on the API: answers per route and status, latency, /classify load, live clients."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        r.register(FollowSkippedCollector("web"))  # records of the output topics the views could not take
        self.requests = Counter("finsent_api_requests_total", "HTTP answers", ["route", "status"], registry=r)
        self.seconds = Histogram(
            "finsent_api_request_seconds",
            "Time to answer (SSE: to the first byte)",
            ["route"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.classified = Counter(
            "finsent_api_classified_texts_total", "Texts classified by POST /classify", registry=r
        )
        self.live_clients = Gauge("finsent_api_live_clients", "Open /events streams (dashboards watching)", registry=r)
        self.feedback = Counter("finsent_api_feedback_total", "Corrections stored", ["published"], registry=r)
        self.classify_waiting = Gauge(
            "finsent_api_classify_waiting", "POST /classify requests running or waiting for the model", registry=r
        )
        self.batch_texts = Histogram(
            "finsent_api_classify_batch_texts",
            "Texts per model call of POST /classify (concurrent requests coalesced into one call)",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
        )
        self.busy_refusals = Counter(
            "finsent_api_busy_refusals_total",
            "Requests answered 503 because a bound (web.max_classify_waiting, web.max_event_streams) was full",
            ["route"],
            registry=r,
        )
        self.model_info = Gauge(
            "finsent_api_model_info",
            "The classifier /classify serves: its backend, the graph it runs (recipe) and whether the export gate "
            "accepted it (the worker's finsent_worker_model_info, for the API)",
            MODEL_INFO_LABELS,
            registry=r,
        )


class Slots:
    """A bounded count of requests holding something scarce (the model queue, an open stream), with its gauge.

    No lock: it is only touched from the event loop, between awaits."""

    def __init__(self, limit: int, gauge: Gauge):
        self.limit, self.held, self.gauge = limit, 0, gauge

    def take(self) -> bool:
        if self.held >= self.limit:
            return False
        self.held += 1
        self.gauge.inc()
        return True

    def release(self) -> None:
        self.held -= 1
        self.gauge.dec()


class HeldStream(StreamingResponse):
    """A streaming response that gives its slot back however it ends: finished, client gone, or headers never
    sent (a generator that never started would not run its own ``finally``)."""

    def __init__(self, content, release, **kwargs):
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


BATCHER_JOIN_S = 10.0  # on shutdown, how long a model call still running may take to end before the process exits


@dataclass
class ApiState:
    """Everything the routes share. ``load_classifier()`` is called once, in ``lifespan``."""

    settings: Settings
    load_classifier: Any
    views: StreamViews = field(default_factory=StreamViews)
    follow_topics: bool = True
    metrics: ApiMetrics = field(default_factory=ApiMetrics)
    classifier: Any = None
    batcher: Batcher | None = None
    producer: Any = None

    def __post_init__(self) -> None:
        w = self.settings.web
        self.token = w.token.get_secret_value().encode() if w.token else None
        self.classify_slots = Slots(w.max_classify_waiting, self.metrics.classify_waiting)
        self.stream_slots = Slots(w.max_event_streams, self.metrics.live_clients)

    def _loaded_for_calls(self) -> Any:
        """The classifier, with a session per model call side by side built (off the event loop: ~0.1 s each)."""
        clf = self.load_classifier()
        ready = getattr(clf, "ready_for_calls", None)  # a stand-in without a model (tests of other routes) has none
        if ready is not None:
            ready(calls_at_once(clf, self.settings.web.classify_concurrency))
        return clf

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(follow(self.settings, self.views)) if self.follow_topics else None
        self.classifier = clf = await asyncio.to_thread(self._loaded_for_calls)
        served = model_info(clf)  # which backend answers /classify: a benchmark of the API reads it from /metrics
        self.metrics.model_info.labels(**served).set(1)
        log.info("api model loaded", extra=served)
        freeze_startup_objects()  # the model is loaded: keep full collections off it (finsent.heap)
        self.batcher = batcher = _classify_batcher(clf, self.settings.web, self.metrics)
        batcher.start()
        try:
            yield
        finally:
            await batcher.close(wait_s=BATCHER_JOIN_S)  # requests still waiting for the model get 503, not a hang
            if task:
                task.cancel()
            if self.producer is not None:
                await self.producer.stop()

    def busy(self, route: str, limit: int) -> HTTPException:
        """503 with Retry-After, counted: a full bound answers at once rather than queueing without end."""
        self.metrics.busy_refusals.labels(route).inc()
        log.warning("busy: request refused", extra={"route": route, "limit": limit})
        return HTTPException(
            503,
            f"busy: {limit} {route} requests already in progress; retry later",
            headers={"Retry-After": str(self.settings.web.busy_retry_after_s)},
        )

    async def publish_feedback(self, fb: Feedback) -> bool:
        """Send a correction to finsent.feedback; False (never raised) when the broker is not there."""
        from finsent.kafka import aio_producer

        producer = self.producer
        try:
            if producer is None:
                producer = aio_producer(self.settings.kafka, "web", request_timeout_ms=5000)
                await asyncio.wait_for(producer.start(), 5)
                self.producer = producer
            await asyncio.wait_for(
                self.producer.send_and_wait(
                    self.settings.topics.feedback.name, key=fb.item_id.encode(), value=fb.to_json()
                ),
                10,
            )
            return True
        except Exception as err:  # noqa: BLE001 - the store has it; the topic copy is for other consumers
            # Not re-sent later: the store is what the fine-tune reads; the topic copy is for other consumers, who
            # miss this one (counted: finsent_api_feedback_total{published="false"}; said here and to the analyst)
            log.warning(
                "correction stored, not sent to the feedback topic",
                extra={
                    "item": fb.item_id,
                    "topic": self.settings.topics.feedback.name,
                    "error": f"{type(err).__name__}: {err}",
                },
            )
            self.producer = None
            if producer is not None:  # closed, not leaked: the next correction starts a fresh one
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.stop(), 5)
            return False

    async def feedback_records(self) -> tuple[list[Feedback], int]:
        """The feedback store's corrections and its count of bad lines (none yet: empty)."""
        store = self.settings.paths.feedback_store
        try:
            return await asyncio.to_thread(read_store, store)
        except FileNotFoundError:
            return [], 0
        except OSError as err:  # a folder in its place, no permission, a failing disk: say so, not a bare 500
            log.error("feedback store unreadable", extra={"path": str(store), "error": str(err)})
            raise HTTPException(503, f"feedback store {store} cannot be read: {err.strerror or err}") from None

    def predicted(self, r: Feedback, kind: str) -> str | None:
        """The model's label as recorded with the correction; for older records, the item if still in view."""
        recorded = getattr(r, f"model_{kind}")
        if recorded is not None:
            return recorded
        scored = self.views.items.get(r.item_id)
        return getattr(scored, kind) if scored is not None else None


async def api_state(request: Request) -> ApiState:
    """The FastAPI dependency every route takes its state from. ``async`` although it never waits: FastAPI runs a
    plain ``def`` dependency in its thread pool, a thread hop per request (measured: ~10 % of the event loop's
    time under 8 /classify clients, and a GIL hand-over each time)."""
    return request.app.state.api


State = Annotated[ApiState, Depends(api_state)]


def api_model(settings: Settings) -> ModelChoice:
    """The model settings the API loads its classifier with: ``web.classify_concurrency`` calls side by side
    (``finsent.model.placement``); auto (0) is one call at a time, which spreads its forwards over one
    single-threaded session per core on ONNX Runtime (``model.sessions``) unless ``model.threads`` is set."""
    return side_by_side(settings.model, settings.web.classify_concurrency or 1)


def _classify_batcher(clf: Any, w: Web, metrics: ApiMetrics) -> Batcher:
    """The batcher in front of the classifier: a model call in two halves (``Classifier.start`` / ``finish``,
    see ``finsent.web.batcher``), or ``clf.predict`` in one for a stand-in without them (tests of other routes;
    ``predict`` is looked up per call, so one without a model still starts); ``on_batch`` feeds the batch-size
    histogram."""
    calls = calls_at_once(clf, w.classify_concurrency)
    log.info("classify batcher", extra={"concurrency": calls, "max_texts": w.classify_max_batch})
    model = (
        TwoStage(lambda texts: clf.start(clf.encode(texts)), lambda call: clf.finish(call))
        if all(hasattr(clf, name) for name in ("encode", "start", "finish"))
        else (lambda texts: clf.predict(texts))
    )
    return Batcher(
        model,
        max_texts=w.classify_max_batch,
        max_wait_s=w.classify_max_wait_ms / 1000,
        on_batch=lambda requests, texts, seconds: metrics.batch_texts.observe(texts),
        concurrency=calls,
    )
