"""The audit log's rows for compliance's tools: CSV (formula-safe) or JSON, streamed row by row, and the time
bounds (``--from``/``--to``, ``?from=``/``?to=``) that select them. ``finsent receiver export`` writes a file;
the receiver's ``GET /alerts?format=csv`` answers with the same CSV. Both hold the case actions (acknowledge,
assign, note, close: who, when, what) beside the notifications, every row of the log with its ``row_hash``, so an
export is the whole record and has no gaps in ``seq``."""

from __future__ import annotations

import csv
import io
import json
import textwrap
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

CSV_FIELDS = [
    "seq",
    "received_at",
    "receiver",
    "status",
    "alertname",
    "severity",
    "dim",
    "name",
    "starts_at",
    "ends_at",
    "fingerprint",
    "surge_alert_id",
    "summary",
    "evidence_titles",
    "evidence_links",
    "evidence_match",
    # a case action's row (``status`` is then the action): who did what on which case, empty on notifications
    "action",
    "actor",
    "assignee",
    "note",
    "disposition",
    "case_seq",
    "row_hash",
]


def parse_time(value: str | None) -> datetime | None:
    """An ISO 8601 time with its zone, in UTC; ValueError (one clear line) for anything else, including a time that
    leaves datetime's range once moved to UTC (``0001-01-01T00:00:00+01:00``), which raised OverflowError."""
    if not value:
        return None
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"time {value!r} needs a time zone (e.g. 2024-05-02T12:00:00Z)")
    try:
        return dt.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"time {value!r} is out of range") from None


def _cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (= + - @, or a leading tab/CR) is quoted with '."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _csv_row(r: dict[str, Any]) -> dict[str, Any]:
    row = {
        **{k: r.get(k) for k in CSV_FIELDS if k in r},
        "summary": r["annotations"].get("summary", ""),
        "evidence_titles": " | ".join(e["title"] for e in r["evidence"]),
        "evidence_links": " ".join(e.get("url") or "" for e in r["evidence"]),
    }
    return {k: _cell(v) for k, v in row.items()}


def write_csv(rows: Iterable[dict[str, Any]], out: TextIO) -> int:
    """The audit rows as CSV for compliance's spreadsheets, row by row: headlines are attacker-controlled
    text, so every cell that could start a formula is neutralised (CSV/formula injection)."""
    w = csv.DictWriter(out, fieldnames=CSV_FIELDS)
    w.writeheader()
    n = 0
    for r in rows:
        w.writerow(_csv_row(r))
        n += 1
    return n


def write_json(rows: Iterable[dict[str, Any]], out: TextIO) -> int:
    """The rows as one JSON array, written row by row; the text is what ``json.dumps(rows, indent=2)`` gives."""
    n = 0
    for r in rows:
        out.write(("[\n" if n == 0 else ",\n") + textwrap.indent(json.dumps(r, indent=2), "  "))
        n += 1
    out.write("\n]" if n else "[]")
    return n


def export(rows: Iterable[dict[str, Any]], out: TextIO, fmt: Literal["csv", "json"]) -> int:
    """Stream every row to ``out`` (nothing is collected in memory); returns how many."""
    return write_csv(rows, out) if fmt == "csv" else write_json(rows, out)


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    write_csv(rows, out)
    return out.getvalue()


__all__ = ["CSV_FIELDS", "export", "parse_time", "to_csv", "write_csv", "write_json"]
