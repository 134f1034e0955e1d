"""``finsent serve``: the HTTP API and the analysts' live dashboard, over the classifier and the stream's outputs.

FastAPI for the typed request/response models and the OpenAPI schema. Limits are enforced before any
work: the body size (413, counted on the bytes as they arrive, so a chunked upload cannot be buffered whole),
the batch size and text length (422 naming the field). The classifier is loaded once at start and called
in worker threads (``web.classify_concurrency`` calls at once, each its own batch), so the event loop keeps
answering health checks during inference.
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

import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles

from finsent.http import BodyLimit, metrics_route_app
from finsent.settings import Settings
from finsent.web import routes
from finsent.web.cases import cases_routes
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

    # Added first, so it runs inside the middleware below: its 413/400 answers get headers and are measured.
    app.add_middleware(BodyLimit, max_bytes=settings.web.max_body_bytes)

    @app.middleware("http")
    async def secure_and_measure(request: Request, call_next):
        """Security headers on every answer, metrics per route (the body limit is BodyLimit, inside this)."""
        t0 = time.perf_counter()
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        route = request.scope.get("route")
        name = route.path if route is not None else _unrouted_name(request.url.path)
        metrics.requests.labels(name, str(response.status_code)).inc()
        metrics.seconds.labels(name).observe(time.perf_counter() - t0)
        return response

    app.add_route("/metrics", metrics_route_app(metrics.registry), methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(routes.pages)
    app.include_router(routes.classify_router(settings.web))
    app.include_router(routes.data)
    app.include_router(routes.feedback_routes)
    app.include_router(cases_routes)
    return app


def _unrouted_name(path: str) -> str:
    """The metrics label of a path no FastAPI route claimed: the mounted static files, the Prometheus exposition
    (a plain ASGI route, which sets no ``scope["route"]``), else ``other`` (404s): bounded cardinality."""
    if path.startswith("/static/"):
        return "/static"
    return "/metrics" if path == "/metrics" else "other"


def serve(settings: Settings, model_dir) -> None:
    import uvicorn

    from finsent.model import Classifier, artifact

    artifact.load_meta(Path(model_dir))  # a missing or foreign model directory: one clear line now, not at startup
    app = build_api(settings, lambda: Classifier.from_settings(model_dir, api_model(settings)))
    # A live dashboard holds an /events stream open; do not let it hold a shutdown too.
    uvicorn.run(
        app,
        host=settings.services.host,
        port=settings.web.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
    )


__all__ = ["STATIC_DIR", "ApiMetrics", "build_api", "serve"]
