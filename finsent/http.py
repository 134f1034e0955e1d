"""The small HTTP kit both services share (the web API and the compliance receiver).

Why one kit: each service used to write its own bearer check, body limit and /metrics route, and they
disagreed (a Content-Length that is not a number was 400 in one and ignored in the other). Here:

- ``bearer_ok``: constant-time check of an ``Authorization: Bearer`` header;
- ``declared_length`` / ``read_limited``: the body limit on the declared length *and* on the bytes as they
  arrive (a chunked upload has no length to check), for handlers that read the body themselves;
- ``BodyLimit``: the same as pure ASGI middleware, for frameworks that parse the body for you;
- ``allowed_hosts`` / ``host_refusal`` / ``origin_refusal``: who may address a service (DNS rebinding, pages on
  other sites), the same rules for both;
- ``metrics_route_app``: prometheus_client's own ``make_asgi_app`` for ``/metrics`` (content negotiation,
  gzip, ``name[]`` filtering), wrapped so Starlette and FastAPI route it as an ASGI app; or the same answer
  collected in a worker thread, for a registry whose collectors read a store.
"""

from __future__ import annotations

import asyncio
import gzip
import hmac
import ipaddress
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, make_asgi_app
from prometheus_client.exposition import choose_encoder, gzip_accepted
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response

from finsent.settings import WILDCARD_HOSTS

log = logging.getLogger("finsent.http")


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


async def read_limited(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The whole body, or BodyTooLarge as soon as more than ``limit`` bytes have arrived."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"body exceeds {limit} bytes")
    return bytes(body)


class BodyLimit:
    """Pure ASGI middleware: the body limit enforced on the bytes as they arrive.

    Checking only Content-Length let a chunked upload (which has none) be buffered whole by the JSON parser.
    Here every received chunk is counted and the request is answered 413 (connection closed) as soon as the
    count passes the limit, so at most the limit plus one chunk is ever held. A declared length over the
    limit is refused before reading anything; one that is not a number is a malformed request (400).
    """

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

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
            return JSONResponse({"detail": str(err)}, status_code=400, headers={"Connection": "close"})
        if length is not None and length > self.max_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> Response:
        """Connection: close, so the server stops reading the rest of an upload it will not use."""
        return JSONResponse(
            {"detail": f"body larger than {self.max_bytes} bytes"}, status_code=413, headers={"Connection": "close"}
        )


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
