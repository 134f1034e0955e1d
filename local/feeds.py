"""Local RSS/Atom feeds on 127.0.0.1 for the demo and the tests: a real HTTP server, no internet.

``/feeds/<name>`` serves the demo feeds built from the shipped sample (``data/demo_headlines.csv``):
headlines become "published" as the demo clock passes their scheduled time, so new items appear on
every poll, and a scripted burst of negative oil headlines arrives ``burst_at`` seconds after start
on the ``oil-desk`` feed. Conditional GET works (ETag / Last-Modified, 304).

``/hostile/<case>`` serves what misbehaving feeds do in the wild; the ingest tests poll each one.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape

DATA = Path(__file__).resolve().parent / "data" / "demo_headlines.csv"
DEMO_FEEDS = ("wire-markets", "wire-companies", "oil-desk")
ATOM_FEEDS = {"wire-companies"}


@dataclass(frozen=True)
class Scheduled:
    due: float  # seconds after the server's start
    guid: str
    title: str
    feed: str


def schedule(
    rows: list[tuple[str, str]],
    rate_per_s: float = 0.7,
    burst_at: float = 150.0,
    burst_span: float = 90.0,
    backlog: int = 40,
) -> list[Scheduled]:
    """Background headlines round-robin over the feeds at ``rate_per_s`` (``backlog`` already published
    at start), and the burst spread evenly over ``burst_span`` seconds from ``burst_at`` on oil-desk."""
    out: list[Scheduled] = []
    background = [t for kind, t in rows if kind == "background"]
    burst = [t for kind, t in rows if kind == "burst"]
    for i, text in enumerate(background):
        due = (i - backlog) / rate_per_s
        out.append(Scheduled(due, f"bg-{i}", text, DEMO_FEEDS[i % len(DEMO_FEEDS)]))
    for i, text in enumerate(burst):
        out.append(Scheduled(burst_at + burst_span * i / max(1, len(burst)), f"burst-{i}", text, "oil-desk"))
    return sorted(out, key=lambda s: s.due)


def load_rows(path: Path = DATA) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return [(r["kind"], r["text"]) for r in csv.DictReader(fh)]


def rss(title: str, items: list[tuple[str, str, str, datetime]], language: str = "en") -> bytes:
    parts = [
        f'<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel><title>{escape(title)}</title>'
        f"<link>http://127.0.0.1/</link><description>finsent demo feed</description><language>{language}</language>"
    ]
    for guid, text, link, published in items:
        parts.append(
            f'<item><title>{escape(text)}</title><link>{escape(link)}</link><guid isPermaLink="false">{escape(guid)}</guid>'
            f"<pubDate>{format_datetime(published, usegmt=True)}</pubDate></item>"
        )
    parts.append("</channel></rss>")
    return "".join(parts).encode("utf-8")


def atom(title: str, items: list[tuple[str, str, str, datetime]]) -> bytes:
    parts = [
        f'<?xml version="1.0" encoding="utf-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom"><title>{escape(title)}</title>'
        f"<id>urn:finsent:{escape(title)}</id><updated>{datetime.now(UTC).isoformat()}</updated>"
    ]
    for guid, text, link, published in items:
        parts.append(
            f'<entry><title>{escape(text)}</title><id>urn:finsent:{escape(guid)}</id><link href="{escape(link)}"/>'
            f"<updated>{published.isoformat()}</updated></entry>"
        )
    parts.append("</feed>")
    return "".join(parts).encode("utf-8")


def _hostile_items(n: int, prefix: str = "h") -> list[tuple[str, str, str, datetime]]:
    """``n`` well-formed entries with real (distinct) headlines, newest first."""
    now = datetime.now(UTC)
    texts = [t for _, t in load_rows()]
    return [
        (
            f"{prefix}-{i}",
            f"{texts[i % len(texts)]} ({i // len(texts)})" if i >= len(texts) else texts[i],
            f"http://127.0.0.1/{prefix}/{i}",
            now - timedelta(seconds=i),
        )
        for i in range(n)
    ]


HOSTILE_DOCS: dict[str, bytes] = {
    "malformed": b'<?xml version="1.0"?><rss version="2.0"><channel><item><title>Unclosed & broken <b></title></chan',
    "garbage": b"\x00\xff\xfe binary junk, not a feed at all",
    "laughs": (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
        b'<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">]><rss version="2.0"><channel><item><title>&lol2;</title></item></channel></rss>'
    ),
    "xxe": (
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b'<rss version="2.0"><channel><item><title>&xxe;</title></item></channel></rss>'
    ),
    "html": b"<!DOCTYPE html><html><head><title>Not a feed</title></head><body><h1>Welcome</h1></body></html>",
    "latin1": (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>x</title>'
        "<item><title>Soci\xe9t\xe9 G\xe9n\xe9rale shares fall</title><guid>latin1-1</guid></item></channel></rss>"
    ).encode("latin-1"),
    "no-charset": (
        '<rss version="2.0"><channel><title>x</title><item><title>Nestl\xe9 profit rises</title>'
        "<guid>nocs-1</guid></item></channel></rss>"
    ).encode("cp1252"),
    "no-fields": (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>x</title>'
        b"<item></item><item><description>Only a description, no title or link or date.</description></item>"
        b"<item><title>Title only</title></item></channel></rss>"
    ),
    "dates": (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>x</title>'
        b"<item><title>From the far future</title><guid>d-1</guid><pubDate>Fri, 01 Jan 2100 00:00:00 GMT</pubDate></item>"
        b"<item><title>From the epoch</title><guid>d-2</guid><pubDate>Thu, 01 Jan 1970 00:00:00 GMT</pubDate></item>"
        b"<item><title>Unparsable date</title><guid>d-3</guid><pubDate>yesterday-ish</pubDate></item></channel></rss>"
    ),
    "dup-guids": (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>x</title>'
        b"<item><title>First version of the story</title><guid>same</guid></item>"
        b"<item><title>Completely different second story</title><guid>same</guid></item></channel></rss>"
    ),
    # 300 cashtags in one entry (pump-and-dump spam): every ticker would be a window key of its own
    "ticker-spam": (
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>x</title>'
        b"<item><title>Top movers today</title><guid>spam-1</guid><description>"
        + " ".join(f"$AA{chr(65 + i // 26)}{chr(65 + i % 26)}" for i in range(300)).encode()
        + b"</description></item></channel></rss>"
    ),
}


def _rss_doc(items: str, declaration: str = '<?xml version="1.0" encoding="utf-8"?>') -> str:
    return f'{declaration}<rss version="2.0"><channel><title>x</title>{items}</channel></rss>'


_LAUGHS = (
    '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    '<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">]>'
)
_WIDE_DOC = _rss_doc(
    "<item><title>Oil shares rise</title><guid>w-1</guid></item>"
    "<item><title>Caf&#233; chain profit &#x2191;</title><guid>w-2</guid></item>",
    '<?xml version="1.0" encoding="{enc}"?>',
)

# Bad input inside well-formed (or nearly) documents: what comes out must be clean text. Served as
# ``(body, content type)``.
HOSTILE_TEXT: dict[str, tuple[bytes, str]] = {
    # &#xD800; made feedparser raise UnicodeEncodeError (and the whole run exit 1)
    "surrogate": (
        _rss_doc(
            "<item><title>Lone &#xD800; surrogate in a headline</title><guid>s-1</guid></item>"
            "<item><title>Out of range &#x110000; reference</title><guid>s-2</guid></item>"
            "<item><title>Oil prices climb</title><guid>s-3</guid></item>"
        ).encode(),
        "application/rss+xml; charset=utf-8",
    ),
    "controls": (
        _rss_doc(
            "<item><title>Nul\x00 and \x1b[31mred\x1b[0m escape \x07bell</title><guid>c-1</guid></item>"
            "<item><title>C1 \u0081control\u009b2J here&#x1b;</title><guid>c-2</guid></item>"
            "<item><title>Line\nbreaks\tand\rtabs</title><guid>c-3</guid></item>"
        ).encode(),
        "application/rss+xml; charset=utf-8",
    ),
    "bidi": (
        _rss_doc(
            "<item><title>Bank \u202egnp.exe\u202c results</title><guid>b-1</guid></item>"
            "<item><title>Zero\u200bwidth\u200d join\ufeff and \u2066isolate\u2069</title><guid>b-2</guid></item>"
            "<item><title>\u200b\u200c\u202e\u2066</title><guid>b-3</guid></item>"
            "<item><title>\u200b\u200b</title><description>Invisible title, visible summary.</description>"
            "<guid>b-4</guid></item>"
        ).encode(),
        "application/rss+xml; charset=utf-8",
    ),
    "escaped": (
        _rss_doc(
            "<item><title>&amp;lt;script&amp;gt;alert(1)&amp;lt;/script&amp;gt; double-escaped</title><guid>e-1</guid></item>"
            "<item><title>&lt;script&gt;alert(2)&lt;/script&gt; escaped once</title><guid>e-2</guid></item>"
            "<item><title>&lt;b&gt;Earnings&lt;/b&gt; beat &amp;amp; raise</title><guid>e-3</guid></item>"
        ).encode(),
        "application/rss+xml; charset=utf-8",
    ),
    "atom-html": (
        (
            b'<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom"><title>a</title>'
            b'<entry><title type="html">Fed &lt;i&gt;holds&lt;/i&gt; &amp;amp;lt;script&amp;amp;gt; rates</title><id>urn:a:1</id></entry>'
            b'<entry><title type="text">Apple &lt;AAPL.O&gt; &amp;lt;b&amp;gt; text</title><id>urn:a:2</id></entry>'
            b"</feed>"
        ),
        "application/atom+xml; charset=utf-8",
    ),
    "ric": (
        _rss_doc(
            "<item><title>Apple &lt;AAPL.O&gt; shares rise</title><guid>r-1</guid></item>"
            "<item><title>History of the &lt;blink&gt; tag</title><guid>r-2</guid></item>"
            "<item><title>Results from &lt;RIVN.O&gt; and &lt;BRKa.N&gt; due</title><guid>r-3</guid></item>"
        ).encode(),
        "application/rss+xml; charset=utf-8",
    ),
    "long-link": (
        _rss_doc(
            "<item><title>Headline with a very long link</title><guid>l-1</guid>"
            f"<link>http://127.0.0.1/story?q={'x' * 5000}</link></item>"
            "<item><title>Headline with a normal link</title><link>http://127.0.0.1/story/2</link></item>"
        ).encode(),
        "application/rss+xml; charset=utf-8",
    ),
    # UTF-16/32 served as text/xml without a charset: RFC 3023 says us-ascii, the byte-order mark says otherwise.
    # ASCII text only: the NUL-laden bytes then "decode" as us-ascii, and feedparser never looks further.
    "utf16le-bom": (b"\xff\xfe" + _WIDE_DOC.format(enc="utf-16").encode("utf-16-le"), "text/xml"),
    "utf16be-bom": (b"\xfe\xff" + _WIDE_DOC.format(enc="utf-16").encode("utf-16-be"), "text/xml"),
    "utf32le-bom": (b"\xff\xfe\x00\x00" + _WIDE_DOC.format(enc="utf-32").encode("utf-32-le"), "text/xml"),
    "utf16le-nobom": (_WIDE_DOC.format(enc="utf-16").encode("utf-16-le"), "text/xml"),
    "utf16be-nobom": (_WIDE_DOC.format(enc="utf-16").encode("utf-16-be"), "application/xml"),
    # entity declarations the raw-byte prefix scan missed: in UTF-16/32, or after 64 KiB of comment
    "laughs-utf16": (
        b"\xff\xfe"
        + (
            '<?xml version="1.0" encoding="utf-16"?>' + _LAUGHS + _rss_doc("<item><title>&lol2;</title></item>", "")
        ).encode("utf-16-le"),
        "text/xml",
    ),
    "xxe-utf32": (
        (
            '<?xml version="1.0" encoding="utf-32"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            + _rss_doc("<item><title>&xxe;</title></item>", "")
        ).encode("utf-32-be"),
        "application/xml",
    ),
    "laughs-late": (
        (
            '<?xml version="1.0"?><!--'
            + " pad" * 20000
            + " -->"
            + _LAUGHS
            + _rss_doc("<item><title>&lol2;</title></item>", "")
        ).encode(),
        "application/rss+xml",
    ),
}


def big_slow_feed(entries: int = 4000, elements_each: int = 130) -> bytes:
    """~6.5 MiB that feedparser needs seconds for (an element callback each), of entries with neither title
    nor summary (all invalid: what costs time is the parse, not normalising or dedup)."""
    junk = "<junk>x</junk>" * elements_each
    return _rss_doc("".join(f"<item><guid>slow-{i}</guid>{junk}</item>" for i in range(entries))).encode()


class _Handler(BaseHTTPRequestHandler):
    server: FeedServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet; the server counts requests instead
        pass

    def _send(
        self,
        status: int,
        body: bytes = b"",
        ctype: str = "application/rss+xml; charset=utf-8",
        headers: dict | None = None,
    ):
        self.send_response(status)
        if body or status == 200:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        self.server.hits[self.path] = self.server.hits.get(self.path, 0) + 1
        self.server.hit_times.setdefault(self.path, []).append(time.monotonic())
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            return self._send(200, b"ok", "text/plain")
        if path.startswith("/feeds/"):
            return self._feed(path.removeprefix("/feeds/"))
        if path.startswith("/hostile/"):
            return self._hostile(path.removeprefix("/hostile/"))
        return self._send(404, b"not found", "text/plain")

    def _feed(self, name: str):
        if name not in DEMO_FEEDS:
            return self._send(404, b"no such feed", "text/plain")
        items = self.server.published(name)
        newest = items[0][3] if items else self.server.started_at
        etag = (
            '"'
            + hashlib.blake2b(f"{name}|{len(items)}|{items[0][0] if items else ''}".encode(), digest_size=8).hexdigest()
            + '"'
        )
        last_modified = format_datetime(newest, usegmt=True)
        if self.headers.get("If-None-Match") == etag:
            return self._send(304, headers={"ETag": etag, "Last-Modified": last_modified})
        body = atom(name, items) if name in ATOM_FEEDS else rss(name, items)
        ctype = "application/atom+xml; charset=utf-8" if name in ATOM_FEEDS else "application/rss+xml; charset=utf-8"
        return self._send(200, body, ctype, {"ETag": etag, "Last-Modified": last_modified})

    def _hostile(self, case: str):
        if case in HOSTILE_DOCS:
            ctype = (
                "text/html"
                if case == "html"
                else ("application/xml" if case == "no-charset" else "application/rss+xml; charset=utf-8")
            )
            return self._send(200, HOSTILE_DOCS[case], ctype)
        if case in HOSTILE_TEXT:
            return self._send(200, *HOSTILE_TEXT[case])
        if case in self.server.extra:
            return self._send(200, *self.server.extra[case])
        if case == "big-slow":
            return self._send(200, self.server.big_slow())
        if case == "redirect-bad":
            return self._send(302, headers={"Location": "http://[bad/feed"})
        if case in ("404", "410", "500", "503"):
            return self._send(int(case), b"error", "text/plain")
        if case == "429":
            return self._send(429, b"slow down", "text/plain", {"Retry-After": "120"})
        if case == "redirect-loop-a":
            return self._send(302, headers={"Location": "/hostile/redirect-loop-b"})
        if case == "redirect-loop-b":
            return self._send(302, headers={"Location": "/hostile/redirect-loop-a"})
        if case == "redirect-chain":
            return self._send(302, headers={"Location": "/hostile/redirect-chain-1"})
        if case.startswith("redirect-chain-"):
            n = int(case.rsplit("-", 1)[1])
            return self._send(302, headers={"Location": f"/hostile/redirect-chain-{n + 1}"})
        if case == "redirect-ftp":
            return self._send(301, headers={"Location": "ftp://127.0.0.1/feed.xml"})
        if case == "redirect-ok":
            return self._send(301, headers={"Location": "/hostile/10"})
        if case == "huge":
            return self._stream_huge(50 * 1024 * 1024)
        if case == "slow":
            return self._trickle()
        if case == "gzip":
            body = gzip.compress(rss("gzip", _hostile_items(5, "gz")))
            return self._send(200, body, headers={"Content-Encoding": "gzip"})
        if case.isdigit():  # N well-formed entries, e.g. /hostile/10000
            return self._send(200, rss(f"n{case}", _hostile_items(int(case), f"n{case}")))
        return self._send(404, b"unknown case", "text/plain")

    def _stream_huge(self, size: int):
        self.send_response(200)
        self.send_header("Content-Type", "application/rss+xml")
        self.end_headers()  # no Content-Length: the client must cut it off itself
        chunk = b"<!-- " + b"x" * 65536 + b" -->"
        sent = 0
        try:
            self.wfile.write(b'<?xml version="1.0"?><rss version="2.0"><channel>')
            while sent < size:
                self.wfile.write(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def _trickle(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/rss+xml")
        self.send_header("Connection", "close")  # no length: the body never ends, only a deadline stops it
        self.end_headers()
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not self.server.stopping.is_set():
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.5)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


class LoopbackServer(ThreadingHTTPServer):
    """A threaded HTTP server on a loopback port, quiet about clients that hang up."""

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        assert isinstance(host, str)  # a TCP server's address (only a Unix socket's is bytes)
        return f"http://{host}:{port}"

    def handle_error(self, request, client_address):
        """A client hanging up on a keep-alive connection (every poller does at exit) is no error."""
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class FeedServer(LoopbackServer):
    daemon_threads = True

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, rows: list[tuple[str, str]] | None = None, **schedule_kw
    ):
        super().__init__((host, port), _Handler)
        self.started = time.monotonic()
        self.started_at = datetime.now(UTC)
        self.items = schedule(rows if rows is not None else load_rows(), **schedule_kw)
        self.hits: dict[str, int] = {}
        self.hit_times: dict[str, list[float]] = {}  # path -> time.monotonic() of each request
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._big: bytes | None = None
        self.extra: dict[str, tuple[bytes, str]] = {}  # more /hostile/<case> documents: case -> (body, content type)

    def big_slow(self) -> bytes:
        if self._big is None:
            self._big = big_slow_feed()
        return self._big

    def published(self, feed: str, limit: int = 100) -> list[tuple[str, str, str, datetime]]:
        """Newest first: items of ``feed`` whose due time has passed on the demo clock."""
        elapsed = time.monotonic() - self.started
        due = [s for s in self.items if s.feed == feed and s.due <= elapsed][-limit:]
        return [
            (s.guid, s.title, f"{self.url}/story/{s.guid}", self.started_at + timedelta(seconds=s.due))
            for s in reversed(due)
        ]

    def start(self) -> FeedServer:
        self._thread = threading.Thread(target=self.serve_forever, name="feed-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()
