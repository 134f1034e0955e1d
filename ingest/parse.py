"""Feed bytes -> entries, with feedparser (pure).

feedparser is lenient by design (``bozo`` documents still yield entries), which is what we want for
sloppy feeds. Two things it must never see: documents that declare XML entities (billion-laughs
expansion, external entities reading local files) are refused before parsing; and an HTML page
served where a feed should be is reported as such rather than as an empty feed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import feedparser

_ENTITY_DECL = re.compile(rb"<!ENTITY", re.I)
_HTML = re.compile(rb"<html[\s>]", re.I)


class ParseError(ValueError):
    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass
class ParsedFeed:
    entries: list[Any]
    title: str = ""
    language: str | None = None
    bozo: str | None = None  # feedparser's complaint about a document it could still read
    dropped: int = 0  # entries beyond max_entries
    extra: dict = field(default_factory=dict)


def parse(body: bytes, content_type: str | None = None, max_entries: int = 10_000) -> ParsedFeed:
    head = body[:65536]
    if _ENTITY_DECL.search(head):
        raise ParseError("entity_declared", "document declares XML entities (refused: entity expansion / XXE)")
    headers = {"content-type": content_type} if content_type else {}
    doc = feedparser.parse(body, response_headers=headers, sanitize_html=True, resolve_relative_uris=False)
    entries = list(doc.entries)
    bozo = f"{type(doc.bozo_exception).__name__}: {doc.bozo_exception}"[:300] if doc.get("bozo") else None
    if not entries:
        if not doc.get("version"):
            if _HTML.search(head):
                raise ParseError("not_a_feed", "an HTML page, not RSS/Atom")
            raise ParseError("malformed", bozo or "no feed found in the document")
    dropped = max(0, len(entries) - max_entries)
    return ParsedFeed(
        entries=entries[:max_entries],
        title=doc.feed.get("title", ""),
        language=doc.feed.get("language"),
        bozo=bozo,
        dropped=dropped,
    )
