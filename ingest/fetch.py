"""Fetching one feed over HTTP, defensively: feeds are written by strangers.

Every failure becomes a :class:`FetchResult` with an ``error`` kind (never an exception), so one bad
feed is counted and logged while the others keep flowing. Guards:

* redirects are followed by hand (at most ``max_redirects``), each hop checked for scheme (http/https
  only), loops and the address it resolves to;
* SSRF: a host resolving to a loopback, private, link-local, reserved or multicast address is refused
  unless ``allow_private`` (the demo and tests serve feeds on 127.0.0.1 and set it explicitly).
  The check runs on every hop, and the connection is *pinned* to the addresses it checked: the name is
  resolved once per hop, and the network backend connects to those addresses instead of resolving again,
  so a DNS answer that changes between check and connect (rebinding) cannot reach a private address.
  TLS still uses the URL's host name for SNI and certificate verification;
* size: the *decoded* body is streamed and cut at ``max_bytes`` (a gzip bomb stops there too);
* time: connect/read timeouts per operation plus a total deadline, so a server that trickles a
  byte a second forever is cut off;
* conditional GET with the feed's last ETag / Last-Modified; 304 means "nothing new";
* 429/503 carry ``retry_after`` seconds from the Retry-After header (seconds or an HTTP date).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Collection, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

USER_AGENT = "finsent/0.1 (+https://github.com/finsent; news sentiment monitor)"


@dataclass
class Validators:
    """What the server told us last time, for a conditional GET."""

    etag: str | None = None
    last_modified: str | None = None


@dataclass
class FetchResult:
    url: str
    status: int | None = None
    body: bytes = b""
    content_type: str | None = None
    validators: Validators = field(default_factory=Validators)
    # kind: timeout, too_large, http_<code>, redirect_loop, too_many_redirects, bad_redirect, bad_url, bad_scheme,
    # ssrf, connect, dns
    error: str | None = None
    detail: str = ""
    retry_after: float | None = None
    elapsed_s: float = 0.0

    @property
    def not_modified(self) -> bool:
        return self.status == 304


@dataclass(frozen=True)
class FetchLimits:
    connect_s: float = 5.0
    read_s: float = 10.0
    total_s: float = 30.0
    max_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 5


RETRY_AFTER_MAX_S = 1e9  # a finite stand-in for "longer than anyone waits"; the poller caps it at its own backoff


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not "²", which isdigit() takes and float() refuses
        return min(float(value), RETRY_AFTER_MAX_S)  # 400 nines parse as inf
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: a NAT64 gateway reaches the IPv4 address in the last 32 bits
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: local-use NAT64, whatever it embeds
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # RFC 4291's deprecated ::a.b.c.d (and ::, ::1)


def _blocked(ip: str) -> bool:
    """Every address that is not globally routable: a deny-list misses ranges (100.64.0.0/10, the carrier-grade
    NAT block that holds some clouds' metadata services, was let through by the first version). An IPv6 address
    that carries an IPv4 one (mapped, 6to4, NAT64) is judged as that IPv4 address: Python calls
    ``64:ff9b::a9fe:a9fe`` global, and through a NAT64 gateway it is 169.254.169.254. The deprecated IPv4-compatible
    form and local-use NAT64 are refused outright: no public feed is served from them."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr in _IPV4_COMPATIBLE or addr in _NAT64_LOCAL:
            return True
        if addr in _NAT64:
            return _blocked(str(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)))
        addr = addr.ipv4_mapped or addr.sixtofour or addr
    return not addr.is_global or addr.is_multicast


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for ``host``, in its order of preference, without repeats."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _Refused(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind, self.detail = kind, detail


async def _resolve_checked(
    url: str, allow_private: bool, resolve: Resolver = system_resolve, allowed: Collection[str] = ()
) -> tuple[str, tuple[str, ...]]:
    """(host as the connection names it, the addresses to connect to), each address checked; else _Refused.

    The host key is httpx's own parse of the URL (what its connection pool will ask to connect to), so a
    URL that two parsers read differently cannot be checked under one name and connected under another."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise _Refused("bad_scheme", f"scheme {parts.scheme!r} is not http/https")
    if not parts.hostname:
        raise _Refused("bad_scheme", "no host in URL")
    target = httpx.URL(url)
    host = target.raw_host.decode("ascii")
    try:
        addresses = tuple(await resolve(host, target.port or (443 if target.scheme == "https" else 80)))
    except OSError as err:  # socket.gaierror
        raise _Refused("dns", f"{host}: {err}") from None
    if not addresses:
        raise _Refused("dns", f"{host}: no address")
    bad = sorted({ip for ip in addresses if _blocked(ip) and ip not in allowed})
    if bad and not allow_private:
        raise _Refused("ssrf", f"{host} resolves to non-public address {', '.join(bad)}")
    return host, addresses


async def _check_host(url: str, allow_private: bool, resolve: Resolver = system_resolve) -> tuple[str, str] | None:
    """None if the URL may be fetched; else (error kind, detail)."""
    try:
        await _resolve_checked(url, allow_private, resolve)
    except _Refused as refused:
        return refused.kind, refused.detail
    return None


# host -> the checked addresses the current fetch may connect to; set per hop, in the fetching task only.
_PINS: ContextVar[dict[str, tuple[str, ...]] | None] = ContextVar("finsent_fetch_pins", default=None)


@contextmanager
def _pinned(host: str, addresses: tuple[str, ...]) -> Iterator[None]:
    """While inside, connections to ``host`` made by this task go to ``addresses`` only."""
    token = _PINS.set({host: addresses})
    try:
        yield
    finally:
        _PINS.reset(token)


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to the addresses the fetcher resolved and checked for this host, never to a fresh lookup.

    Check and connection used to resolve the name separately: a DNS server answering a public address to
    the first and 127.0.0.1 to the second (rebinding) got the fetch onto the loopback. A host with no pin
    is refused (fail closed). TLS is untouched: httpcore starts it over this socket with the URL's host name
    as SNI and verifies the certificate for that name."""

    def __init__(self):
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        addresses = (_PINS.get() or {}).get(host)
        if not addresses:
            raise httpcore.ConnectError(f"{host}: no checked address to connect to")
        failure: Exception | None = None
        for ip in addresses:  # like socket.create_connection: the next address if one does not answer
            try:
                return await self._inner.connect_tcp(
                    ip, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as err:
                failure = err
        raise failure  # type: ignore[misc]

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore.ConnectError("feeds are not fetched over unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class PinnedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport (its request and error mapping) over a pool that connects through _PinnedBackend.

    httpx 0.28 takes no network backend, so the pool is rebuilt with httpx's default settings plus the
    backend. No proxy from the environment: a proxy would resolve the name itself, past the check."""

    def __init__(self, limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)):
        super().__init__(limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PinnedBackend(),
        )


class Fetcher:
    """``resolve`` is the name lookup (tests inject one: no DNS server runs there). ``allow_addresses`` are
    addresses let through the non-public check, one by one (tests stand a 127.0.0.1 server in for a public
    host this way); ``allow_private`` lets every address through. A ``client`` passed in must use
    :class:`PinnedTransport`, or its connections resolve the name again."""

    def __init__(
        self,
        limits: FetchLimits = FetchLimits(),
        allow_private: bool = False,
        client: httpx.AsyncClient | None = None,
        resolve: Resolver = system_resolve,
        allow_addresses: Collection[str] = (),
    ):
        self.limits = limits
        self.allow_private = allow_private
        self.resolve = resolve
        self.allow_addresses = frozenset(allow_addresses)
        self.client = client or httpx.AsyncClient(
            transport=PinnedTransport(),
            timeout=httpx.Timeout(
                connect=limits.connect_s, read=limits.read_s, write=limits.read_s, pool=limits.connect_s
            ),
            follow_redirects=False,
            headers={
                "User-Agent": USER_AGENT,
                "Accept": "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.8, */*;q=0.1",
            },
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def fetch(self, url: str, validators: Validators | None = None) -> FetchResult:
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(self.limits.total_s):
                result = await self._fetch(url, validators or Validators())
        except TimeoutError:
            result = FetchResult(url, error="timeout", detail=f"no complete response within {self.limits.total_s:g}s")
        result.elapsed_s = asyncio.get_running_loop().time() - started
        return result

    async def _fetch(self, url: str, validators: Validators) -> FetchResult:
        seen = {url}
        current = url
        for hop in range(self.limits.max_redirects + 1):
            try:  # resolved once per hop (a redirect may lead anywhere), every address checked
                host, addresses = await _resolve_checked(
                    current, self.allow_private, self.resolve, self.allow_addresses
                )
            except (ValueError, httpx.InvalidURL) as err:  # "http://[bad", a port over 65535: parsing refuses it
                return FetchResult(url, error="bad_redirect" if hop else "bad_url", detail=f"{current[:200]!r}: {err}")
            except _Refused as refused:
                return FetchResult(url, error=refused.kind, detail=refused.detail)
            headers = {}
            if validators.etag:
                headers["If-None-Match"] = validators.etag
            if validators.last_modified:
                headers["If-Modified-Since"] = validators.last_modified
            with _pinned(host, addresses):  # this hop connects only to the addresses checked above
                try:
                    async with self.client.stream("GET", current, headers=headers) as response:
                        if response.is_redirect and response.status_code != 304:
                            location = response.headers.get("location")
                            if not location:
                                return FetchResult(
                                    url,
                                    status=response.status_code,
                                    error="bad_redirect",
                                    detail="redirect without Location",
                                )
                            try:
                                current = urljoin(current, location)
                            except ValueError as err:
                                return FetchResult(
                                    url,
                                    status=response.status_code,
                                    error="bad_redirect",
                                    detail=f"{location[:200]!r}: {err}",
                                )
                            if current in seen:
                                return FetchResult(
                                    url, status=response.status_code, error="redirect_loop", detail=current
                                )
                            seen.add(current)
                            continue
                        return await self._read(url, response, validators)
                except httpx.TimeoutException as err:
                    return FetchResult(url, error="timeout", detail=type(err).__name__)
                except (httpx.TransportError, httpx.DecodingError) as err:
                    return FetchResult(url, error="connect", detail=f"{type(err).__name__}: {err}")
                except httpx.InvalidURL as err:
                    return FetchResult(url, error="bad_redirect" if hop else "bad_url", detail=str(err)[:300])
        return FetchResult(url, error="too_many_redirects", detail=f"more than {self.limits.max_redirects} redirects")

    async def _read(self, url: str, response: httpx.Response, validators: Validators) -> FetchResult:
        status = response.status_code
        if status == 304:
            return FetchResult(url, status=304, validators=validators)
        if status >= 400:
            return FetchResult(
                url,
                status=status,
                error=f"http_{status}",
                detail=response.reason_phrase,
                retry_after=retry_after_seconds(response.headers.get("retry-after")) if status in (429, 503) else None,
            )
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.limits.max_bytes:
            return FetchResult(
                url, status=status, error="too_large", detail=f"Content-Length {declared} > {self.limits.max_bytes}"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.limits.max_bytes:
                return FetchResult(
                    url, status=status, error="too_large", detail=f"body over {self.limits.max_bytes} bytes"
                )
            chunks.append(chunk)
        return FetchResult(
            url,
            status=status,
            body=b"".join(chunks),
            content_type=response.headers.get("content-type"),
            validators=Validators(response.headers.get("etag"), response.headers.get("last-modified")),
        )
