"""The small HTTP kit both services share (the web API and the compliance receiver).

Why one kit: each service used to write its own bearer check, body limit and /metrics route, and they
disagreed (a Content-Length that is not a number was 400 in one and ignored in the other). Here:

- ``bearer_ok``: constant-time check of an ``Authorization: Bearer`` header;
- ``declared_length`` and ``BodyLimit`` (pure ASGI middleware): the body limit on the declared length *and* on
  the bytes as they arrive (a chunked upload has no length to check), whoever parses the body;
- ``allowed_hosts`` / ``host_refusal`` / ``origin_refusal``: who may address a service (DNS rebinding, pages on
  other sites), the same rules for both, and ``RequestGuard``, the middleware that applies them to every request;
- ``Refuse``: how a service words a refusal of the two middlewares (``{"detail"}`` in the API, ``{"error"}`` and
  a counter in the receiver): the only thing in which the two services differ here;
- ``serve``: uvicorn on a port checked first (a taken port is a Conflict naming the setting to change, not
  uvicorn's exit code 3, which finsent means for "a gate refused"), logging through finsent's handlers;
- ``metrics_route_app``: prometheus_client's own ``make_asgi_app`` for ``/metrics`` (content negotiation,
  gzip, ``name[]`` filtering), wrapped so Starlette and FastAPI route it as an ASGI app; or the same answer
  collected in a worker thread, for a registry whose collectors read a store.
"""

from __future__ import annotations

import asyncio
import errno
import gzip
import hmac
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, make_asgi_app
from prometheus_client.exposition import choose_encoder, gzip_accepted
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response

from finsent.errors import ConfigError, Conflict
from finsent.settings import WILDCARD_HOSTS

log = logging.getLogger("finsent.http")

# (status, reason, message) -> the answer a middleware sends: how a service words a refusal. ``reason`` is a
# short name for metrics and logs (bad_host, cross_origin, too_large, bad_length); ``message`` is for people.
Refuse = Callable[[int, str, str], Response]


def detail_refusal(status: int, reason: str, message: str) -> Response:
    """FastAPI's shape of an error, ``{"detail": message}``: the web API's refusals."""
    return JSONResponse({"detail": message}, status_code=status)


class BodyTooLarge(Exception):
    """A request body passed the limit (declared or counted)."""


class MalformedLength(ValueError):
    """A Content-Length header that is not a number."""


def bearer_ok(authorization: str | None, token: bytes) -> bool:
    """True for ``Bearer <token>``; compared in constant time."""
    given = authorization or ""
    return given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token)


def declared_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length of raw ASGI headers; None when absent; MalformedLength when not a number."""
    for name, value in headers:
        if name.lower() == b"content-length":
            if not value.isdigit():
                raise MalformedLength("Content-Length is not a number")
            return int(value)
    return None


class BodyLimit:
    """Pure ASGI middleware: the body limit enforced on the bytes as they arrive.

    Checking only Content-Length let a chunked upload (which has none) be buffered whole by the JSON parser.
    Here every received chunk is counted and the request is answered 413 (connection closed) as soon as the
    count passes the limit, so at most the limit plus one chunk is ever held. A declared length over the
    limit is refused before reading anything; one that is not a number is a malformed request (400). Every
    refusal closes the connection, so the server stops reading an upload it will not use; ``refuse`` words it.
    """

    def __init__(self, app: Any, max_bytes: int, refuse: Refuse = detail_refusal):
        self.app = app
        self.max_bytes = max_bytes
        self.refuse = refuse

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refused = self._check_declared(scope)
        if refused is not None:
            return await refused(scope, receive, send)
        seen, over, started = 0, False, False

        async def counted_receive() -> Any:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Any) -> None:
            nonlocal started
            if over and not started:  # the app's answer to a body it never got (FastAPI makes it 400): 413 instead
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyTooLarge:
            pass
        if over and not started:
            log.info("request body cut off at the limit", extra={"path": scope.get("path"), "limit": self.max_bytes})
            await self._too_large()(scope, receive, send)

    def _check_declared(self, scope: Any) -> Response | None:
        """413 for a declared length over the limit, 400 for one that is not a number, else None."""
        try:
            length = declared_length(scope.get("headers", ()))
        except MalformedLength as err:
            return self._closing(400, "bad_length", str(err))
        if length is not None and length > self.max_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> Response:
        return self._closing(413, "too_large", f"body larger than {self.max_bytes} bytes")

    def _closing(self, status: int, reason: str, message: str) -> Response:
        response = self.refuse(status, reason, message)
        response.headers["Connection"] = "close"
        return response


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class RequestGuard:
    """Pure ASGI middleware: who may address a service, checked before any route sees the request.

    Refused with 403 (worded by ``refuse``): a Host that is not in ``allowed`` (DNS rebinding; ``setting`` names
    where more names are allowed), on every request; an Origin other than our own or a browser's cross-site
    fetch, on every request or, with ``origin_on_reads=False``, on writes only (a page people navigate to from
    other sites' links, the dashboard, must still open; the receiver, which only programs call, refuses both).
    """

    def __init__(
        self,
        app: Any,
        allowed: frozenset[str] | None,
        setting: str,
        origin_on_reads: bool = True,
        refuse: Refuse = detail_refusal,
    ):
        self.app = app
        self.allowed = allowed
        self.setting = setting
        self.origin_on_reads = origin_on_reads
        self.refuse = refuse

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            refused = host_refusal(headers, self.allowed, self.setting)
            if refused is None and (self.origin_on_reads or scope["method"] not in SAFE_METHODS):
                refused = origin_refusal(headers)
            if refused is not None:
                log.warning("request refused", extra={"reason": refused[0], "path": scope.get("path")})
                await self.refuse(403, *refused)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class metrics_route_app:  # noqa: N801 - used like the function it wraps
    """``make_asgi_app(registry)`` as an object, so a Starlette/FastAPI Route treats it as an ASGI app
    (a plain function endpoint would be called as a request handler).

    ``off_loop``: collect and encode in a worker thread, for a registry with a collector that reads a
    store at scrape time (the receiver's cases fold the audit log): ``make_asgi_app`` collects on the event
    loop, so every scrape would hold up the requests the service is there for. Only for registries whose
    collectors are thread-safe (client_python's own metrics are)."""

    def __init__(self, registry: CollectorRegistry, off_loop: bool = False):
        self._registry = registry
        self._app = make_asgi_app(registry)
        self._off_loop = off_loop

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not self._off_loop:
            await self._app(scope, receive, send)
            return
        header = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        names = parse_qs(scope.get("query_string", b"").decode()).get("name[]")
        body, headers = await asyncio.to_thread(
            _exposition, self._registry, header.get("accept", ""), header.get("accept-encoding", ""), names
        )
        await Response(body, headers=headers)(scope, receive, send)


def _exposition(
    registry: CollectorRegistry, accept: str, accept_encoding: str, names: list[str] | None
) -> tuple[bytes, dict[str, str]]:
    """What ``make_asgi_app`` answers (format by Accept, ``name[]`` filter, gzip), from public API."""
    encoder, content_type = choose_encoder(accept)
    output = encoder(registry.restricted_registry(names) if names else registry)
    headers = {"Content-Type": content_type}
    if gzip_accepted(accept_encoding):
        output, headers["Content-Encoding"] = gzip.compress(output), "gzip"
    return output, headers


def is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def hostname(host_header: str) -> str:
    """``example:9184`` → ``example``, ``[::1]:9184`` → ``::1``."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    name, sep, port = value.rpartition(":")
    return (name if sep and port.isdigit() else value).rstrip(".")


LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def allowed_hosts(bound: str, extra: Iterable[str]) -> frozenset[str] | None:
    """Host names a request may address: the bound one, localhost, the configured extra names. None (not
    checked) on a wildcard address with none configured: the names are unknowable there, and the write
    token, mandatory off loopback, already guards the writes."""
    names = {h.lower().rstrip(".") for h in extra}
    if bound in WILDCARD_HOSTS:
        return frozenset(LOCAL_NAMES | names) if names else None
    return frozenset(LOCAL_NAMES | names | {bound.lower().strip("[]")})


def host_refusal(headers: Headers, allowed: frozenset[str] | None, setting: str) -> tuple[str, str] | None:
    """("bad_host", message) for a Host that is not ours: it defeats DNS rebinding (a web page whose name now
    resolves to 127.0.0.1 talks to us as its own origin). ``setting`` names where more names are allowed."""
    host = headers.get("host", "")
    if allowed is not None and hostname(host) not in allowed:
        return "bad_host", f"Host {host[:100]!r} is not this server's address (see {setting})"
    return None


def origin_refusal(headers: Headers) -> tuple[str, str] | None:
    """("cross_origin", message) for a request a page on another site made: an Origin other than our own, or a
    browser's cross-site (or same-site, another port) fetch. Programs (Alertmanager, curl) send neither."""
    origin = headers.get("origin")
    if origin is not None and urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
        return "cross_origin", f"cross-origin request from {origin[:100]!r} refused"
    if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        return "cross_origin", "cross-site browser request refused"
    return None


# -- serving ---------------------------------------------------------------------------------------------------
def check_bindable(host: str, port: int, setting: str) -> None:
    """Conflict when ``host:port`` is taken, ConfigError when it cannot be bound at all (an address not on this
    machine, a privileged port); the message names ``setting``, where to choose another. Bound the way the
    server will bind it (every address the name resolves to, SO_REUSEADDR), so a port a previous run left in
    TIME_WAIT is not taken for busy."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ConfigError(f"cannot listen on {where}: {err.strerror}; check services.host") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind(address)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise Conflict(f"{where} is already in use; set {setting} to a free port") from None
                raise ConfigError(
                    f"cannot listen on {where}: {err.strerror}; check {setting} and services.host"
                ) from None


def start_metrics_server(port: int, host: str, registry: Any, setting: str) -> Any:
    """prometheus_client's ``/metrics`` server in a thread of its own (ingest, the worker); a taken port is a
    Conflict naming ``setting`` (``stream.metrics_port (FINSENT_STREAM__METRICS_PORT)``), not an OSError traceback.
    Returns the server (``shutdown()`` stops it)."""
    from prometheus_client import start_http_server

    check_bindable(host, port, setting)
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server


def serve(app: Any, host: str, port: int, setting: str, **options: Any) -> None:
    """Run ``app`` under uvicorn on ``host:port`` until stopped; ``setting`` names the port's setting
    (``web.port (FINSENT_WEB__PORT)``), ``options`` go to ``uvicorn.run``.

    The port is checked first (``check_bindable``): uvicorn itself logs a taken port in its own text format and
    exits 3, finsent's code for "a gate refused". Its log lines go through finsent's handlers (JSON when stderr
    is not a terminal), not the text handlers it would install."""
    import uvicorn

    check_bindable(host, port, setting)
    uvicorn.run(app, host=host, port=port, log_config=None, **options)
