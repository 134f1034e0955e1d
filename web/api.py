"""``finsent serve``: the HTTP API and the analysts' live dashboard, over the classifier and the stream's outputs.

FastAPI for the typed request/response models and the OpenAPI schema. Limits are enforced before any
work: the body size (413, counted on the bytes as they arrive, so a chunked upload cannot be buffered whole),
the batch size and text length (422 naming the field). The classifier is loaded once at start and called
in a worker thread, one batch at a time, so the event loop keeps answering health checks during inference.
Concurrent ``/classify`` requests are coalesced into one model call (``finsent.web.batcher``: at most
``web.classify_max_batch`` texts, started once the oldest waited ``web.classify_max_wait_ms``), so
single-headline clients share a forward pass instead of queueing for one each.
Requests waiting for the model and open ``/events`` streams are bounded: past the bound the answer is 503
with Retry-After at once, so an overload sheds load instead of queueing memory and sockets without end.

The dashboard (``/``) is plain HTML/JS/CSS from ``web/static`` (no CDN, no build step): it reads the
same JSON endpoints, and ``/events`` pushes new scored items and alerts as server-sent events, numbered so a
reconnecting browser resumes where it left off. Every response carries a strict Content-Security-Policy
(scripts only from this origin, no inline script), a second line of defence behind the dashboard's rule of
inserting headline text only as text.

(No ``from __future__ import annotations`` here: FastAPI must resolve the request model, which is built
per app from the settings' limits, from the real annotation object.)
"""

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field, StringConstraints, ValidationError

from finsent.errors import BatcherClosed
from finsent.labels import SENTIMENT_LABELS, TOPIC_LABELS
from finsent.records import Feedback, utcnow
from finsent.settings import Settings, Web
from finsent.web.batcher import Batcher
from finsent.web.views import StreamViews, follow

STATIC_DIR = Path(__file__).parent / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
SSE_POLL_S = 0.25
SSE_PING_S = 15.0

log = logging.getLogger("finsent.web")


class ApiMetrics:
    """What operations watch on the API: answers per route and status, latency, /classify load, live clients."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
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


class _BodyTooLarge(Exception):
    """Raised out of ``receive`` once a body passes the limit, so whatever reads it stops there."""


class BodyLimit:
    """Pure ASGI middleware: the body limit enforced on the bytes as they arrive.

    Checking only Content-Length let a chunked upload (which has none) be buffered whole by the JSON parser.
    Here every received chunk is counted and the request is answered 413 (connection closed) as soon as the
    count passes the limit, so at most the limit plus one chunk is ever held. A declared length over the
    limit is refused before reading anything; one that is not a number is a malformed request (400).
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refused = self._check_declared(scope)
        if refused is not None:
            return await refused(scope, receive, send)
        seen, over, started = 0, False, False

        async def counted_receive():
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message) -> None:
            nonlocal started
            if over and not started:  # the app's answer to a body it never got (FastAPI makes it 400): 413 instead
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if over and not started:
            log.info("request body cut off at the limit", extra={"path": scope.get("path"), "limit": self.max_bytes})
            await self._too_large()(scope, receive, send)

    def _check_declared(self, scope) -> Response | None:
        """413 for a declared length over the limit, 400 for one that is not a number, else None."""
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if not value.isdigit():
                    return JSONResponse(
                        {"detail": "Content-Length is not a number"}, status_code=400, headers={"Connection": "close"}
                    )
                if int(value) > self.max_bytes:
                    return self._too_large()
        return None

    def _too_large(self) -> Response:
        """Connection: close, so the server stops reading the rest of an upload it will not use."""
        return JSONResponse(
            {"detail": f"body larger than {self.max_bytes} bytes"}, status_code=413, headers={"Connection": "close"}
        )


class _Slots:
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


class _HeldStream(StreamingResponse):
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


class Scores(BaseModel):
    topic: str
    topic_probs: dict[str, float]
    sentiment: str
    sentiment_probs: dict[str, float]
    flag: str | None = Field(None, description="set when a text could not be classified normally (empty, not text)")


class ClassifyResponse(BaseModel):
    model: str = Field(description="name@version of the classifier that answered")
    results: list[Scores]
    seconds: float = Field(description="inference time of this request")


class FeedbackRequest(BaseModel):
    item_id: str = Field(min_length=1, max_length=200)
    topic: Literal[TOPIC_LABELS] | None = None  # type: ignore[valid-type]
    sentiment: Literal[SENTIMENT_LABELS] | None = None  # type: ignore[valid-type]
    who: str = Field(min_length=1, max_length=200)
    comment: str = Field(default="", max_length=2000)


def build_api(
    settings: Settings, load_classifier, views: StreamViews | None = None, follow_topics: bool = True
) -> FastAPI:
    """``load_classifier()`` returns a ``finsent.model.Classifier`` (called once, at start). ``views`` are
    filled from the output topics by a background task unless ``follow_topics`` is False."""
    views = views if views is not None else StreamViews()
    metrics = ApiMetrics()
    token = settings.web.token.get_secret_value().encode() if settings.web.token else None
    producer_box: dict = {}
    w = settings.web
    Text = Annotated[str, StringConstraints(max_length=w.max_text_chars)]  # noqa: N806 - a type, named as one

    class ClassifyRequest(BaseModel):
        texts: list[Text] = Field(min_length=1, max_length=w.max_batch, description="headlines to classify")

    state: dict = {"classifier": None, "batcher": None}
    classify_slots = _Slots(w.max_classify_waiting, metrics.classify_waiting)
    stream_slots = _Slots(w.max_event_streams, metrics.live_clients)

    def busy(route: str, limit: int) -> HTTPException:
        """503 with Retry-After, counted: a full bound answers at once rather than queueing without end."""
        metrics.busy_refusals.labels(route).inc()
        log.warning("busy: request refused", extra={"route": route, "limit": limit})
        return HTTPException(
            503,
            f"busy: {limit} {route} requests already in progress; retry later",
            headers={"Retry-After": str(w.busy_retry_after_s)},
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(follow(settings, views)) if follow_topics else None
        state["classifier"] = clf = await asyncio.to_thread(load_classifier)
        state["batcher"] = batcher = _classify_batcher(clf, w, metrics)
        batcher.start()
        try:
            yield
        finally:
            await batcher.close()  # requests still waiting for the model get 503, not a hang
            if task:
                task.cancel()
            if "producer" in producer_box:
                await producer_box["producer"].stop()

    # No /docs or /redoc: FastAPI's pages load their JS from a CDN, and finsent must work offline.
    app = FastAPI(
        title="finsent",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Financial-news sentiment: classify headlines; scored items, windows and alerts.",
    )

    # Added first, so it runs inside the middleware below: its 413/400 answers get headers and are measured.
    app.add_middleware(BodyLimit, max_bytes=w.max_body_bytes)

    @app.middleware("http")
    async def secure_and_measure(request: Request, call_next):
        """Security headers on every answer, metrics per route (the body limit is BodyLimit, inside this)."""
        t0 = time.perf_counter()
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        route = request.scope.get("route")
        name = route.path if route is not None else ("/static" if request.url.path.startswith("/static/") else "other")
        metrics.requests.labels(name, str(response.status_code)).inc()
        metrics.seconds.labels(name).observe(time.perf_counter() - t0)
        return response

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/dashboard/config")
    async def dashboard_config() -> dict:
        """What the dashboard needs to draw its controls: labels, the surge window, whether writes need a token."""
        return {
            "topics": list(TOPIC_LABELS),
            "sentiments": list(SENTIMENT_LABELS),
            "surge_window_s": settings.surge.window_s,
            "feedback_needs_token": token is not None,
        }

    @app.get("/events", include_in_schema=False)
    async def events(
        request: Request, after: Annotated[int, Query(ge=0)] = 0, last_event_id: Annotated[str | None, Header()] = None
    ) -> StreamingResponse:
        """Server-sent events: ``item`` (a ScoredItem) and ``alert`` (a SurgeAlert), each with its feed number
        as the event id. A browser's automatic reconnect sends Last-Event-ID and resumes after it."""
        cursor = int(last_event_id) if last_event_id and last_event_id.isdigit() else after

        async def _events():
            nonlocal cursor
            yield "retry: 2000\n\n"
            quiet_since = time.monotonic()
            while not await request.is_disconnected():
                entries = views.feed_after(cursor)
                for seq, kind, record in entries:
                    yield f"id: {seq}\nevent: {kind}\ndata: {json.dumps(record.to_dict(), default=str)}\n\n"
                if entries:
                    cursor, quiet_since = entries[-1][0], time.monotonic()
                elif time.monotonic() - quiet_since > SSE_PING_S:
                    yield ": ping\n\n"  # keeps proxies from closing an idle stream
                    quiet_since = time.monotonic()
                await asyncio.sleep(SSE_POLL_S)

        if not stream_slots.take():  # each stream holds a socket and a poll loop: bounded
            raise busy("/events", w.max_event_streams)
        return _HeldStream(
            _events(),
            stream_slots.release,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    too_large = {
        400: {"description": "Content-Length is not a number"},
        413: {"description": "body larger than web.max_body_bytes (declared, or counted as it arrives)"},
    }
    classify_busy = {
        503: {
            "description": "web.max_classify_waiting requests already wait for the model, or the "
            "server is shutting down; retry after the Retry-After seconds"
        }
    }

    @app.post("/classify", response_model=ClassifyResponse, responses={**too_large, **classify_busy})
    async def classify(req: ClassifyRequest) -> ClassifyResponse:
        """The texts join the next model call with other requests' (dynamic batching); ``seconds`` is that call's."""
        if not classify_slots.take():  # the model answers one batch at a time: bound the queue in front of it
            raise busy("/classify", w.max_classify_waiting)
        try:
            answer = await state["batcher"].submit(req.texts)  # a model error propagates: the usual 500
        except BatcherClosed:
            raise HTTPException(
                503, "shutting down; retry later", headers={"Retry-After": str(w.busy_retry_after_s)}
            ) from None
        finally:
            classify_slots.release()
        metrics.classified.inc(len(req.texts))
        return ClassifyResponse(
            model=state["classifier"].version,
            seconds=round(answer.seconds, 4),
            results=[
                Scores(
                    topic=p.topic,
                    topic_probs=p.topic_probs,
                    sentiment=p.sentiment,
                    sentiment_probs=p.sentiment_probs,
                    flag=p.flag,
                )
                for p in answer.results
            ],
        )

    @app.get("/items")
    async def items(
        topic: str | None = None,
        ticker: str | None = None,
        sentiment: Literal[SENTIMENT_LABELS] | None = None,  # type: ignore[valid-type]
        since: Annotated[datetime | None, Query(alias="from")] = None,
        until: Annotated[datetime | None, Query(alias="to")] = None,
        q: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict:
        """Recent scored headlines, newest first, filtered and paginated."""
        for name, value in (("from", since), ("to", until)):
            if value is not None and value.tzinfo is None:
                raise HTTPException(422, [{"loc": ["query", name], "msg": "needs a time zone", "type": "value_error"}])
        if topic is not None and topic not in TOPIC_LABELS:
            raise HTTPException(
                422, [{"loc": ["query", "topic"], "msg": f"unknown topic {topic!r}", "type": "value_error"}]
            )
        found = views.query_items(topic, ticker, sentiment, since, until, q)
        return {
            "total": len(found),
            "offset": offset,
            "seq": views.seq,  # seq: resume /events after this answer
            "items": [s.to_dict() for s in found[offset : offset + limit]],
        }

    @app.get("/windows/keys")
    async def window_keys() -> dict:
        """Every key that has windows (``all``, ``topic:…``, ``ticker:…``), busiest newest window first."""
        return {"keys": views.window_keys()}

    @app.get("/windows")
    async def windows(
        key: Annotated[str, Query(min_length=1, examples=["all", "topic:Earnings", "ticker:AAPL"])],
        width: Annotated[int | None, Query(gt=0)] = None,
        limit: Annotated[int, Query(ge=1, le=2000)] = 500,
    ) -> dict:
        """The closed windows of one key (oldest first), per rolling width."""
        series = {
            w: list(pts)[-limit:] for (k, w), pts in views.windows.items() if k == key and (width is None or w == width)
        }
        return {"key": key, "series": {str(w): [p.to_dict() for p in pts] for w, pts in sorted(series.items())}}

    @app.get("/alerts")
    async def alerts(
        state: Literal["firing", "resolved"] | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> dict:
        """Surges with their evidence headlines, newest first."""
        found = [a for a in reversed(views.alerts.values()) if state is None or a.state == state][:limit]
        return {"alerts": [a.to_dict() for a in found]}

    @app.post(
        "/feedback",
        status_code=201,
        responses={
            **too_large,
            401: {"description": "missing or wrong bearer token (when FINSENT_WEB__TOKEN is set)"},
            404: {"description": "the item id is not among the recent scored items"},
        },
    )
    async def feedback(req: FeedbackRequest, authorization: Annotated[str | None, Header()] = None) -> dict:
        """An analyst's correction: kept in the feedback store (what fine-tuning reads) and sent to finsent.feedback."""
        if token is not None and not (
            authorization
            and authorization.startswith("Bearer ")
            and hmac.compare_digest(authorization[7:].encode(), token)
        ):
            raise HTTPException(401, "missing or wrong bearer token")
        scored = views.items.get(req.item_id)
        if scored is None:
            raise HTTPException(404, f"unknown item id {req.item_id!r} (not among the recent scored items)")
        try:
            fb = Feedback(
                item_id=req.item_id,
                text=scored.item.title[:2000],
                topic=req.topic,
                sentiment=req.sentiment,
                who=req.who,
                comment=req.comment,
                at=utcnow(),
                model=scored.model,
                model_topic=scored.topic,
                model_sentiment=scored.sentiment,
            )
        except ValidationError as err:
            raise HTTPException(
                422, [{"loc": ["body"], "msg": e["msg"], "type": e["type"]} for e in err.errors()]
            ) from None
        from finsent.model.feedback import append

        await asyncio.to_thread(append, settings.paths.feedback_store, fb)
        published = await _publish_feedback(fb)
        metrics.feedback.labels(str(published).lower()).inc()
        return {"stored": True, "published": published}

    async def _publish_feedback(fb: Feedback) -> bool:
        from finsent.kafka import aio_producer

        try:
            if "producer" not in producer_box:
                producer = aio_producer(settings.kafka, "web", request_timeout_ms=5000)
                await asyncio.wait_for(producer.start(), 5)
                producer_box["producer"] = producer
            await asyncio.wait_for(
                producer_box["producer"].send_and_wait(
                    settings.topics.feedback.name, key=fb.item_id.encode(), value=fb.to_json()
                ),
                10,
            )
            return True
        except Exception:  # noqa: BLE001 - the store has it; the topic copy is for other consumers
            producer_box.pop("producer", None)
            return False

    @app.get("/feedback/stats")
    async def feedback_stats() -> dict:
        """How many corrections, and how often the model already agreed with them (per label kind)."""
        from finsent.model.feedback import read_store

        try:
            records, bad = await asyncio.to_thread(read_store, settings.paths.feedback_store)
        except FileNotFoundError:
            records, bad = [], 0
        out = {"corrections": len(records), "bad_lines": bad}
        for kind in ("topic", "sentiment"):
            pairs = [
                (getattr(r, kind), predicted)
                for r in records
                if getattr(r, kind) is not None and (predicted := _predicted(r, kind)) is not None
            ]
            out[kind] = {
                "corrections": sum(1 for r in records if getattr(r, kind) is not None),
                "compared": len(pairs),
                "model_agreed": sum(a == b for a, b in pairs),
            }
        return out

    def _predicted(r: Feedback, kind: str) -> str | None:
        """The model's label as recorded with the correction; for older records, the item if still in view."""
        recorded = getattr(r, f"model_{kind}")
        if recorded is not None:
            return recorded
        scored = views.items.get(r.item_id)
        return getattr(scored, kind) if scored is not None else None

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True}

    @app.get("/readyz", responses={503: {"description": "the model is still loading"}})
    async def readyz():
        if state["classifier"] is None:
            return JSONResponse({"ready": False, "why": "model loading"}, status_code=503)
        return {"ready": True, "model": state["classifier"].version}

    return app


def _classify_batcher(clf: Any, w: Web, metrics: ApiMetrics) -> Batcher:
    """The batcher in front of ``clf.predict``. The attribute is looked up per call, so a stand-in without a
    model (tests of other routes) still starts; ``on_batch`` feeds the batch-size histogram."""
    return Batcher(
        lambda texts: clf.predict(texts),
        max_texts=w.classify_max_batch,
        max_wait_s=w.classify_max_wait_ms / 1000,
        on_batch=lambda requests, texts, seconds: metrics.batch_texts.observe(texts),
    )


def serve(settings: Settings, model_dir) -> None:
    import uvicorn

    from finsent.model import Classifier

    m = settings.model
    app = build_api(
        settings, lambda: Classifier.load(model_dir, backend=m.backend, device=m.device, batch_size=m.batch_size)
    )
    # A live dashboard holds an /events stream open; do not let it hold a shutdown too.
    uvicorn.run(
        app,
        host=settings.services.host,
        port=settings.web.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
    )


__all__ = ["build_api", "serve"]
