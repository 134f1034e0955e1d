"""The dashboard's open-alerts view: alert cases read from, and acted on through, the compliance receiver.

Why forward instead of letting the page call the receiver: the receiver is another origin (the page's CSP
allows only its own), and its tokens must stay on the server. The web API forwards with the receiver's read
and write tokens (``FINSENT_RECEIVER__READ_TOKEN`` / ``__TOKEN``) and lends them only to requests that carry its
own (``_guard``). The receiver stays the one record: every action is its audit row.
"""

from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Header, HTTPException, Path
from fastapi.responses import JSONResponse

from finsent.alerts.cases import Action, ActionRequest, CaseFilter
from finsent.http import bearer_ok, is_loopback
from finsent.web.state import ApiState, State

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
    except (TimeoutError, httpx.HTTPError, httpx.InvalidURL) as err:
        raise HTTPException(502, f"alert receiver unreachable at {api.settings.receiver_url}: {err}") from None


GUARDED: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong bearer token (FINSENT_WEB__TOKEN)"},
    403: {
        "description": "this server would lend the receiver's token to anyone: it needs FINSENT_WEB__TOKEN "
        "(off loopback, or when the receiver has a token), or the Host is not this server's name"
    },
}


def _guard(api: ApiState, authorization: str | None, receiver_secret: Any, write: bool) -> None:
    """The checks the receiver makes on its own writes (and reads), made here before lending it our credentials.

    Without ``FINSENT_WEB__TOKEN`` this server would act with the receiver's token for anyone who reaches it, so a
    write is refused when the receiver has a write token (its owner asked for one) or when this server serves off
    loopback; a read, when the receiver has a read token. A foreign Host (DNS rebinding) and a cross-origin write
    never get here (``finsent.web.guard``)."""
    bound = api.settings.services.host
    needs_token = receiver_secret is not None or (write and not is_loopback(bound))
    if api.token is None:
        if needs_token:
            raise HTTPException(
                403,
                "set FINSENT_WEB__TOKEN: this server lends the receiver's token only to requests that carry its own",
            )
    elif (needs_token or write) and not bearer_ok(authorization, api.token):
        raise HTTPException(401, "missing or wrong bearer token")


@cases_routes.get("/cases", responses={**UNREACHABLE, **GUARDED})
async def cases(
    api: State,
    state: CaseFilter = "open",
    authorization: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Alert cases and who has them, from the receiver's audit log (``open`` also lists acknowledged ones)."""
    read_token = api.settings.receiver.read_token
    _guard(api, authorization, read_token, write=False)
    r = await _forward(api, "GET", "/cases", params={"state": state}, headers=_bearer(read_token))
    return _answer(r)


@cases_routes.post(
    "/cases/{case_id}/{action}",
    responses={
        **UNREACHABLE,
        **GUARDED,
        404: {"description": "no such case"},
        409: {"description": "the case is closed"},
    },
)
async def case_action(
    req: ActionRequest,
    api: State,
    case_id: Annotated[int, Path(ge=1)],
    action: Action,
    authorization: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Acknowledge, assign, note or close (with a disposition) a case: one new row of the receiver's audit log."""
    _guard(api, authorization, api.settings.receiver.token, write=True)
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
