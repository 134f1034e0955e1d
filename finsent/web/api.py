"""``finsent serve``: the HTTP API over the classifier (and, as #9 lands, the stream's outputs).

FastAPI for the typed request/response models and the OpenAPI schema. Limits are enforced before any
work: the body size (413), the batch size and text length (422 naming the field). The classifier is
loaded once at start and called in a worker thread, one batch at a time, so the event loop keeps
answering health checks during inference.

(No ``from __future__ import annotations`` here: FastAPI must resolve the request model, which is built
per app from the settings' limits, from the real annotation object.)
"""


import asyncio
import time
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints

from finsent.settings import Settings


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


def build_api(settings: Settings, load_classifier) -> FastAPI:
    """``load_classifier()`` returns a ``finsent.model.Classifier`` (called once, at start)."""
    w = settings.web
    Text = Annotated[str, StringConstraints(max_length=w.max_text_chars)]

    class ClassifyRequest(BaseModel):
        texts: list[Text] = Field(min_length=1, max_length=w.max_batch, description="headlines to classify")

    state: dict = {"classifier": None}
    lock = asyncio.Lock()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["classifier"] = await asyncio.to_thread(load_classifier)
        yield

    app = FastAPI(title="finsent", version="1", lifespan=lifespan,
                  description="Financial-news sentiment: classify headlines; scored items, windows and alerts.")

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > w.max_body_bytes):
            return JSONResponse({"detail": f"body larger than {w.max_body_bytes} bytes"}, status_code=413)
        return await call_next(request)

    @app.post("/classify", response_model=ClassifyResponse)
    async def classify(req: ClassifyRequest) -> ClassifyResponse:
        clf = state["classifier"]
        async with lock:
            t0 = time.perf_counter()
            preds = await asyncio.to_thread(clf.predict, req.texts)
            seconds = time.perf_counter() - t0
        return ClassifyResponse(model=clf.version, seconds=round(seconds, 4), results=[
            Scores(topic=p.topic, topic_probs=p.topic_probs, sentiment=p.sentiment, sentiment_probs=p.sentiment_probs,
                   flag=p.flag) for p in preds])

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True}

    @app.get("/readyz")
    async def readyz():
        if state["classifier"] is None:
            return JSONResponse({"ready": False, "why": "model loading"}, status_code=503)
        return {"ready": True, "model": state["classifier"].version}

    return app


def serve(settings: Settings, model_dir) -> None:
    import uvicorn

    from finsent.model import Classifier

    m = settings.model
    app = build_api(settings, lambda: Classifier.load(model_dir, backend=m.backend, device=m.device, batch_size=m.batch_size))
    uvicorn.run(app, host=settings.services.host, port=settings.web.port, log_level="warning", access_log=False)


__all__ = ["build_api", "serve"]
