"""The web API's routes, as routers over one ``ApiState`` (``finsent.web.state``) taken by dependency.

``pages``: the dashboard, its config, live events, health. ``data``: the views of the output topics (items,
windows, alerts). ``feedback``: analysts' corrections. ``classify_router(web)``: the one route whose request
model depends on the settings (text length, batch size), so it is built per app.

(No ``from __future__ import annotations`` here: FastAPI must resolve the request models from the real
annotation objects, and the classify model is built per app from the settings' limits.)
"""

import asyncio
import dataclasses
import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, get_type_hints

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, create_model

from finsent.errors import BatcherClosed
from finsent.labels import SENTIMENT_LABELS, TOPIC_LABELS
from finsent.model.feedback_store import append
from finsent.records import Feedback, PersonName, Prediction, utcnow
from finsent.settings import Web
from finsent.web.guard import check_write
from finsent.web.heatmap import heatmap
from finsent.web.review import review_queue
from finsent.web.state import ApiState, HeldStream, State

log = logging.getLogger("finsent.web")
STATIC_DIR = Path(__file__).parent / "static"
SSE_POLL_S = 0.25
SSE_PING_S = 15.0

TOO_LARGE: dict[int | str, dict[str, Any]] = {
    400: {"description": "Content-Length is not a number"},
    413: {"description": "body larger than web.max_body_bytes (declared, or counted as it arrives)"},
}
CLASSIFY_BUSY: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "web.max_classify_waiting requests already wait for the model, or the "
        "server is shutting down; retry after the Retry-After seconds"
    }
}


def _scores_model() -> type[BaseModel]:
    """One text's answer in ``/classify``: the classifier's ``Prediction``, field for field, but ``model``, which the
    response names once for all texts. Derived, so a field the classifier gains is one the API answers with."""
    hints = get_type_hints(Prediction)
    fields: dict[str, Any] = {
        f.name: (hints[f.name], ... if f.default is dataclasses.MISSING else f.default)
        for f in dataclasses.fields(Prediction)
        if f.name != "model"
    }
    fields["flag"] = (
        hints["flag"],
        Field(None, description="set when a text could not be classified normally (empty, not text)"),
    )
    return create_model("Scores", __config__=ConfigDict(from_attributes=True), **fields)


Scores = _scores_model()


class ClassifyResponse(BaseModel):
    model: str = Field(description="name@version of the classifier that answered")
    results: list[Scores]  # type: ignore[valid-type]
    seconds: float = Field(description="inference time of this request (its model call's, start to finish)")


class FeedbackRequest(BaseModel):
    item_id: str = Field(min_length=1, max_length=200)
    topic: Literal[TOPIC_LABELS] | None = None  # type: ignore[valid-type]
    sentiment: Literal[SENTIMENT_LABELS] | None = None  # type: ignore[valid-type]
    who: PersonName
    comment: str = Field(default="", max_length=2000)


pages = APIRouter()
data = APIRouter()
feedback_routes = APIRouter()


@pages.get("/", include_in_schema=False)
async def dashboard() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@pages.get("/dashboard/config")
async def dashboard_config(api: State) -> dict:
    """What the dashboard needs to draw its controls: labels, the surge window, whether writes need a token."""
    return {
        "topics": list(TOPIC_LABELS),
        "sentiments": list(SENTIMENT_LABELS),
        "surge_window_s": api.settings.surge.window_s,
        "feedback_needs_token": api.token is not None,
    }


@pages.get("/events", include_in_schema=False)
async def events(
    request: Request,
    api: State,
    after: Annotated[int, Query(ge=0)] = 0,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Server-sent events: ``item`` (a ScoredItem) and ``alert`` (a SurgeAlert), each with its feed number
    as the event id. A browser's automatic reconnect sends Last-Event-ID and resumes after it."""
    # isascii: "²".isdigit() is True, and int() of it raises
    cursor = int(last_event_id) if last_event_id and last_event_id.isascii() and last_event_id.isdigit() else after

    async def _events():
        nonlocal cursor
        yield "retry: 2000\n\n"
        quiet_since = time.monotonic()
        while not await request.is_disconnected():
            entries = api.views.feed_after(cursor)
            for seq, kind, record in entries:
                yield f"id: {seq}\nevent: {kind}\ndata: {json.dumps(record.to_dict(), default=str)}\n\n"
            if entries:
                cursor, quiet_since = entries[-1][0], time.monotonic()
            elif time.monotonic() - quiet_since > SSE_PING_S:
                yield ": ping\n\n"  # keeps proxies from closing an idle stream
                quiet_since = time.monotonic()
            await asyncio.sleep(SSE_POLL_S)

    if not api.stream_slots.take():  # each stream holds a socket and a poll loop: bounded
        raise api.busy("/events", api.settings.web.max_event_streams)
    return HeldStream(
        _events(),
        api.stream_slots.release,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@pages.get("/healthz")
async def healthz() -> dict:
    return {"ok": True}


@pages.get("/readyz", responses={503: {"description": "the model is still loading"}})
async def readyz(api: State):
    if api.classifier is None:
        return JSONResponse({"ready": False, "why": "model loading"}, status_code=503)
    return {"ready": True, "model": api.classifier.version}


def classify_router(w: Web) -> APIRouter:
    """``POST /classify`` with a request model built from ``web.max_text_chars`` and ``web.max_batch``, so the
    limits are enforced (422 naming the field) and documented in the OpenAPI schema."""
    Text = Annotated[str, StringConstraints(max_length=w.max_text_chars)]  # noqa: N806 - a type, named as one

    class ClassifyRequest(BaseModel):
        texts: list[Text] = Field(min_length=1, max_length=w.max_batch, description="headlines to classify")

    router = APIRouter()

    @router.post("/classify", response_model=ClassifyResponse, responses={**TOO_LARGE, **CLASSIFY_BUSY})
    async def classify(req: ClassifyRequest, api: State) -> ClassifyResponse:
        """The texts join the next model call with other requests' (dynamic batching); ``seconds`` is that call's."""
        return await classify_texts(api, req.texts)

    return router


async def classify_texts(api: ApiState, texts: list[str]) -> ClassifyResponse:
    w = api.settings.web
    if not api.classify_slots.take():  # the model answers one batch at a time: bound the queue in front of it
        raise api.busy("/classify", w.max_classify_waiting)
    try:
        if api.batcher is None:  # started by the app's lifespan: an app run without it has no model to call
            raise HTTPException(
                503, "the classifier is not running", headers={"Retry-After": str(w.busy_retry_after_s)}
            )
        answer = await api.batcher.submit(texts)  # a model error propagates: the usual 500
    except BatcherClosed:
        raise HTTPException(
            503, "shutting down; retry later", headers={"Retry-After": str(w.busy_retry_after_s)}
        ) from None
    finally:
        api.classify_slots.release()
    api.metrics.classified.inc(len(texts))
    return ClassifyResponse(
        model=api.classifier.version,
        seconds=round(answer.seconds, 4),
        results=[Scores.model_validate(p) for p in answer.results],
    )


@data.get("/items")
async def items(
    api: State,
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
    found = api.views.query_items(topic, ticker, sentiment, since, until, q)
    return {
        "total": len(found),
        "offset": offset,
        "seq": api.views.seq,  # seq: resume /events after this answer
        "items": [s.to_dict() for s in found[offset : offset + limit]],
    }


@data.get("/windows/keys")
async def window_keys(api: State) -> dict:
    """Every key that has windows (``all``, ``topic:…``, ``ticker:…``), busiest newest window first."""
    return {"keys": api.views.window_keys()}


@data.get("/windows/heatmap")
async def windows_heatmap(
    api: State,
    prefix: Annotated[str, Query(max_length=100)] = "topic:",
    width: Annotated[int | None, Query(gt=0)] = None,
    columns: Annotated[int, Query(ge=1, le=500)] = 60,
) -> dict:
    """Negative share and volume per key (those starting with ``prefix``) and window end: the topic × time
    heatmap. ``width`` defaults to the surge detector's window."""
    return heatmap(api.views.windows, prefix, width or api.settings.surge.window_s, columns)


@data.get("/windows")
async def windows(
    api: State,
    key: Annotated[str, Query(min_length=1, examples=["all", "topic:Earnings", "ticker:AAPL"])],
    width: Annotated[int | None, Query(gt=0)] = None,
    limit: Annotated[int, Query(ge=1, le=2000)] = 500,
) -> dict:
    """The closed windows of one key (oldest first), per rolling width."""
    series = {
        w: list(pts)[-limit:] for (k, w), pts in api.views.windows.items() if k == key and (width is None or w == width)
    }
    return {"key": key, "series": {str(w): [p.to_dict() for p in pts] for w, pts in sorted(series.items())}}


@data.get("/alerts")
async def alerts(
    api: State, state: Literal["firing", "resolved"] | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict:
    """Surges with their evidence headlines, newest first."""
    found = [a for a in reversed(api.views.alerts.values()) if state is None or a.state == state][:limit]
    return {"alerts": [a.to_dict() for a in found]}


@feedback_routes.post(
    "/feedback",
    status_code=201,
    responses={
        **TOO_LARGE,
        401: {"description": "missing or wrong bearer token (when FINSENT_WEB__TOKEN is set)"},
        403: {"description": "a cross-origin request or a foreign Host; or no FINSENT_WEB__TOKEN off loopback"},
        404: {"description": "the item id is not among the recent scored items"},
        422: {"description": "a bad body, or an item the model could not classify (nothing to learn from)"},
        503: {"description": "the feedback store cannot be written (full disk, no permission): nothing was kept"},
    },
)
async def feedback(req: FeedbackRequest, api: State, authorization: Annotated[str | None, Header()] = None) -> dict:
    """An analyst's correction: kept in the feedback store (what fine-tuning reads) and sent to finsent.feedback."""
    check_write(api.token, api.settings.services.host, authorization)
    scored = api.views.items.get(req.item_id)
    if scored is None:
        raise HTTPException(404, f"unknown item id {req.item_id!r} (not among the recent scored items)")
    if scored.flag is not None:  # its text held nothing to classify (a bare URL, not text): nothing to learn from
        raise HTTPException(
            422, f"item {req.item_id!r} was not classified ({scored.flag}): there is no text to correct"
        )
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
    store = api.settings.paths.feedback_store
    try:
        await asyncio.to_thread(append, store, fb)
    except OSError as err:  # full disk, read-only folder: the analyst must know the correction was not kept
        log.error("feedback not stored", extra={"path": str(store), "item": fb.item_id, "error": str(err)})
        raise HTTPException(503, f"correction not saved: feedback store {store}: {err.strerror or err}") from None
    published = await api.publish_feedback(fb)
    api.metrics.feedback.labels(str(published).lower()).inc()
    return {"stored": True, "published": published}


STORE_UNREADABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "the feedback store cannot be read (a folder in its place, no permission, a failing disk)"}
}


@feedback_routes.get("/review", responses=STORE_UNREADABLE)
async def review(api: State, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict:
    """The headlines a correction is worth most on: those behind a firing alert first, then the ones the model
    is least sure about (smallest margin between its two likeliest sentiment classes). Correct them with
    POST /feedback. Headlines already in the feedback store are left out."""
    records, _ = await api.feedback_records()
    reviewed = {r.item_id for r in records if r.sentiment is not None}  # the queue ranks by sentiment
    return {"items": review_queue(list(api.views.items.values()), list(api.views.alerts.values()), limit, reviewed)}


@feedback_routes.get("/feedback/stats", responses=STORE_UNREADABLE)
async def feedback_stats(api: State) -> dict:
    """How many corrections, and how often the model already agreed with them (per label kind)."""
    records, bad = await api.feedback_records()
    out: dict[str, Any] = {"corrections": len(records), "bad_lines": bad}
    for kind in ("topic", "sentiment"):
        pairs = [
            (getattr(r, kind), predicted)
            for r in records
            if getattr(r, kind) is not None and (predicted := api.predicted(r, kind)) is not None
        ]
        corrected: dict[str, int] = {}
        for label, predicted in pairs:
            if label != predicted:
                corrected[predicted] = corrected.get(predicted, 0) + 1
        out[kind] = {
            "corrections": sum(1 for r in records if getattr(r, kind) is not None),
            "compared": len(pairs),
            "model_agreed": sum(a == b for a, b in pairs),
            "corrected_by_model_label": dict(sorted(corrected.items())),  # which of the model's classes analysts fixed
        }
    return out
