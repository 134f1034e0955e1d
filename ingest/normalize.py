"""feedparser entry -> NewsItem (pure: no I/O, the fetch time is an argument).

Why each rule:

* **id** must be stable across polls and restarts or dedup fails: the guid (qualified by the source
  unless it is itself a URL), else the canonical link, else source + normalised title.
* **URLs** lose tracking parameters and fragments, so the same article shared with different
  ``utm_*`` tags is recognised as one.
* **published** is event time for the windows. A missing, unparsable or absurdly old date (e.g. 1970
  from a zero timestamp) is replaced by the fetch time and flagged ``published_inferred``, so a broken
  feed cannot place headlines in windows that are long closed. One more than ``future_tolerance_s``
  ahead of the fetch time is clamped to it and flagged ``published_clamped``: it is a date the feed did
  give, only wrong, and a record from the future would drag the stream's watermark ahead and make every
  on-time headline late.
* **tickers** are capped at ``max_tickers``: a headline naming hundreds is spam, and each ticker is a
  window key of its own.

The last two are the stream's edge check (``finsent.records.checked_item``), applied here too, so
the archive and the raw topic already hold what the worker would count.
"""

from __future__ import annotations

import calendar
import hashlib
import html
import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from finsent.ingest.tickers import extract
from finsent.records import NewsItem
from finsent.settings import Windows
from finsent.records import checked_item

MAX_TITLE = 500
MAX_SUMMARY = 5000
# The defaults of settings.windows (the poller and the importer pass the configured values), not copies of them.
FUTURE_TOLERANCE_S: float = Windows.model_fields["future_tolerance_s"].default
MAX_TICKERS: int = Windows.model_fields["max_tickers_per_item"].default
OLDEST_PLAUSIBLE = datetime(1995, 1, 1, tzinfo=UTC)

TRACKING_PARAMS = re.compile(
    r"^(utm_[a-z]+|fbclid|gclid|dclid|msclkid|mc_cid|mc_eid|ocid|cmpid|cmp|src|ref|ref_src|referrer|"
    r"icid|ito|guccounter|guce_referrer|guce_referrer_sig|soc_src|soc_trk|smid|partner|mod|taid|xtor|_ga|__twitter_impression)$",
    re.I,
)
_SPACE = re.compile(r"\s+")


class NormalizeError(ValueError):
    """An entry that cannot become a NewsItem (e.g. neither title nor summary)."""


class _TextOnly(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("br", "p", "div", "li"):
            self.parts.append(" ")

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def strip_html(text: str) -> str:
    if "<" in text:
        parser = _TextOnly()
        parser.feed(text)
        parser.close()
        text = "".join(parser.parts)
    return _SPACE.sub(" ", html.unescape(text)).strip()


def canonical_url(url: str | None) -> str | None:
    if not url:
        return None
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    port = parts.port if parts.port and (parts.scheme, parts.port) not in (("http", 80), ("https", 443)) else None
    netloc = f"{host}:{port}" if port else host
    query = urlencode(sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not TRACKING_PARAMS.match(k)))
    path = parts.path or "/"
    return urlunsplit((parts.scheme.lower(), netloc, path, query, ""))


def normalised_title(title: str) -> str:
    """Lower-case words only: the key for exact-duplicate titles across outlets."""
    return " ".join(re.findall(r"[a-z0-9]+", title.lower()))


def stable_id(source: str, guid: str | None, link: str | None, title: str) -> str:
    if guid:
        key = guid if canonical_url(guid) else f"{source}|{guid}"
        key = canonical_url(key) or key
    elif link:
        key = link
    else:
        key = f"{source}|{normalised_title(title)}"
    return hashlib.blake2b(key.encode("utf-8"), digest_size=10).hexdigest()


def _entry_time(entry: Any) -> datetime | None:
    for field in ("published_parsed", "updated_parsed", "created_parsed"):
        value = entry.get(field)
        if value:
            try:
                return datetime.fromtimestamp(calendar.timegm(value), UTC)
            except (OverflowError, ValueError, TypeError):
                continue
    return None


def event_time(entry: Any, fetched: datetime) -> tuple[datetime, bool]:
    """(published, inferred). Inferred when missing or implausibly old; a future date is kept here and
    clamped by ``checked_item`` (flagged as clamped, not inferred: the feed did give a date)."""
    published = _entry_time(entry)
    if published is None or published < OLDEST_PLAUSIBLE:
        return fetched, True
    return published, False


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def normalize(entry: Any, **kwargs: Any) -> NewsItem:
    """One feedparser entry (a dict-like) as a NewsItem; raises NormalizeError if it has no text.

    Takes the keyword arguments of ``normalize_checked``; use that one to count what the edge check fixed."""
    return normalize_checked(entry, **kwargs)[0]


def normalize_checked(
    entry: Any,
    *,
    source: str,
    fetched: datetime,
    feed_language: str | None = None,
    default_tickers: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    future_tolerance_s: float = FUTURE_TOLERANCE_S,
    max_tickers: int = MAX_TICKERS,
) -> tuple[NewsItem, list[str]]:
    """(item, fixes): ``fixes`` names what the edge check corrected (``"clamped"``, ``"tickers_capped"``)."""
    title = strip_html(entry.get("title") or "")
    summary = strip_html(entry.get("summary") or entry.get("description") or "")
    if not title and not summary:
        raise NormalizeError("entry has neither title nor summary")
    if not title:
        title = re.split(r"(?<=[.!?])\s", summary, maxsplit=1)[0]
    title, summary = _clip(title, MAX_TITLE), _clip(summary, MAX_SUMMARY)
    link = canonical_url(entry.get("link"))
    published, inferred = event_time(entry, fetched)
    language = (entry.get("language") or feed_language or None)
    item = NewsItem(
        id=stable_id(source, (entry.get("id") or "").strip() or None, link, title),
        title=title,
        summary=summary if summary != title else "",
        url=link,
        source=source,
        published=published,
        fetched=fetched,
        published_inferred=inferred,
        tickers=tuple(dict.fromkeys(extract(f"{title}\n{summary}") + tuple(default_tickers))),
        tags=tags,
        language=language[:16].lower() if language else None,
    )
    return checked_item(item, fetched, future_tolerance_s, max_tickers)
