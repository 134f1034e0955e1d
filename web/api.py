"""``finsent serve``: the HTTP API and the analysts' live dashboard, over the classifier and the stream's outputs.

FastAPI for the typed request/response models and the OpenAPI schema. Limits are enforced before any
work: the body size (413, counted on the bytes as they arrive, so a chunked upload cannot be buffered whole),
the batch size and text length (422 naming the field). The classifier is loaded once at start and called
in model threads of the batcher (``web.classify_concurrency`` of them, each starting a call while finishing
its last one), so the event loop keeps answering health checks during inference.
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

This module is the composition root: ``build_api`` makes the state (``finsent.web.state``), adds the
middleware and includes the routers (``finsent.web.routes``); ``serve`` runs it under uvicorn.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.routing import Route

from finsent import http
from finsent.http import BodyLimit, RequestGuard, metrics_route_app
from finsent.settings import Settings, setting_label
from finsent.web import routes
from finsent.web.cases import cases_routes
from finsent.web.guard import guard_policy
from finsent.web.routes import STATIC_DIR
from finsent.web.state import ApiMetrics, ApiState, api_model
from finsent.web.views import StreamViews

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def build_api(
    settings: Settings, load_classifier, views: StreamViews | None = None, follow_topics: bool = True
) -> FastAPI:
    """``load_classifier()`` returns a ``finsent.model.Classifier`` (called once, at start). ``views`` are
    filled from the output topics by a background task unless ``follow_topics`` is False."""
    state = ApiState(settings, load_classifier, views if views is not None else StreamViews(), follow_topics)
    metrics = state.metrics
    # No /docs or /redoc: FastAPI's pages load their JS from a CDN, and finsent must work offline.
    app = FastAPI(
        title="finsent",
        version="1",
        lifespan=state.lifespan,
        docs_url=None,
        redoc_url=None,
        description="Financial-news sentiment: classify headlines; scored items, windows and alerts.",
    )
    app.state.api = state

    # SecureAndMeasure is added last, so it is the outermost: RequestGuard's 403 and BodyLimit's 413/400 answers
    # get the headers and are measured too; a refused request's body is never read.
    app.add_middleware(BodyLimit, max_bytes=settings.web.max_body_bytes)
    app.add_middleware(RequestGuard, **guard_policy(settings))
    app.add_middleware(SecureAndMeasure, metrics=metrics)

    app.add_exception_handler(RequestValidationError, validation_error)
    # an ASGI app, not a request handler: a Route tells them apart (FastAPI's add_route is typed for handlers)
    app.router.routes.append(
        Route("/metrics", metrics_route_app(metrics.registry), methods=["GET"], include_in_schema=False)
    )
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(routes.pages)
    app.include_router(routes.classify_router(settings.web))
    app.include_router(routes.data)
    app.include_router(routes.feedback_routes)
    app.include_router(cases_routes)
    return app


async def validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 (``{"detail": [...]}`` naming each field), written ASCII-safe: the errors echo the input, and
    a lone surrogate escape in it (``"\\ud800"``, valid JSON) made the default UTF-8 answer fail as a 500."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    body = json.dumps({"detail": jsonable_encoder(errors)}, ensure_ascii=True)
    return Response(body, status_code=422, media_type="application/json")


class SecureAndMeasure:
    """Pure ASGI middleware: the security headers on every answer, and the request count and seconds per route.

    Why not ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` runs the app in a task of its own and
    pipes the answer through a memory stream; with an instant stand-in model that cost ~0.2 ms of CPU per
    ``/classify`` request (0.59 -> 0.37 ms on asyncio with h11), over a third of the whole HTTP stack's. Seconds run to the answer's start (its status and
    headers), so an ``/events`` stream counts its opening, not the hours it stays open. A request the app fails
    with an exception before answering is counted as a 500 (the server's error handler answers it outside).
    """

    def __init__(self, app: Any, metrics: ApiMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        started = False

        async def secured_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                kept = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in _SECURITY_NAMES]
                message = {**message, "headers": kept + _SECURITY_RAW}
                self._observe(scope, message["status"], t0)
            await send(message)

        try:
            await self.app(scope, receive, secured_send)
        except Exception:
            if not started:
                self._observe(scope, 500, t0)
            raise

    def _observe(self, scope: Any, status: int, t0: float) -> None:
        route = scope.get("route")
        name = route.path if route is not None else _unrouted_name(scope["path"])
        self.metrics.requests.labels(name, str(status)).inc()
        self.metrics.seconds.labels(name).observe(time.perf_counter() - t0)


_SECURITY_RAW = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS.items()]
_SECURITY_NAMES = frozenset(k for k, _ in _SECURITY_RAW)


def _unrouted_name(path: str) -> str:
    """The metrics label of a path no FastAPI route claimed: the mounted static files, the Prometheus exposition
    (a plain ASGI route, which sets no ``scope["route"]``), else ``other`` (404s): bounded cardinality."""
    if path.startswith("/static/"):
        return "/static"
    return "/metrics" if path == "/metrics" else "other"


def serve(settings: Settings, model_dir) -> None:
    from finsent.model import Classifier, artifact
    from finsent.model.backends import resolve_device

    artifact.load_meta(Path(model_dir))  # a missing or foreign model directory: one clear line now, not at startup
    # model.device=cuda without CUDA: the ConfigError's one line now, not a traceback out of uvicorn's lifespan
    resolve_device(settings.model.device)
    run(build_api(settings, lambda: Classifier.from_settings(model_dir, api_model(settings))), settings)


def run(app: FastAPI, settings: Settings) -> None:
    """Serve ``app`` on ``services.host``:``web.port`` until stopped (a taken port: one line naming the setting).
    uvicorn takes uvloop and httptools, which finsent depends on, when they import (``auto``): 0.37 -> 0.23 ms of
    CPU per ``/classify`` request against asyncio with h11 (``bench/bench_api.py``'s HTTP-stack figure, 8 clients,
    2-core CPU)."""
    # A live dashboard holds an /events stream open; do not let it hold a shutdown too. CPython's GIL switch interval
    # is kept (not model.gil_handoff_s, as the worker and the backtest): with the model thread taking the GIL back
    # at once, its calls started with fewer requests gathered (3.8 against 4.6-4.7 texts a call, two interleaved
    # pairs of bench/bench_api.py) and the API answered 274-299 against 287-314 requests/s, p99 44-46 against 37-39 ms.
    http.serve(
        app,
        settings.services.host,
        settings.web.port,
        setting_label("web", "port"),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
    )


__all__ = ["STATIC_DIR", "ApiMetrics", "build_api", "run", "serve"]
