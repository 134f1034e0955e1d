"""``finsent receiver``: Alertmanager webhooks → the compliance audit log, with the evidence attached.

Alertmanager only knows labels (``dim``, ``name``, ``severity``); the headlines behind a surge are on
``finsent.alerts``. The receiver follows that topic into its own SQLite store, and when a surge
notification arrives it attaches the evidence of the SurgeAlert *of that alert*: the one named by an
``alert_id`` label/annotation when the alert carries one, else the one whose window the alert's
``startsAt`` falls in (within ``receiver.evidence_tolerance_s``). Never simply the newest surge of the
key: that may be an earlier surge, whose headlines must not be filed as this alert's evidence. When the
webhook outruns the topic the request waits (at most ``receiver.evidence_wait_s`` in all, without
holding up other requests); each row records ``evidence_match``: ``matched``, ``retracted`` (the surge of
this alert's time, an early firing its complete window withdrew: the page went out, so its headlines are
filed too), ``stale`` (the key has surges, none of this alert's time) or ``missing``. A resolved
notification is filed with the surge its firing notification was filed with while that one stands
(``audit.match_surge`` has the whole order).

Closed by default. Refused, and never recorded: a Host header that is not this receiver's address and
a browser's cross-origin request (403: DNS rebinding, forms on other sites), a wrong or missing bearer
token when ``FINSENT_RECEIVER__TOKEN`` is set (401), a body that is not ``application/json`` (415), a body
over ``receiver.max_body_bytes`` (413, counted as it arrives), a Content-Length that is not a number or
malformed JSON (400), a payload that is not an Alertmanager v4
webhook (422, naming the field). The receiver will not start on a non-loopback address without a write
token, and ``GET /alerts`` needs ``FINSENT_RECEIVER__READ_TOKEN`` when that is set. A request is answered
200 only once every alert in it is committed to disk, so Alertmanager retries anything that was not.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import textwrap
import time
from collections.abc import Iterable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Literal, TextIO
from urllib.parse import urlencode

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from finsent import http
from finsent.alerts.audit import AuditLog, Notification, SurgeMatch
from finsent.alerts.cases import (
    CASE_FILTERS,
    DISPOSITIONS,
    ActionRequest,
    Case,
    case_of_notification,
    disposition_counts,
)
from finsent.errors import CaseError, ReceiverConfigError
from finsent.http import BodyLimit, RequestGuard, allowed_hosts, bearer_ok, is_loopback, metrics_route_app
from finsent.kafka import FollowSkippedCollector, follow_topics
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


class CaseCollector:
    """Alert cases by state, and closed cases by key kind and disposition, computed at scrape time from the
    audit log (the client_python ``Collector`` pattern): the log is the one record, so there is no second
    count to keep in step, and a restart shows the right figures at once. The false-positive rate per key
    kind, what surge thresholds are tuned on, is ``false_positive`` over all dispositions of that kind."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    def collect(self) -> Iterator[GaugeMetricFamily]:
        cases = self.audit.cases()
        states = GaugeMetricFamily("finsent_receiver_cases", "Alert cases by state", labels=["state"])
        counts = {"open": 0, "acknowledged": 0, "closed": 0}
        for case in cases.values():
            counts[case.state] += 1
        for state, n in counts.items():
            states.add_metric([state], n)
        yield states
        closed = GaugeMetricFamily(
            "finsent_receiver_case_dispositions",
            "Closed alert cases by key kind (dim: all, topic, ticker, none) and disposition",
            labels=["dim", "disposition"],
        )
        # every disposition of each key kind with a closed case, zeros included: a kind none of whose cases was a
        # false positive must show a false-positive share of 0, not drop out of the ratio's numerator
        counts = disposition_counts(cases.values())
        for dim in sorted({dim for dim, _ in counts}):
            for disposition in DISPOSITIONS:
                closed.add_metric([dim, disposition], counts.get((dim, disposition), 0))
        yield closed


class ReceiverMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.notifications = Counter(
            "finsent_receiver_notifications_total", "Alerts in accepted webhooks", ["status", "outcome"], registry=r
        )
        self.rejected = Counter("finsent_receiver_rejected_total", "Requests refused", ["reason"], registry=r)
        self.surges = Counter("finsent_receiver_surges_total", "SurgeAlerts read from finsent.alerts", registry=r)
        self.evidence = Counter(
            "finsent_receiver_evidence_total",
            "Surge notifications by how their SurgeAlert was found",
            ["match"],
            registry=r,
        )
        self.actions = Counter(
            "finsent_receiver_case_actions_total", "Compliance actions recorded", ["action"], registry=r
        )
        self.evidence_wait = Histogram(
            "finsent_receiver_evidence_wait_seconds",
            "Time a surge notification waited for its SurgeAlert",
            registry=r,
            buckets=(0, 0.1, 0.5, 1, 2, 5, 10),
        )


def _error(status: int, reason: str, message: str, metrics: ReceiverMetrics, **extra) -> JSONResponse:
    log.warning("request rejected", extra={"reason": reason, "detail": message[:300]})
    return _refused(status, reason, message, metrics, **extra)


def _refused(status: int, reason: str, message: str, metrics: ReceiverMetrics, **extra) -> JSONResponse:
    """The receiver's answer to a request it refuses (``{"error": ...}``), counted by reason; the HTTP kit's
    middlewares (``finsent.http``: RequestGuard, BodyLimit) answer with it and log the refusal themselves."""
    metrics.rejected.labels(reason).inc()
    return JSONResponse({"error": message, **extra}, status_code=status)


# -- who may talk to the receiver ---------------------------------------------------------------------
def check_exposure(settings: Settings) -> None:
    """Anyone who can reach a non-loopback address could write permanent rows: require the write token there."""
    host = settings.services.host
    if settings.receiver.token is None and not is_loopback(host):
        raise ReceiverConfigError(
            f"refusing to serve the receiver on {host or '(all addresses)'}:{settings.receiver.port} without a write token: "
            "set FINSENT_RECEIVER__TOKEN (and render it for Alertmanager with `finsent receiver alertmanager-config`), "
            "or bind services.host to 127.0.0.1"
        )


def _utf8_safe(payload: object) -> bool:
    """False when a string decoded from the JSON holds a lone surrogate (``"\\ud800"`` is valid JSON): the audit
    log hashes and stores rows as UTF-8, where such a string cannot go, so it is refused here as bad input."""
    try:
        json.dumps(payload, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def _is_json(request: Request) -> bool:
    """Only ``application/json``: a browser form can send text/plain cross-origin without a preflight."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


def build_app(settings: Settings, follow_alerts: bool = True) -> Starlette:
    check_exposure(settings)
    cfg = settings.receiver
    audit = AuditLog(settings.audit_db)
    metrics = ReceiverMetrics()
    metrics.registry.register(CaseCollector(audit))
    metrics.registry.register(FollowSkippedCollector("receiver"))
    token = cfg.token.get_secret_value().encode() if cfg.token else None
    read_token = cfg.read_token.get_secret_value().encode() if cfg.read_token else None
    tolerance_s = evidence_tolerance(settings)
    hosts = allowed_hosts(settings.services.host, cfg.allowed_hosts)

    def refuse(status: int, reason: str, message: str) -> Response:
        return _refused(status, reason, message, metrics)

    if hosts is None:
        log.warning(
            "Host header not checked: bound to a wildcard address with no receiver.allowed_hosts",
            extra={"host": settings.services.host},
        )

    async def follow() -> None:
        """Tail finsent.alerts into the store (from the beginning: the store ignores what it has). Each fetched
        batch is written in one transaction in a worker thread: at start the whole topic is replayed, and a
        write per record on the event loop would hold up the webhooks arriving meanwhile."""
        pending: list[SurgeAlert] = []

        def handle(topic: str, value: bytes | None, offset: int) -> None:
            pending.append(SurgeAlert.from_json(value or b""))

        async def store() -> None:
            if pending:
                batch = pending.copy()
                pending.clear()
                await asyncio.to_thread(audit.add_surges, batch, datetime.now(UTC))
                metrics.surges.inc(len(batch))

        await follow_topics(
            settings.kafka,
            [settings.topics.alerts.name],
            handle,
            "receiver",
            settings.stream.fetch_max_wait_ms,
            after_batch=store,
        )

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
        if token is not None and not bearer_ok(request.headers.get("authorization"), token):
            return _error(401, "unauthorized", "missing or wrong bearer token", metrics)
        if not _is_json(request):
            return _error(415, "not_json", "Content-Type must be application/json", metrics)
        body = await request.body()  # at most receiver.max_body_bytes: BodyLimit answers 413 past it
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return _error(400, "bad_json", f"malformed JSON: {err}", metrics)
        if not _utf8_safe(payload):
            return _error(
                400, "bad_json", "a string in the body is not valid Unicode (a lone surrogate escape)", metrics
            )
        try:
            hook = Webhook.model_validate(payload)
        except ValidationError as err:
            fields = [{"field": ".".join(str(p) for p in e["loc"]), "error": e["msg"]} for e in err.errors()[:20]]
            return _error(422, "bad_schema", "not an Alertmanager v4 webhook", metrics, fields=fields)
        received = datetime.now(UTC)
        deadline = time.monotonic() + cfg.evidence_wait_s  # for the whole request, not per alert
        recorded = duplicates = 0
        for a in hook.alerts:
            n = Notification(
                receiver=hook.receiver,
                status=a.status,
                alertname=a.labels.get("alertname", ""),
                fingerprint=a.fingerprint,
                starts_at=a.startsAt,
                ends_at=a.endsAt if a.status == "resolved" else None,
                labels=a.labels,
                annotations=a.annotations,
            )
            match = await _evidence_for(n, deadline) if n.alertname == "NegativeSentimentSurge" and n.key else None
            surge = match.surge if match else None
            new = await asyncio.to_thread(audit.record, n, received, surge, match.status if match else None)
            recorded += new
            duplicates += not new
            metrics.notifications.labels(a.status, "recorded" if new else "duplicate").inc()
            if new:
                log.info(
                    "notification recorded",
                    extra={
                        "alertname": n.alertname,
                        "status": n.status,
                        "key": n.key,
                        "severity": n.labels.get("severity"),
                        "evidence": len(surge.evidence) if surge else 0,
                        "surge_alert_id": surge.alert_id if surge else None,
                        "evidence_match": match.status if match else None,
                    },
                )
        return JSONResponse({"recorded": recorded, "duplicates": duplicates})

    async def _evidence_for(n: Notification, deadline: float) -> SurgeMatch:
        """Poll the store for this alert's SurgeAlert until it is there or the request's deadline passes."""
        started = time.monotonic()
        starts_at = _time_or_none(n.starts_at)
        alert_id = n.surge_alert_id
        filed = await asyncio.to_thread(audit.surge_filed_with_firing, n) if n.status == "resolved" else None
        while True:
            match = await asyncio.to_thread(
                audit.match_surge, n.key, starts_at, tolerance_s, n.labels.get("severity"), alert_id, filed
            )
            unmatchable = starts_at is None and alert_id is None and filed is None
            if match.surge is not None or unmatchable or time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        metrics.evidence_wait.observe(time.monotonic() - started)
        metrics.evidence.labels(match.status).inc()
        if match.surge is None:
            log.warning(
                "no SurgeAlert of this alert's time or id; recorded without evidence",
                extra={
                    "key": n.key,
                    "starts_at": n.starts_at,
                    "evidence_match": match.status,
                    "nearest_surge": match.nearest,
                },
            )
        return match

    def unauthorized_read(request: Request) -> Response | None:
        """401 when reads need FINSENT_RECEIVER__READ_TOKEN and the request does not carry it."""
        if read_token is not None and not bearer_ok(request.headers.get("authorization"), read_token):
            return _error(
                401, "unauthorized_read", "missing or wrong bearer token (FINSENT_RECEIVER__READ_TOKEN)", metrics
            )
        return None

    async def list_alerts(request: Request) -> Response:
        if (refused := unauthorized_read(request)) is not None:
            return refused
        q = request.query_params
        try:
            start, end = parse_time(q.get("from")), parse_time(q.get("to"))
            limit, after = _page_params(q.get("limit"), q.get("after"), cfg.page_limit)
        except ValueError as err:
            return JSONResponse({"error": str(err)}, status_code=422)
        status = q.get("status")
        if status not in (None, "firing", "resolved"):
            return JSONResponse({"error": "status must be firing or resolved"}, status_code=422)
        rows = await asyncio.to_thread(audit.query, start, end, status, limit + 1, after)
        truncated = len(rows) > limit
        rows = rows[:limit]
        next_url = f"{request.url.path}?{urlencode({**q, 'after': rows[-1]['seq']})}" if truncated else None
        headers = {"Link": f'<{next_url}>; rel="next"'} if next_url else {}
        if q.get("format", "json") == "csv":
            return PlainTextResponse(
                to_csv(rows),
                media_type="text/csv",
                headers={**headers, "X-Truncated": "true" if truncated else "false"},
            )
        # JSON: each notification with the current state of its alert case (the CSV export stays the log's rows).
        by_seq = case_of_notification((await asyncio.to_thread(audit.cases)).values())
        for row in rows:
            case = by_seq.get(row["seq"])
            row["case"] = None if case is None else _case_summary(case)
        return JSONResponse(
            {"count": len(rows), "notifications": rows, "truncated": truncated, "next": next_url}, headers=headers
        )

    async def list_cases(request: Request) -> Response:
        """Every alert case with its current state, newest first; ``?state=open`` (open or acknowledged),
        ``closed`` or ``all`` (default)."""
        if (refused := unauthorized_read(request)) is not None:
            return refused
        wanted = request.query_params.get("state", "all")
        if wanted not in CASE_FILTERS:
            return JSONResponse({"error": "state must be all, open or closed"}, status_code=422)
        cases = await asyncio.to_thread(audit.cases)
        found = [
            c.to_dict()
            for c in sorted(cases.values(), key=lambda c: c.case_id, reverse=True)
            if wanted == "all" or (c.state == "closed") == (wanted == "closed")
        ]
        return JSONResponse({"count": len(found), "cases": found})

    async def case_action(request: Request) -> Response:
        """``POST /cases/{case_id}/{action}`` with ``{"who": ..., "assignee"?, "note"?, "disposition"?}``: one new
        audit row (who, when, what), never an edit. Writes need the write token, like the webhook."""
        if token is not None and not bearer_ok(request.headers.get("authorization"), token):
            return _error(401, "unauthorized", "missing or wrong bearer token", metrics)
        if not _is_json(request):
            return _error(415, "not_json", "Content-Type must be application/json", metrics)
        try:
            body = json.loads(await request.body())  # bounded by BodyLimit, as the webhook's
            if not _utf8_safe(body):
                raise json.JSONDecodeError("a string is not valid Unicode (a lone surrogate escape)", "", 0)
            action = ActionRequest.model_validate(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return _error(400, "bad_json", f"malformed JSON: {err}", metrics)
        except ValidationError as err:
            fields = [{"field": ".".join(str(p) for p in e["loc"]), "error": e["msg"]} for e in err.errors()[:20]]
            return _error(422, "bad_action", "not a case action", metrics, fields=fields)
        case_id, name = int(request.path_params["case_id"]), request.path_params["action"]
        try:
            case = await asyncio.to_thread(
                audit.record_action,
                case_id,
                name,
                action.who,
                datetime.now(UTC),
                action.assignee,
                action.note,
                action.disposition,
            )
        except CaseError as err:
            status = {"unknown": 404, "closed": 409}.get(err.reason, 422)
            return _error(status, "bad_action", str(err), metrics)
        metrics.actions.labels(name).inc()
        log.info("case action recorded", extra={"case_id": case_id, "action": name, "who": action.who})
        return JSONResponse(case.to_dict())

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True, "notifications": await asyncio.to_thread(audit.count)})

    app = Starlette(
        routes=[
            Route("/alertmanager", webhook, methods=["POST"]),
            Route("/alerts", list_alerts, methods=["GET"]),
            Route("/cases", list_cases, methods=["GET"]),
            Route("/cases/{case_id:int}/{action}", case_action, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            # off the loop: CaseCollector folds the whole audit log at every scrape
            Route("/metrics", metrics_route_app(metrics.registry, off_loop=True), methods=["GET"]),
        ],
        # Who may address the receiver (every request: only programs call it), then the body limit, on every route
        # (the webhook and the case actions): a refused request's body is never read.
        middleware=[
            Middleware(RequestGuard, allowed=hosts, setting="receiver.allowed_hosts", refuse=refuse),
            Middleware(BodyLimit, max_bytes=cfg.max_body_bytes, refuse=refuse),
        ],
        lifespan=lifespan,
    )
    app.state.audit = audit
    return app


def _case_summary(case: Case) -> dict:
    d = case.to_dict()
    keep = ("case_id", "state", "alert_status", "assignee", "acknowledged_by", "disposition", "closed_at")
    return {k: d[k] for k in keep}


def evidence_tolerance(settings: Settings) -> float:
    """How far an alert's startsAt may lie from its surge's window. It must stay below the least gap between
    two surges of one key (the detector's cooldown), or a late SurgeAlert's predecessor would pass for it;
    and above the rule's delay (scrape, evaluation, ``for:``) plus the watermark a closed window waits."""
    if settings.receiver.evidence_tolerance_s is not None:
        return settings.receiver.evidence_tolerance_s
    return max(60.0, min(600.0, float(settings.surge.cooldown_s)))


def _page_params(limit: str | None, after: str | None, page_limit: int) -> tuple[int, int]:
    """``?limit=`` (1..page_limit, default page_limit) and the ``?after=`` cursor (a seq, from ``next``)."""
    n = int(limit) if limit and limit.isdigit() else (page_limit if limit is None else -1)
    if not 1 <= n <= page_limit:
        raise ValueError(f"limit must be an integer in 1..{page_limit}")
    if after is not None and not after.isdigit():
        raise ValueError("after must be a row's seq (take the listing's next link)")
    return n, int(after or 0)


def parse_time(value: str | None) -> datetime | None:
    """An ISO 8601 time with its zone, in UTC; ValueError (one clear line) for anything else, including a time that
    leaves datetime's range once moved to UTC (``0001-01-01T00:00:00+01:00``), which raised OverflowError."""
    if not value:
        return None
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"time {value!r} needs a time zone (e.g. 2024-05-02T12:00:00Z)")
    try:
        return dt.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"time {value!r} is out of range") from None


def _time_or_none(value: str) -> datetime | None:
    try:
        return parse_time(value)
    except ValueError:
        return None


# -- export ---------------------------------------------------------------------------------------------
CSV_FIELDS = [
    "seq",
    "received_at",
    "receiver",
    "status",
    "alertname",
    "severity",
    "dim",
    "name",
    "starts_at",
    "ends_at",
    "fingerprint",
    "surge_alert_id",
    "summary",
    "evidence_titles",
    "evidence_links",
    "evidence_match",
    "row_hash",
]


def _cell(value):
    """A text cell a spreadsheet would run as a formula (= + - @, or a leading tab/CR) is quoted with '."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _csv_row(r: dict) -> dict:
    row = {
        **{k: r.get(k) for k in CSV_FIELDS if k in r},
        "summary": r["annotations"].get("summary", ""),
        "evidence_titles": " | ".join(e["title"] for e in r["evidence"]),
        "evidence_links": " ".join(e.get("url") or "" for e in r["evidence"]),
    }
    return {k: _cell(v) for k, v in row.items()}


def write_csv(rows: Iterable[dict], out: TextIO) -> int:
    """The audit rows as CSV for compliance's spreadsheets, row by row: headlines are attacker-controlled
    text, so every cell that could start a formula is neutralised (CSV/formula injection)."""
    w = csv.DictWriter(out, fieldnames=CSV_FIELDS)
    w.writeheader()
    n = 0
    for r in rows:
        w.writerow(_csv_row(r))
        n += 1
    return n


def write_json(rows: Iterable[dict], out: TextIO) -> int:
    """The rows as one JSON array, written row by row; the text is what ``json.dumps(rows, indent=2)`` gives."""
    n = 0
    for r in rows:
        out.write(("[\n" if n == 0 else ",\n") + textwrap.indent(json.dumps(r, indent=2), "  "))
        n += 1
    out.write("\n]" if n else "[]")
    return n


def export(rows: Iterable[dict], out: TextIO, fmt: Literal["csv", "json"]) -> int:
    """Stream every row to ``out`` (nothing is collected in memory); returns how many."""
    return write_csv(rows, out) if fmt == "csv" else write_json(rows, out)


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    write_csv(rows, out)
    return out.getvalue()


PORT_SETTING = "receiver.port (FINSENT_RECEIVER__PORT)"


def serve(settings: Settings) -> None:
    app = build_app(settings)  # first: it refuses an exposed address without a write token
    http.check_bindable(settings.services.host, settings.receiver.port, PORT_SETTING)  # before "listening" is logged
    host, cfg = settings.services.host, settings.receiver
    log.info(
        "receiver listening",
        extra={
            "url": f"http://{host}:{cfg.port}/alertmanager",
            "audit_db": str(settings.audit_db),
            "token_required": cfg.token is not None,
            "read_token_required": cfg.read_token is not None,
        },
    )
    if cfg.read_token is None and not is_loopback(host):
        log.warning(
            "GET /alerts is open to anyone who can reach this address: set FINSENT_RECEIVER__READ_TOKEN",
            extra={"host": host},
        )
    http.serve(app, host, cfg.port, PORT_SETTING, log_level="warning", access_log=False)


__all__ = ["ReceiverConfigError", "Webhook", "build_app", "check_exposure", "export", "parse_time", "serve", "to_csv"]
