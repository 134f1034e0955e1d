"""Fetching one feed over HTTP, defensively: feeds are written by strangers.

Every failure becomes a :class:`FetchResult` with an ``error`` kind (never an exception), so one bad
feed is counted and logged while the others keep flowing. Guards:

* redirects are followed by hand (at most ``max_redirects``), each hop checked for scheme (http/https
  only), loops and the address it resolves to;
* SSRF: a host resolving to a loopback, private, link-local, reserved or multicast address is refused
  unless ``allow_private`` (the demo and tests serve feeds on 127.0.0.1 and set it explicitly).
  The check runs on every hop; DNS rebinding between check and connect is not covered;
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin, urlsplit

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


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _blocked(ip: str) -> bool:
    """Every address that is not globally routable: a deny-list misses ranges (100.64.0.0/10, the carrier-grade
    NAT block that holds some clouds' metadata services, was let through by the first version)."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and (addr.ipv4_mapped or addr.sixtofour):
        addr = addr.ipv4_mapped or addr.sixtofour
    return not addr.is_global or addr.is_multicast


async def _check_host(url: str, allow_private: bool) -> tuple[str, str] | None:
    """None if the URL may be fetched; else (error kind, detail)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "bad_scheme", f"scheme {parts.scheme!r} is not http/https"
    if not parts.hostname:
        return "bad_scheme", "no host in URL"
    if allow_private:
        return None
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, parts.port or 80, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        return "dns", str(err)
    bad = sorted({info[4][0] for info in infos if _blocked(info[4][0])})
    if bad:
        return "ssrf", f"{parts.hostname} resolves to non-public address {', '.join(bad)}"
    return None


class Fetcher:
    def __init__(self, limits: FetchLimits = FetchLimits(), allow_private: bool = False, client: httpx.AsyncClient | None = None):
        self.limits = limits
        self.allow_private = allow_private
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(connect=limits.connect_s, read=limits.read_s, write=limits.read_s, pool=limits.connect_s),
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT, "Accept": "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.8, */*;q=0.1"},
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
            try:
                refused = await _check_host(current, self.allow_private)
            except ValueError as err:  # "http://[bad", a port over 65535: urlsplit refuses it
                return FetchResult(url, error="bad_redirect" if hop else "bad_url",
                                   detail=f"{current[:200]!r}: {err}")
            if refused:
                return FetchResult(url, error=refused[0], detail=refused[1])
            headers = {}
            if validators.etag:
                headers["If-None-Match"] = validators.etag
            if validators.last_modified:
                headers["If-Modified-Since"] = validators.last_modified
            try:
                async with self.client.stream("GET", current, headers=headers) as response:
                    if response.is_redirect and response.status_code != 304:
                        location = response.headers.get("location")
                        if not location:
                            return FetchResult(url, status=response.status_code, error="bad_redirect", detail="redirect without Location")
                        try:
                            current = urljoin(current, location)
                        except ValueError as err:
                            return FetchResult(url, status=response.status_code, error="bad_redirect",
                                               detail=f"{location[:200]!r}: {err}")
                        if current in seen:
                            return FetchResult(url, status=response.status_code, error="redirect_loop", detail=current)
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
                url, status=status, error=f"http_{status}", detail=response.reason_phrase,
                retry_after=retry_after_seconds(response.headers.get("retry-after")) if status in (429, 503) else None,
            )
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.limits.max_bytes:
            return FetchResult(url, status=status, error="too_large", detail=f"Content-Length {declared} > {self.limits.max_bytes}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.limits.max_bytes:
                return FetchResult(url, status=status, error="too_large", detail=f"body over {self.limits.max_bytes} bytes")
            chunks.append(chunk)
        return FetchResult(
            url, status=status, body=b"".join(chunks), content_type=response.headers.get("content-type"),
            validators=Validators(response.headers.get("etag"), response.headers.get("last-modified")),
        )
