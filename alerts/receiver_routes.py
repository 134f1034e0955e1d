"""The receiver's routes, each a request handler over the one ``ReceiverState`` the app holds
(``finsent.alerts.receiver_state``): Alertmanager's webhook in, the audit log and its cases out, case actions.

``POST /alertmanager`` files each alert with the evidence of its own SurgeAlert (``evidence_for``: matched by
``alert_id``, else by the alert's time, waiting for the topic at most ``receiver.evidence_wait_s`` per request).
``GET /alerts`` pages through the log (JSON with each row's case, or CSV); ``GET /cases`` lists the cases;
``POST /cases/{case_id}/{action}`` appends one action row. Writes need the write token when it is set, reads
the read token; who may address the receiver at all and how large a body may be are the app's middlewares.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from finsent.alerts.audit import Notification, SurgeMatch
from finsent.alerts.cases import CASE_FILTERS, ActionRequest, Case, case_of_notification
from finsent.alerts.export import parse_time, to_csv
from finsent.alerts.receiver_state import ReceiverState, receiver_state
from finsent.errors import CaseError

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


def _field_errors(err: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in e["loc"]), "error": e["msg"]} for e in err.errors()[:20]]


# -- Alertmanager's webhook ---------------------------------------------------------------------------------
async def webhook(request: Request) -> Response:
    """Each alert of an Alertmanager v4 webhook filed in the audit log; 200 only once all are committed."""
    st = receiver_state(request)
    if (refused := st.unauthorized_write(request)) is not None:
        return refused
    if not _is_json(request):
        return st.error(415, "not_json", "Content-Type must be application/json")
    body = await request.body()  # at most receiver.max_body_bytes: BodyLimit answers 413 past it
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return st.error(400, "bad_json", f"malformed JSON: {err}")
    if not _utf8_safe(payload):
        return st.error(400, "bad_json", "a string in the body is not valid Unicode (a lone surrogate escape)")
    try:
        hook = Webhook.model_validate(payload)
    except ValidationError as err:
        return st.error(422, "bad_schema", "not an Alertmanager v4 webhook", fields=_field_errors(err))
    received = datetime.now(UTC)
    deadline = time.monotonic() + st.cfg.evidence_wait_s  # for the whole request, not per alert
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
        key = n.key
        match = await evidence_for(st, n, key, deadline) if n.alertname == "NegativeSentimentSurge" and key else None
        surge = match.surge if match else None
        new = await asyncio.to_thread(st.audit.record, n, received, surge, match.status if match else None)
        recorded += new
        duplicates += not new
        st.metrics.notifications.labels(a.status, "recorded" if new else "duplicate").inc()
        if new:
            log.info(
                "notification recorded",
                extra={
                    "alertname": n.alertname,
                    "status": n.status,
                    "key": key,
                    "severity": n.labels.get("severity"),
                    "evidence": len(surge.evidence) if surge else 0,
                    "surge_alert_id": surge.alert_id if surge else None,
                    "evidence_match": match.status if match else None,
                },
            )
    return JSONResponse({"recorded": recorded, "duplicates": duplicates})


async def evidence_for(st: ReceiverState, n: Notification, key: str, deadline: float) -> SurgeMatch:
    """Poll the store for this alert's SurgeAlert until it is there or the request's deadline passes."""
    started = time.monotonic()
    starts_at = _time_or_none(n.starts_at)
    alert_id = n.surge_alert_id
    filed = await asyncio.to_thread(st.audit.surge_filed_with_firing, n) if n.status == "resolved" else None
    tolerance_s = st.tolerance_s
    while True:
        match = await asyncio.to_thread(
            st.audit.match_surge, key, starts_at, tolerance_s, n.labels.get("severity"), alert_id, filed
        )
        unmatchable = starts_at is None and alert_id is None and filed is None
        if match.surge is not None or unmatchable or time.monotonic() >= deadline:
            break
        await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    st.metrics.evidence_wait.observe(time.monotonic() - started)
    st.metrics.evidence.labels(match.status).inc()
    if match.surge is None:
        log.warning(
            "no SurgeAlert of this alert's time or id; recorded without evidence",
            extra={
                "key": key,
                "starts_at": n.starts_at,
                "evidence_match": match.status,
                "nearest_surge": match.nearest,
            },
        )
    return match


# -- reading the log ----------------------------------------------------------------------------------------
async def list_alerts(request: Request) -> Response:
    """The log's notifications in ``?from=``/``?to=`` (``?status=``), a page of ``?limit=`` after ``?after=``;
    JSON with each row's current case, or ``?format=csv`` (the export's rows)."""
    st = receiver_state(request)
    if (refused := st.unauthorized_read(request)) is not None:
        return refused
    q = request.query_params
    try:
        start, end = parse_time(q.get("from")), parse_time(q.get("to"))
        limit, after = _page_params(q.get("limit"), q.get("after"), st.cfg.page_limit)
    except ValueError as err:
        return JSONResponse({"error": str(err)}, status_code=422)
    status = q.get("status")
    if status not in (None, "firing", "resolved"):
        return JSONResponse({"error": "status must be firing or resolved"}, status_code=422)
    csv = q.get("format", "json") == "csv"  # the export's rows, case actions included; JSON: notifications
    rows = await asyncio.to_thread(st.audit.query, start, end, status, limit + 1, after, csv)
    truncated = len(rows) > limit
    rows = rows[:limit]
    next_url = f"{request.url.path}?{urlencode({**q, 'after': rows[-1]['seq']})}" if truncated else None
    headers = {"Link": f'<{next_url}>; rel="next"'} if next_url else {}
    if csv:
        return PlainTextResponse(
            to_csv(rows), media_type="text/csv", headers={**headers, "X-Truncated": "true" if truncated else "false"}
        )
    # JSON: each notification with the current state of its alert case (the CSV export stays the log's rows).
    by_seq = case_of_notification((await asyncio.to_thread(st.audit.cases)).values())
    for row in rows:
        case = by_seq.get(row["seq"])
        row["case"] = None if case is None else _case_summary(case)
    return JSONResponse(
        {"count": len(rows), "notifications": rows, "truncated": truncated, "next": next_url}, headers=headers
    )


async def list_cases(request: Request) -> Response:
    """Every alert case with its current state, newest first; ``?state=open`` (open or acknowledged),
    ``closed`` or ``all`` (default)."""
    st = receiver_state(request)
    if (refused := st.unauthorized_read(request)) is not None:
        return refused
    wanted = request.query_params.get("state", "all")
    if wanted not in CASE_FILTERS:
        return JSONResponse({"error": "state must be all, open or closed"}, status_code=422)
    cases = await asyncio.to_thread(st.audit.cases)
    found = [
        c
        for c in sorted(cases.values(), key=lambda c: c.case_id, reverse=True)
        if wanted == "all" or (c.state == "closed") == (wanted == "closed")
    ]
    shown = await _with_details(st, found)
    return JSONResponse({"count": len(shown), "cases": shown})


async def _with_details(st: ReceiverState, cases: list[Case]) -> list[dict[str, Any]]:
    """Each case as a dict with what a person acts on: the evidence headlines of its newest firing (the surge may
    have resolved since, the case is still open) and its links, the dashboard's made whole from ``grafana.url``."""
    details = await asyncio.to_thread(st.audit.case_details, [c.latest_firing for c in cases if c.latest_firing])
    out = []
    for case in cases:
        shown = details.get(case.latest_firing or -1, {"evidence": [], "annotations": {}})
        out.append({**case.to_dict(), "evidence": shown["evidence"], "links": _links(st, shown["annotations"])})
    return out


def _links(st: ReceiverState, annotations: dict[str, str]) -> dict[str, str]:
    """The rule's ``dashboard`` is a path under Grafana (its URL differs per deployment): joined to ``grafana.url``.
    ``runbook_url`` as the rule gives it."""
    links = {}
    if dashboard := annotations.get("dashboard", "").strip():
        links["dashboard"] = st.settings.grafana.url.rstrip("/") + dashboard if dashboard.startswith("/") else dashboard
    if runbook := annotations.get("runbook_url", "").strip():
        links["runbook"] = runbook
    return links


# -- compliance's actions -------------------------------------------------------------------------------------
async def case_action(request: Request) -> Response:
    """``POST /cases/{case_id}/{action}`` with ``{"who": ..., "assignee"?, "note"?, "disposition"?}``: one new
    audit row (who, when, what), never an edit. Writes need the write token, like the webhook."""
    st = receiver_state(request)
    if (refused := st.unauthorized_write(request)) is not None:
        return refused
    if not _is_json(request):
        return st.error(415, "not_json", "Content-Type must be application/json")
    try:
        body = json.loads(await request.body())  # bounded by BodyLimit, as the webhook's
        if not _utf8_safe(body):
            raise json.JSONDecodeError("a string is not valid Unicode (a lone surrogate escape)", "", 0)
        action = ActionRequest.model_validate(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return st.error(400, "bad_json", f"malformed JSON: {err}")
    except ValidationError as err:
        return st.error(422, "bad_action", "not a case action", fields=_field_errors(err))
    case_id, name = int(request.path_params["case_id"]), request.path_params["action"]
    try:
        case = await asyncio.to_thread(
            st.audit.record_action,
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
        return st.error(status, "bad_action", str(err))
    st.metrics.actions.labels(name).inc()
    log.info("case action recorded", extra={"case_id": case_id, "action": name, "who": action.who})
    return JSONResponse((await _with_details(st, [case]))[0])


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True, "notifications": await asyncio.to_thread(receiver_state(request).audit.count)})


ROUTES = [
    Route("/alertmanager", webhook, methods=["POST"]),
    Route("/alerts", list_alerts, methods=["GET"]),
    Route("/cases", list_cases, methods=["GET"]),
    Route("/cases/{case_id:int}/{action}", case_action, methods=["POST"]),
    Route("/healthz", healthz, methods=["GET"]),
]


def _case_summary(case: Case) -> dict[str, Any]:
    d = case.to_dict()
    keep = ("case_id", "state", "alert_status", "assignee", "acknowledged_by", "disposition", "closed_at")
    return {k: d[k] for k in keep}


def _page_params(limit: str | None, after: str | None, page_limit: int) -> tuple[int, int]:
    """``?limit=`` (1..page_limit, default page_limit) and the ``?after=`` cursor (a seq, from ``next``)."""
    n = int(limit) if limit and limit.isdigit() else (page_limit if limit is None else -1)
    if not 1 <= n <= page_limit:
        raise ValueError(f"limit must be an integer in 1..{page_limit}")
    if after is not None and not after.isdigit():
        raise ValueError("after must be a row's seq (take the listing's next link)")
    return n, int(after or 0)


def _time_or_none(value: str) -> datetime | None:
    try:
        return parse_time(value)
    except ValueError:
        return None


__all__ = ["ROUTES", "Webhook", "WebhookAlert", "evidence_for"]
