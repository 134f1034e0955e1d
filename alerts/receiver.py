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

This module is the app: who may address it, its routes (``finsent.alerts.receiver_routes``) over one state
(``finsent.alerts.receiver_state``), serving. The log's CSV/JSON export is ``finsent.alerts.export``.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from finsent import http
from finsent.alerts.receiver_routes import ROUTES
from finsent.alerts.receiver_state import ReceiverState
from finsent.errors import ReceiverConfigError
from finsent.http import BodyLimit, RequestGuard, allowed_hosts, is_loopback, metrics_route_app
from finsent.settings import Settings, setting_label

log = logging.getLogger("finsent.alerts.receiver")


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


def build_app(settings: Settings, follow_alerts: bool = True) -> Starlette:
    """The receiver over the settings' audit log (created when missing); ``follow_alerts``: tail finsent.alerts
    into it while the app runs (tests that file SurgeAlerts themselves turn it off)."""
    check_exposure(settings)
    state = ReceiverState.open(settings, follow_alerts)
    hosts = allowed_hosts(settings.services.host, settings.receiver.allowed_hosts)
    if hosts is None:
        log.warning(
            "Host header not checked: bound to a wildcard address with no receiver.allowed_hosts",
            extra={"host": settings.services.host},
        )
    app = Starlette(
        routes=[
            *ROUTES,
            # off the loop: CaseCollector folds the whole audit log at every scrape
            Route("/metrics", metrics_route_app(state.metrics.registry, off_loop=True), methods=["GET"]),
        ],
        # Who may address the receiver (every request: only programs call it), then the body limit, on every route
        # (the webhook and the case actions): a refused request's body is never read.
        middleware=[
            Middleware(RequestGuard, allowed=hosts, setting="receiver.allowed_hosts", refuse=state.refused),
            Middleware(BodyLimit, max_bytes=settings.receiver.max_body_bytes, refuse=state.refused),
        ],
        lifespan=state.lifespan,
    )
    app.state.receiver = state
    return app


PORT_SETTING = setting_label("receiver", "port")


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


__all__ = ["ReceiverConfigError", "build_app", "check_exposure", "serve"]
