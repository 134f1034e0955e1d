"""Who may talk to the web API: the receiver's rules (``finsent.http``), fitted to a page people navigate to.

Why a guard in front of every route: on loopback without ``FINSENT_WEB__TOKEN`` (the demo) anyone whose page
reaches 127.0.0.1 could otherwise write feedback, which fine-tuning trains on, or act on alert cases. A Host
that is not ours (DNS rebinding) is refused on every request, reads too. An Origin other than ours, or a
browser's cross-site fetch, is refused on writes only: a link to the dashboard from Grafana or Alertmanager
(another port, so "same-site") is a navigation the page must still open.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from finsent.http import allowed_hosts, bearer_ok, host_refusal, is_loopback, origin_refusal
from finsent.settings import Settings

log = logging.getLogger("finsent.web.guard")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class RequestGuard:
    """Pure ASGI middleware: 403 (``{"detail": ...}``) for a foreign Host, and for a cross-origin write."""

    def __init__(self, app: Any, settings: Settings):
        self.app = app
        self.allowed = allowed_hosts(settings.services.host, settings.web.allowed_hosts)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            refused = host_refusal(headers, self.allowed, "web.allowed_hosts")
            if refused is None and scope["method"] not in SAFE_METHODS:
                refused = origin_refusal(headers)
            if refused is not None:
                log.warning("request refused", extra={"reason": refused[0], "path": scope.get("path")})
                await JSONResponse({"detail": refused[1]}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def check_write(token: bytes | None, bound: str, authorization: str | None) -> None:
    """A write of this API's own (feedback): the bearer token when one is set (401); without one, only on
    loopback (403), as the receiver refuses to take writes off loopback without its token."""
    if token is not None:
        if not bearer_ok(authorization, token):
            raise HTTPException(401, "missing or wrong bearer token")
    elif not is_loopback(bound):
        raise HTTPException(
            403, f"set FINSENT_WEB__TOKEN: writes are refused on {bound or '(all addresses)'} without it"
        )
