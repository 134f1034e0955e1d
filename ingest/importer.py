"""Historical news from CSV / JSON lines into the archive (``finsent ingest import``).

Columns are mapped onto NewsItem fields (``--map title=Headlines --map published=Time``). A row
becomes an item exactly as a feed entry would (same HTML stripping, URL canonicalisation, ids and
ticker extraction), plus tickers named by a column, so backtests see what live ingest would have
seen. Rows that cannot be read are counted and reported with their line numbers, never silently
dropped; the rest are imported. That holds for rows the file format itself cannot carry, too: a byte
that is not UTF-8, a line that is not JSON (or not a JSON object), a CSV field over the csv module's
limit are that row's error, not the end of the import.

The import is the fetch: a row dated more than ``future_tolerance_s`` after the time of the import (a
"1/2/68" that dateutil reads as 2068) is clamped to that time and flagged ``published_clamped``, and
tickers are capped at ``max_tickers``, as the live edge does (``finsent.records.checked_item``).
Both are counted in the report, so a date column in the wrong format shows up at import, not as a
backtest whose windows never close.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

from dateutil import parser as dateparser
from dateutil import tz

from finsent.errors import ImportFileError
from finsent.ingest.normalize import FUTURE_TOLERANCE_S, MAX_TICKERS, canonical_url, normalize_checked
from finsent.records import NewsItem, checked_item

FIELDS = {"title", "summary", "url", "published", "id", "source", "tickers", "language"}
_US_EASTERN = ZoneInfo("America/New_York")
_PACIFIC, _MOUNTAIN, _CET = ZoneInfo("America/Los_Angeles"), ZoneInfo("America/Denver"), ZoneInfo("Europe/Berlin")
# Zone names read in dates (``Mon, 05 Jan 2015 15:30:00 PST``): only unambiguous ones (CST is US Central or China,
# IST India, Ireland or Israel, BST British Summer or Bangladesh); any other name is the row's error.
TZINFOS = {
    "ET": _US_EASTERN,
    "EST": _US_EASTERN,
    "EDT": _US_EASTERN,
    "PT": _PACIFIC,
    "PST": _PACIFIC,
    "PDT": _PACIFIC,
    "MST": _MOUNTAIN,
    "MDT": _MOUNTAIN,
    "CET": _CET,
    "CEST": _CET,
    "JST": ZoneInfo("Asia/Tokyo"),
    "HKT": ZoneInfo("Asia/Hong_Kong"),
    "UTC": UTC,
    "GMT": UTC,
    "Z": UTC,
}


@dataclass
class ImportReport:
    read: int = 0
    imported: int = 0
    bad: int = 0
    clamped: int = 0  # items dated too far after the import, clamped to the import time
    tickers_capped: int = 0  # items that named more than max_tickers tickers
    errors: list[str] = field(default_factory=list)  # every bad row: "line N: reason"


def parse_mapping(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        target, sep, column = pair.partition("=")
        if not sep or target not in FIELDS or not column:
            raise ImportFileError(f"bad --map {pair!r}: expected FIELD=COLUMN with FIELD in {sorted(FIELDS)}")
        mapping[target] = column
    if "title" not in mapping:
        raise ImportFileError("--map title=COLUMN is required")
    return mapping


def parse_time(value: str, default_tz: tzinfo = UTC) -> datetime:
    """A row's time in UTC; ``default_tz`` (``--timezone``) only for a time that names no zone. A zone name not in
    ``TZINFOS`` is an error (dateutil only warned and gave a naive time, read as ``--timezone``: "15:30 PST" became
    15:30 UTC, before New York's close instead of after it, with nothing said)."""
    value = " ".join(value.split())

    def zone(name: str | None, offset: int | None) -> tzinfo | None:
        # every zone dateutil finds comes here: without this, a name of the host's own zone (CST on a Chicago box,
        # IST in India) was read as the host's zone, so one file imported differently from machine to machine
        if name is None:
            return None if offset is None else tz.tzoffset(None, offset)
        if name.upper() in TZINFOS:
            return TZINFOS[name.upper()]
        if offset is not None:  # a name with its own offset ("UTC+3"): the offset
            return tz.tzoffset(name, offset)
        raise ValueError(f"time {value!r} names a time zone this importer does not know: give an offset (-08:00)")

    dt = dateparser.parse(value, tzinfos=zone)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=default_tz)
    return dt.astimezone(UTC)


def rows(path: Path, fmt: str) -> Iterator[tuple[int, dict]]:
    """(line number, row); a row that cannot be read is ``{"__error__": reason}``, so it is counted and reported
    like any bad row and the rest of the file is still read."""
    if not Path(path).is_file():
        raise ImportFileError(f"{path}: no such file")
    if fmt == "csv":
        yield from _csv_rows(path)
    elif fmt == "jsonl":
        yield from _jsonl_rows(path)
    else:
        raise ImportFileError(f"unknown format {fmt!r}; use csv or jsonl")


def _not_utf8(text: str) -> str | None:
    """The reason a text decoded with ``surrogateescape`` held bytes that are not UTF-8, else None."""
    bad = next((c for c in text if "\udc80" <= c <= "\udcff"), None)
    return None if bad is None else f"not UTF-8 (byte 0x{ord(bad) - 0xDC00:02x})"


def _csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """Decoded with ``surrogateescape``: a bad byte marks its row (checked here), not the whole file. The reader
    goes on after a field over the limit (the rest of that line is dropped with it)."""
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
        reader = csv.DictReader(fh)
        try:
            if reader.fieldnames is None:  # the header first, so that line numbers count it; None: an empty file
                return
        except csv.Error as err:
            raise ImportFileError(f"{path}: the header line cannot be read as CSV: {err}") from None
        while True:
            line = reader.line_num + 1  # where the next record starts (a quoted field may span lines)
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                yield line, {"__error__": str(err)}
                continue
            reason = next(filter(None, (_not_utf8(v) for v in row.values() if isinstance(v, str))), None)
            yield line, ({"__error__": reason} if reason else row)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                yield n, {"__error__": f"not UTF-8 (byte 0x{raw[err.start]:02x})"}
            except json.JSONDecodeError as err:
                yield n, {"__error__": f"invalid JSON: {err}"}
            else:
                yield (
                    n,
                    value if isinstance(value, dict) else {"__error__": f"not a JSON object: {type(value).__name__}"},
                )


@dataclass(frozen=True)
class EdgeCheck:
    """The live edge check as the import applies it: ``imported_at`` is the fetch time."""

    imported_at: datetime
    future_tolerance_s: float = FUTURE_TOLERANCE_S
    max_tickers: int = MAX_TICKERS

    def cap(self, tickers: tuple[str, ...]) -> tuple[str, ...]:
        return tickers[: self.max_tickers]


def row_to_item(
    row: dict, mapping: dict[str, str], source: str, default_tz=UTC, edge: EdgeCheck | None = None
) -> tuple[NewsItem, list[str]]:
    """(item, fixes): ``fixes`` names what the edge check corrected (``"clamped"``, ``"tickers_capped"``)."""
    edge = edge or EdgeCheck(datetime.now(UTC))

    def get(name: str) -> str | None:
        column = mapping.get(name)
        value = row.get(column) if column else None
        return str(value) if value not in (None, "") else None

    if "__error__" in row:
        raise ValueError(row["__error__"])
    published_raw = get("published")
    if published_raw is None:
        raise ValueError(f"no value in the published column {mapping.get('published')!r}")
    published = parse_time(published_raw, default_tz)
    entry = {
        "title": get("title"),
        "summary": get("summary"),
        "link": canonical_url(get("url")),
        "id": get("id"),
        # normalize() reads feedparser's struct_time; give it the parsed time directly below instead.
    }
    item, fixes = normalize_checked(
        entry, source=get("source") or source, fetched=published, max_tickers=edge.max_tickers
    )
    extra_tickers = tuple(t.strip().upper() for t in (get("tickers") or "").replace(";", ",").split(",") if t.strip())
    item = item.model_copy(
        update={
            "published": published,
            "fetched": published,
            "published_inferred": False,
            "tickers": tuple(dict.fromkeys(extra_tickers + item.tickers)),
            "language": (get("language") or item.language),
        }
    )
    item, more = checked_item(item, edge.imported_at, edge.future_tolerance_s, edge.max_tickers)
    return item, sorted(set(fixes) | set(more))


def import_file(
    path: Path,
    fmt: str,
    mapping: dict[str, str],
    source: str,
    archive,
    default_tz=UTC,
    batch: int = 5000,
    progress=None,
    edge: EdgeCheck | None = None,
) -> ImportReport:
    """Rows repeating an id (StockNet lists a tweet once per ticker it names) become one item with all tickers
    (at most ``edge.max_tickers``): within a batch here, across batches where the archive reads a repeated id
    (``Archive.read`` joins the tickers of its copies). ``imported`` counts distinct ids. ``edge``: the check
    against the time of the import (now by default)."""
    edge = edge or EdgeCheck(datetime.now(UTC))
    report = ImportReport()
    imported: set[str] = set()
    pending: dict[str, NewsItem] = {}
    fixed: dict[str, set[str]] = {"clamped": set(), "tickers_capped": set()}  # item ids, each counted once
    for n, row in rows(path, fmt):
        report.read += 1
        try:
            item, fixes = row_to_item(row, mapping, source, default_tz, edge)
        except (ValueError, OverflowError, TypeError) as err:
            report.bad += 1
            report.errors.append(f"line {n}: {err}")
        else:
            if item.id in pending:
                item, capped = _merge(pending[item.id], item, edge)
                fixes = fixes + capped
            pending[item.id] = item
            for fix in fixes:
                fixed[fix].add(item.id)
        if len(pending) >= batch:
            archive.append(list(pending.values()))
            imported.update(pending)
            pending = {}
        if progress:
            progress(1)
    if pending:
        archive.append(list(pending.values()))
        imported.update(pending)
    report.imported = len(imported)
    report.clamped, report.tickers_capped = len(fixed["clamped"]), len(fixed["tickers_capped"])
    return report


def _merge(first: NewsItem, again: NewsItem, edge: EdgeCheck) -> tuple[NewsItem, list[str]]:
    """The first row's item with the tickers of both rows, capped as any item's are."""
    tickers = tuple(dict.fromkeys(first.tickers + again.tickers))
    capped = ["tickers_capped"] if len(tickers) > edge.max_tickers else []
    return first.model_copy(update={"tickers": edge.cap(tickers)}), capped
