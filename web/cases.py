"""The dashboard's open-alerts view: alert cases read from, and acted on through, the compliance receiver.

Why forward instead of letting the page call the receiver: the receiver is another origin (the page's CSP
allows only its own), and its tokens must stay on the server. The web API forwards with the receiver's read
and write tokens (``FINSENT_RECEIVER__READ_TOKEN`` / ``__TOKEN``) and guards its own end like every other
write here (``FINSENT_WEB__TOKEN`` when set). The receiver stays the one record: every action is its audit row.
"""

from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Header, HTTPException, Path
from fastapi.responses import JSONResponse

from finsent.alerts.cases import ActionRequest
from finsent.http import bearer_ok
from finsent.web.state import State

RECEIVER_TIMEOUT_S = 10.0

cases_routes = APIRouter()

UNREACHABLE: dict[int | str, dict[str, Any]] = {
    502: {"description": "the alert receiver did not answer (the detail names its URL)"}
}


def _bearer(secret) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret.get_secret_value()}"} if secret is not None else {}


async def _forward(api, method: str, path: str, **kwargs) -> httpx.Response:
    url = api.settings.receiver_url + path
    try:
        async with httpx.AsyncClient(timeout=RECEIVER_TIMEOUT_S) as client:
            return await client.request(method, url, **kwargs)
    except (TimeoutError, httpx.HTTPError) as err:
        raise HTTPException(502, f"alert receiver unreachable at {api.settings.receiver_url}: {err}") from None


@cases_routes.get("/cases", responses=UNREACHABLE)
async def cases(api: State, state: Literal["all", "open", "closed"] = "open") -> JSONResponse:
    """Alert cases and who has them, from the receiver's audit log (``open`` also lists acknowledged ones)."""
    r = await _forward(api, "GET", "/cases", params={"state": state}, headers=_bearer(api.settings.receiver.read_token))
    return _answer(r)


@cases_routes.post(
    "/cases/{case_id}/{action}",
    responses={
        **UNREACHABLE,
        401: {"description": "missing or wrong bearer token (when FINSENT_WEB__TOKEN is set)"},
        404: {"description": "no such case"},
        409: {"description": "the case is closed"},
    },
)
async def case_action(
    req: ActionRequest,
    api: State,
    case_id: Annotated[int, Path(ge=1)],
    action: Literal["acknowledge", "assign", "note", "close"],
    authorization: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Acknowledge, assign, note or close (with a disposition) a case: one new row of the receiver's audit log."""
    if api.token is not None and not bearer_ok(authorization, api.token):
        raise HTTPException(401, "missing or wrong bearer token")
    r = await _forward(
        api,
        "POST",
        f"/cases/{case_id}/{action}",
        json=req.model_dump(exclude_none=True),
        headers=_bearer(api.settings.receiver.token),
    )
    return _answer(r)


def _answer(r: httpx.Response) -> JSONResponse:
    """The receiver's answer; its errors (``{"error": ...}``) as this API's (``{"detail": ...}``). A 401 from the
    receiver is this server's misconfiguration, not the analyst's token: 502, naming the setting."""
    try:
        body = r.json()
    except ValueError:
        raise HTTPException(502, f"alert receiver answered HTTP {r.status_code} without JSON") from None
    if r.status_code == 401:
        raise HTTPException(
            502,
            "the alert receiver refused this server's token: give the web API the receiver's "
            "FINSENT_RECEIVER__TOKEN / FINSENT_RECEIVER__READ_TOKEN",
        )
    message = body.get("error") or f"alert receiver: HTTP {r.status_code}"
    if r.status_code == 422:  # in FastAPI's validation-error shape, as the schema documents for 422
        raise HTTPException(422, [{"loc": ["body"], "msg": message, "type": "value_error"}])
    if r.status_code >= 400:
        raise HTTPException(r.status_code, message)
    return JSONResponse(body, status_code=r.status_code)


__all__ = ["cases_routes"]
