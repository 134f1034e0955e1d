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
* **text** (title and summary) comes out clean: markup is removed only where feedparser says the text is
  HTML (``title_detail.type``), and then entities are unescaped exactly once, by the HTML parser; a plain
  title keeps its angle brackets ("Apple <AAPL.O> shares rise", "History of the <blink> tag"). Control
  characters (C0, C1, terminal escape sequences), invisible format characters and every Default_Ignorable
  code point (zero-width, bidi overrides and isolates, BOM, soft hyphen, tag characters, Hangul fillers,
  variation selectors) are removed, since they can hide or reorder what a reader sees; a title with nothing
  visible left (only whitespace or braille blanks) is treated as missing. ``<script>`` (and ``style``, ``iframe``,
  ``object``, ``embed``) tags never pass, not even in plain text: a headline naming such a tag is far
  rarer than one smuggling it.
* a **link** longer than a NewsItem may hold, or one that cannot be read (a port beyond 65535), is
  dropped, not the headline (the long one counted as ``link_dropped``); control and invisible characters
  in a link are percent-encoded.

The clamp and the cap are the stream's edge check (``finsent.records.checked_item``), applied here too, so
the archive and the raw topic already hold what the worker would count.
"""

from __future__ import annotations

import calendar
import hashlib
import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from finsent.errors import NormalizeError
from finsent.ingest.tickers import extract
from finsent.records import NewsItem, checked_item
from finsent.settings import Windows

MAX_TITLE = 500
MAX_SUMMARY = 5000
# What a NewsItem holds (finsent.records), read from the model rather than copied.
MAX_URL: int = next(m.max_length for m in NewsItem.model_fields["url"].metadata if hasattr(m, "max_length"))
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
# Terminal escape sequences first (CSI "ESC [ ... final", OSC "ESC ] ... BEL/ST", two-byte "ESC x"), so no
# "[31m" is left behind; then every other control or invisible format character.
_ANSI = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]{0,64}[ -/]{0,8}[@-~]"  # CSI: colours, cursor moves, "clear screen"
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]{0,512}(?:\x07|\x1b\\|\x9c)"  # OSC: window titles, hyperlinks
    r"|\x1b[@-_]"  # any other two-character escape
)
_LINE_BREAKS = re.compile(r"[\t\n\v\f\r\x1c-\x1f\x85\u2028\u2029]")
# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt, the whole list; the same in Unicode 14-16):
# characters a renderer shows as nothing, among them fillers and selectors that are letters or marks rather than
# format characters, so a title made of them (U+3164 HANGUL FILLER, variation selectors) looks empty but is not.
_DEFAULT_IGNORABLE = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
)
_INVISIBLE = re.compile(
    "[\x00-\x1f\x7f-\x9f"  # C0, DEL, C1 (Cc)
    "\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\ufff9-\ufffb"  # Cf that are not Default_Ignorable
    "\U000110bd\U000110cd\U00013430-\U0001343f"
    + _DEFAULT_IGNORABLE  # zero-width, bidi, BOM, soft hyphen, fillers, variation selectors, tag characters
    + "]"
)
# What is left of a text that shows nothing: whitespace and the braille blank (U+2800, drawn as an empty cell).
_NOTHING_VISIBLE = re.compile(r"[\s\u2800]*")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Executable tags never pass, even in plain text (what lies between them stays, as text).
_EXECUTABLE_TAG = re.compile(r"</?(?:script|style|iframe|object|embed)\b[^<>]*>", re.I)
HTML_TYPES = {"text/html", "application/xhtml+xml"}


class _TextOnly(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("br", "p", "div", "li"):
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def strip_html(text: str) -> str:
    """HTML -> text: tags dropped (script/style with their content), entities unescaped once."""
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    return _SPACE.sub(" ", "".join(parser.parts)).strip()


def clean_text(text: str) -> str:
    """No control, zero-width or bidi characters, no executable tags; whitespace collapsed. Idempotent."""
    text = _ANSI.sub("", text)
    text = _LINE_BREAKS.sub(" ", text)
    text = _INVISIBLE.sub("", text)
    text = _SURROGATE.sub("\ufffd", text)
    for _ in range(4):  # "<scr<script>ipt>" must not leave a tag behind once the inner one is gone
        cut = _EXECUTABLE_TAG.sub("", text)
        if cut == text:
            break
        text = cut
    else:
        if _EXECUTABLE_TAG.search(text):  # nested deeper than any honest text: no brackets at all then
            text = text.replace("<", "").replace(">", "")
    return _SPACE.sub(" ", text).strip()


def entry_text(entry: Any, key: str) -> str:
    """An entry's field as clean text. HTML (feedparser's ``<key>_detail.type``; a dict without details,
    as the importer passes, counts as HTML) is reduced to its text; anything else is taken as it is."""
    value = entry.get(key) or ""
    if not isinstance(value, str):
        value = str(value)
    detail = entry.get(f"{key}_detail")
    kind = detail.get("type") if detail else None
    if kind is None or kind in HTML_TYPES:
        value = strip_html(value)
    return clean_text(value)


def _visible_text(entry: Any, key: str) -> str:
    """``entry_text``, or "" when nothing of it would show (only whitespace and braille blanks are left)."""
    text = entry_text(entry, key)
    return "" if _NOTHING_VISIBLE.fullmatch(text) else text


def _language(value: Any) -> str | None:
    """A language tag as feeds write it (en, en-us, pt_br), lower-cased; anything else (markup, control
    characters, prose) is not one."""
    if not isinstance(value, str):
        return None
    value = value.strip().lower()[:16]
    return value if re.fullmatch(r"[a-z0-9]{1,8}(?:[-_][a-z0-9]{1,8})*", value) else None


def canonical_url(url: str | None) -> str | None:
    if not url:
        return None
    url = url.strip()
    if _INVISIBLE.search(url) or _SURROGATE.search(url):  # percent-encoded: a link cannot hide or reorder text
        url = _SURROGATE.sub("\ufffd", url)
        url = _INVISIBLE.sub(lambda m: quote(m.group(), safe=""), url)
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port beyond 65535: a bad link, not a bad entry
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    port = port if port and (parts.scheme, port) not in (("http", 80), ("https", 443)) else None
    netloc = f"{host}:{port}" if port else host
    query = urlencode(
        sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not TRACKING_PARAMS.match(k))
    )
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
    """(item, fixes): ``fixes`` names what was corrected: ``"clamped"`` and ``"tickers_capped"`` (the edge
    check), ``"link_dropped"`` (a link longer than ``MAX_URL``: the headline is kept without it)."""
    title = _visible_text(entry, "title")
    summary = _visible_text(entry, "summary") or _visible_text(entry, "description")
    if not title and not summary:
        raise NormalizeError("entry has neither title nor summary")
    if not title:
        title = re.split(r"(?<=[.!?])\s", summary, maxsplit=1)[0]
    title, summary = _clip(title, MAX_TITLE), _clip(summary, MAX_SUMMARY)
    link = canonical_url(entry.get("link") if isinstance(entry.get("link"), str) else None)
    url, link_fixes = link, []
    if link and len(link) > MAX_URL:
        url, link_fixes = None, ["link_dropped"]  # the id may still use it: it is hashed
    published, inferred = event_time(entry, fetched)
    guid = entry.get("id")
    guid = guid.strip() if isinstance(guid, str) else ""
    item = NewsItem(
        id=stable_id(source, guid or None, link, title),
        title=title,
        summary=summary if summary != title else "",
        url=url,
        source=source,
        published=published,
        fetched=fetched,
        published_inferred=inferred,
        tickers=tuple(dict.fromkeys(extract(f"{title}\n{summary}") + tuple(default_tickers))),
        tags=tags,
        language=_language(entry.get("language")) or _language(feed_language),
    )
    item, fixes = checked_item(item, fetched, future_tolerance_s, max_tickers)
    return item, link_fixes + fixes
