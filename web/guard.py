"""Who may talk to the web API: the receiver's rules and middleware (``finsent.http``), fitted to a page people
navigate to.

Why a guard in front of every route: on loopback without ``FINSENT_WEB__TOKEN`` (the demo) anyone whose page
reaches 127.0.0.1 could otherwise write feedback, which fine-tuning trains on, or act on alert cases. A Host
that is not ours (DNS rebinding) is refused on every request, reads too. An Origin other than ours, or a
browser's cross-site fetch, is refused on writes only: a link to the dashboard from Grafana or Alertmanager
(another port, so "same-site") is a navigation the page must still open.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException

from finsent.http import allowed_hosts, bearer_ok, is_loopback
from finsent.settings import Settings


def guard_policy(settings: Settings) -> dict[str, Any]:
    """The web API's options for ``finsent.http.RequestGuard``: 403 (``{"detail": ...}``) for a foreign Host on
    every request, and for a cross-origin request on writes only."""
    return {
        "allowed": allowed_hosts(settings.services.host, settings.web.allowed_hosts),
        "setting": "web.allowed_hosts",
        "origin_on_reads": False,
    }


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
