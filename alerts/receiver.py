"""``finsent receiver``: Alertmanager webhooks → the compliance audit log, with the evidence attached.

Alertmanager only knows labels (``dim``, ``name``, ``severity``); the headlines behind a surge are on
``finsent.alerts``. The receiver follows that topic into its own SQLite store, and when a surge
notification arrives it attaches the evidence of the newest firing SurgeAlert of the same key (waiting
up to ``receiver.evidence_wait_s`` when the webhook outruns the topic).

Rejected, and never recorded: a wrong or missing bearer token when ``FINSENT_RECEIVER__TOKEN`` is set
(401), a body over ``receiver.max_body_bytes`` (413), malformed JSON (400), a payload that is not an
Alertmanager v4 webhook (422, naming the field). A request is answered 200 only once every alert in it
is committed to disk, so Alertmanager retries anything that was not.
"""

from __future__ import annotations

import asyncio
import csv
import hmac
import io
import json
import logging
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Literal

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from finsent.alerts.audit import AuditLog, Notification
from finsent.follow import follow_topics
from finsent.records import SurgeAlert
from finsent.settings import Settings

log = logging.getLogger("finsent.alerts.receiver")


class WebhookAlert(BaseModel):
    model_config = ConfigDict(extra="ignore")
    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(min_length=1)
    annotations: dict[str, str] = {}
    startsAt: str = Field(min_length=1)  # noqa: N815 (Alertmanager's field names)
    endsAt: str | None = None  # noqa: N815
    fingerprint: str = Field(min_length=1, max_length=64)


class Webhook(BaseModel):
    model_config = ConfigDict(extra="ignore")
    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = Field(min_length=1, max_length=200)
    alerts: list[WebhookAlert] = Field(min_length=1, max_length=5000)


class ReceiverMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.notifications = Counter("finsent_receiver_notifications_total", "Alerts in accepted webhooks",
                                     ["status", "outcome"], registry=r)
        self.rejected = Counter("finsent_receiver_rejected_total", "Webhooks refused", ["reason"], registry=r)
        self.surges = Counter("finsent_receiver_surges_total", "SurgeAlerts read from finsent.alerts", registry=r)
        self.evidence_wait = Histogram("finsent_receiver_evidence_wait_seconds", "Time a surge notification waited for its SurgeAlert",
                                       registry=r, buckets=(0, 0.1, 0.5, 1, 2, 5, 10))


def _error(status: int, reason: str, message: str, metrics: ReceiverMetrics, **extra) -> JSONResponse:
    metrics.rejected.labels(reason).inc()
    log.warning("webhook rejected", extra={"reason": reason, "detail": message[:300]})
    return JSONResponse({"error": message, **extra}, status_code=status)


def build_app(settings: Settings, follow_alerts: bool = True) -> Starlette:
    cfg = settings.receiver
    audit = AuditLog(settings.audit_db)
    metrics = ReceiverMetrics()
    token = cfg.token.get_secret_value().encode() if cfg.token else None

    async def follow() -> None:
        """Tail finsent.alerts into the store (from the beginning: the store ignores what it has)."""
        def handle(topic: str, value: bytes | None, offset: int) -> None:
            audit.add_surges([SurgeAlert.from_json(value or b"")], datetime.now(UTC))
            metrics.surges.inc()

        await follow_topics(settings.kafka.bootstrap, [settings.topics.alerts.name], handle, "finsent-receiver",
                            settings.stream.fetch_max_wait_ms)

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(follow()) if follow_alerts else None
        try:
            yield
        finally:
            if task:
                task.cancel()
            audit.close()

    async def webhook(request: Request) -> Response:
        if token is not None:
            given = request.headers.get("authorization", "")
            if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token)):
                return _error(401, "unauthorized", "missing or wrong bearer token", metrics)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cfg.max_body_bytes:
            return _error(413, "too_large", f"body of {length} bytes exceeds {cfg.max_body_bytes}", metrics)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > cfg.max_body_bytes:
                return _error(413, "too_large", f"body exceeds {cfg.max_body_bytes} bytes", metrics)
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return _error(400, "bad_json", f"malformed JSON: {err}", metrics)
        try:
            hook = Webhook.model_validate(payload)
        except ValidationError as err:
            fields = [{"field": ".".join(str(p) for p in e["loc"]), "error": e["msg"]} for e in err.errors()[:20]]
            return _error(422, "bad_schema", "not an Alertmanager v4 webhook", metrics, fields=fields)
        received = datetime.now(UTC)
        recorded = duplicates = 0
        for a in hook.alerts:
            n = Notification(receiver=hook.receiver, status=a.status, alertname=a.labels.get("alertname", ""),
                             fingerprint=a.fingerprint, starts_at=a.startsAt,
                             ends_at=a.endsAt if a.status == "resolved" else None, labels=a.labels, annotations=a.annotations)
            surge = await _evidence_for(n) if n.alertname == "NegativeSentimentSurge" and n.key else None
            new = await asyncio.to_thread(audit.record, n, received, surge)
            recorded += new
            duplicates += not new
            metrics.notifications.labels(a.status, "recorded" if new else "duplicate").inc()
            if new:
                log.info("notification recorded", extra={
                    "alertname": n.alertname, "status": n.status, "key": n.key, "severity": n.labels.get("severity"),
                    "evidence": len(surge.evidence) if surge else 0, "surge_alert_id": surge.alert_id if surge else None,
                })
        return JSONResponse({"recorded": recorded, "duplicates": duplicates})

    async def _evidence_for(n: Notification) -> SurgeAlert | None:
        started = time.monotonic()
        while True:
            surge = await asyncio.to_thread(audit.latest_surge, n.key)
            if surge is not None or time.monotonic() - started >= cfg.evidence_wait_s:
                metrics.evidence_wait.observe(time.monotonic() - started)
                if surge is None:
                    log.warning("no SurgeAlert for a surge notification; recorded without evidence", extra={"key": n.key})
                return surge
            await asyncio.sleep(0.2)

    async def list_alerts(request: Request) -> Response:
        q = request.query_params
        try:
            start = parse_time(q.get("from"))
            end = parse_time(q.get("to"))
        except ValueError as err:
            return JSONResponse({"error": str(err)}, status_code=422)
        status = q.get("status")
        if status not in (None, "firing", "resolved"):
            return JSONResponse({"error": "status must be firing or resolved"}, status_code=422)
        rows = await asyncio.to_thread(audit.query, start, end, status)
        if q.get("format", "json") == "csv":
            return PlainTextResponse(to_csv(rows), media_type="text/csv")
        return JSONResponse({"count": len(rows), "notifications": rows})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True, "notifications": await asyncio.to_thread(audit.count)})

    app = Starlette(
        routes=[
            Route("/alertmanager", webhook, methods=["POST"]),
            Route("/alerts", list_alerts, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", lambda request: Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)),
        ],
        lifespan=lifespan,
    )
    app.state.audit = audit
    return app


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"time {value!r} needs a time zone (e.g. 2024-05-02T12:00:00Z)")
    return dt.astimezone(UTC)


def _cell(value):
    """A text cell a spreadsheet would run as a formula (= + - @, or a leading tab/CR) is quoted with '."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def to_csv(rows: list[dict]) -> str:
    """The audit rows as CSV for compliance's spreadsheets: headlines are attacker-controlled text, so every
    cell that could start a formula is neutralised (CSV/formula injection)."""
    out = io.StringIO()
    fields = ["seq", "received_at", "receiver", "status", "alertname", "severity", "dim", "name", "starts_at",
              "ends_at", "fingerprint", "surge_alert_id", "summary", "evidence_titles", "evidence_links"]
    w = csv.DictWriter(out, fieldnames=fields)
    w.writeheader()
    for r in rows:
        row = {**{k: r.get(k) for k in fields if k in r}, "summary": r["annotations"].get("summary", ""),
               "evidence_titles": " | ".join(e["title"] for e in r["evidence"]),
               "evidence_links": " ".join(e.get("url") or "" for e in r["evidence"])}
        w.writerow({k: _cell(v) for k, v in row.items()})
    return out.getvalue()


def serve(settings: Settings) -> None:
    import uvicorn

    app = build_app(settings)
    log.info("receiver listening", extra={"url": f"http://{settings.services.host}:{settings.receiver.port}/alertmanager",
                                          "audit_db": str(settings.audit_db), "token_required": settings.receiver.token is not None})
    uvicorn.run(app, host=settings.services.host, port=settings.receiver.port, log_level="warning", access_log=False)


__all__ = ["Webhook", "build_app", "parse_time", "serve", "to_csv"]
