"""Feed bytes -> entries, with feedparser (pure).

feedparser is lenient by design (``bozo`` documents still yield entries), which is what we want for
sloppy feeds. What it gets from us, and why:

* **Decoded by us, handed over as UTF-8.** The body is decoded once here (BOM; UTF-16/32 sniffed from
  the first characters; the HTTP charset; the XML declaration; UTF-8; cp1252), so the checks below see
  exactly the text feedparser will parse, in any encoding, and a ``text/xml`` document with no charset
  but a UTF-16/32 byte-order mark is read (RFC 3023's "us-ascii" default would turn it into NULs).
* **No XML entity declarations.** A document declaring entities (billion-laughs expansion, external
  entities reading local files) is refused before parsing. The whole decoded document is scanned, not a
  prefix of the raw bytes, so neither a UTF-16 body nor a long comment ahead of the DOCTYPE gets past.
* **No impossible character references.** ``&#xD800;`` (a lone surrogate) or ``&#x110000;`` makes
  feedparser's lenient parser raise; such references become U+FFFD, so the rest of the feed is read.
* **Always as a stream.** ``feedparser.parse(bytes)`` first tries the bytes as a *local file name*: a feed
  whose whole body is ``/etc/passwd`` was read from our disk, and ``/dev/zero`` never ended.
* An HTML page served where a feed should be is reported as such rather than as an empty feed.
* Anything feedparser still raises becomes ``ParseError("parse_error")``: one feed's bad bytes are that
  feed's error, never the run's.

feedparser's own HTML sanitiser is off: nothing here passes HTML on (``normalize`` reduces HTML to text,
dropping script and style), and the sanitiser re-escapes text (``S&P`` came back as ``S&amp;P``), which
would make "unescape exactly once" impossible. RSS titles carry no declared type; feedparser guesses HTML
when a title contains a close tag *or* merely an entity reference. The second guess is undone here (the
title stays plain text), so a title whose XML reads ``&amp;lt;script&amp;gt;`` is unescaped exactly once,
by the XML parser, to the text ``&lt;script&gt;``.
"""

from __future__ import annotations

import codecs
import io
import re
from dataclasses import dataclass, field
from typing import Any

import feedparser

from finsent.errors import ParseError

_ENTITY_DECL = re.compile(r"<!ENTITY", re.I)
_HTML = re.compile(r"<html[\s>]", re.I)
_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_CHARREF = re.compile(r"&#(?:[xX]([0-9A-Fa-f]+)|([0-9]+));")
_XML_DECL_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*?\bencoding\s*=\s*["']([A-Za-z0-9._:-]{1,40})["']""")
_CHARSET = re.compile(r"""charset\s*=\s*["']?([A-Za-z0-9._:-]{1,40})""", re.I)

# (byte-order mark, codec): UTF-32 before UTF-16, whose little-endian mark is a prefix of UTF-32's.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_WIDE = ("utf-32-le", "utf-32-be", "utf-16-le", "utf-16-be")


@dataclass
class ParsedFeed:
    entries: list[Any]
    title: str = ""
    language: str | None = None
    bozo: str | None = None  # feedparser's complaint about a document it could still read
    dropped: int = 0  # entries beyond max_entries
    encoding: str = ""  # how the body was decoded
    extra: dict[str, object] = field(default_factory=dict)


def _ascii_compatible(codec: str) -> bool:
    try:
        return "<?xml".encode(codec) == b"<?xml"
    except (LookupError, UnicodeError):
        return False


def _sniff_wide(body: bytes) -> str | None:
    """UTF-16/32 without a byte-order mark: the document starts (after blanks) with ``<`` in that codec.
    Appendix F of the XML spec, generalised to documents without an XML declaration."""
    head = body[:256]
    if b"\x00" not in head[:8]:
        return None
    for codec in _WIDE:
        text = codecs.getincrementaldecoder(codec)(errors="replace").decode(head[: len(head) - len(head) % 4])
        if text.lstrip(" \t\r\n").startswith("<"):
            return codec
    return None


def _declared(body: bytes, content_type: str | None) -> list[str]:
    """Encodings the HTTP charset and the XML declaration name, ASCII-compatible ones only: a document that
    really is UTF-16/32 has a BOM or was sniffed, and decoding ASCII bytes as UTF-16 "succeeds" into nonsense."""
    names = []
    if content_type and (m := _CHARSET.search(content_type)):
        names.append(m.group(1).lower())
    if declared := _XML_DECL_ENCODING.match(body[:1024]):
        names.append(declared.group(1).decode("ascii").lower())
    return [n for n in dict.fromkeys(names) if _ascii_compatible(n)]


def decode(body: bytes, content_type: str | None = None) -> tuple[str, str]:
    """(text, codec). Never raises: the last resort, latin-1, decodes any bytes."""
    for bom, codec in _BOMS:
        if body.startswith(bom):
            return body[len(bom) :].decode(codec, errors="replace"), codec
    wide = _sniff_wide(body)
    if wide:
        return body.decode(wide, errors="replace"), wide
    if body[:4] == b"\x4c\x6f\xa7\x94":  # "<?xm" in EBCDIC
        return body.decode("cp037", errors="replace"), "cp037"
    for codec in (*_declared(body, content_type), "utf-8", "cp1252"):
        try:
            return body.decode(codec), codec
        except (UnicodeDecodeError, LookupError):
            continue
    return body.decode("latin-1"), "latin-1"


def _charref(m: re.Match[str]) -> str:
    try:
        code = int(m.group(1), 16) if m.group(1) else int(m.group(2))
    except ValueError:
        return "&#xFFFD;"
    if 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
        return "&#xFFFD;"
    return str(m.group(0))


def _as_utf8(text: str) -> bytes:
    text = text.lstrip("\ufeff")
    text = _CHARREF.sub(_charref, text) if "&#" in text else text
    return text.encode("utf-8", errors="replace")


def _undo_entity_only_html_guess(entries: list[Any]) -> None:
    """RSS: feedparser calls a title HTML when it merely contains an entity reference; such a title is
    text (it was unescaped once already, by the XML parser), so its type goes back to text/plain."""
    for entry in entries:
        detail = entry.get("title_detail")
        if detail and detail.get("type") == "text/html" and not _TAG.search(entry.get("title") or ""):
            detail["type"] = "text/plain"


def parse(body: bytes, content_type: str | None = None, max_entries: int = 10_000) -> ParsedFeed:
    text, encoding = decode(body, content_type)
    if _ENTITY_DECL.search(text):
        raise ParseError("entity_declared", "document declares XML entities (refused: entity expansion / XXE)")
    try:
        # The header names the encoding we hand over; feedparser rewrites the XML declaration to match.
        doc = feedparser.parse(
            io.BytesIO(_as_utf8(text)),
            response_headers={"content-type": "application/xml; charset=utf-8"},
            sanitize_html=False,
            resolve_relative_uris=False,
        )
    except Exception as err:
        raise ParseError("parse_error", f"{type(err).__name__}: {err}"[:300]) from err
    entries = list(doc.entries)
    bozo = f"{type(doc.bozo_exception).__name__}: {doc.bozo_exception}"[:300] if doc.get("bozo") else None
    if not entries and not doc.get("version"):
        if _HTML.search(text[:65536]):
            raise ParseError("not_a_feed", "an HTML page, not RSS/Atom")
        raise ParseError("malformed", bozo or "no feed found in the document")
    if not str(doc.get("version") or "").startswith("atom"):
        _undo_entity_only_html_guess(entries)
    dropped = max(0, len(entries) - max_entries)
    return ParsedFeed(
        entries=entries[:max_entries],
        title=doc.feed.get("title", ""),
        language=doc.feed.get("language"),
        bozo=bozo,
        dropped=dropped,
        encoding=encoding,
    )
