"""The news archive: every accepted NewsItem, as Parquet partitioned by event day.

It is the source of truth for replays, backtests and refilling a broker that lost its log, so
writes are atomic (a part file appears whole or not at all) and durable (the file and the directory
entries naming it are fsynced before ``append`` returns: ingest marks an item as seen only after
that), and reads return items in event-time order whatever order they were written in. Each
``append`` writes one immutable part file per day it touches; ``compact`` merges a day's parts (and
drops repeated ids) when they accumulate.
"""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from finsent.records import NewsItem

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("title", pa.string()),
        ("summary", pa.string()),
        ("url", pa.string()),
        ("source", pa.string()),
        ("published", pa.timestamp("us", tz="UTC")),
        ("fetched", pa.timestamp("us", tz="UTC")),
        ("published_inferred", pa.bool_()),
        ("published_clamped", pa.bool_()),  # absent from parts written before it: read as null (None)
        ("tickers", pa.list_(pa.string())),
        ("tags", pa.list_(pa.string())),
        ("language", pa.string()),
        ("v", pa.int16()),
    ]
)


def _day_dir(root: Path, day: date) -> Path:
    return root / f"day={day.isoformat()}"


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (POSIX needs the directory itself fsynced)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(directory: Path) -> None:
    """``mkdir -p`` whose new entries survive a crash: each created directory's parent is fsynced."""
    if directory.is_dir():
        return
    _make_dirs(directory.parent)
    directory.mkdir(exist_ok=True)
    _fsync_dir(directory.parent)


class Archive:
    def __init__(self, root: Path):
        self.root = Path(root)

    def append(self, items: Iterable[NewsItem]) -> int:
        by_day: dict[date, list[NewsItem]] = defaultdict(list)
        for item in items:
            by_day[item.published.date()].append(item)
        for day, group in by_day.items():
            directory = _day_dir(self.root, day)
            _make_dirs(directory)
            name = f"part-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}.parquet"
            self._write(directory / name, group)
        return sum(len(g) for g in by_day.values())

    @staticmethod
    def _write(path: Path, items: list[NewsItem]) -> None:
        """Temp file, fsync, rename, fsync the directory: after a crash or power loss the part is there
        whole or not at all, and once this returns it is there for good."""
        table = pa.Table.from_pylist([item.model_dump() for item in items], schema=SCHEMA)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with open(tmp, "wb") as fh:
                pq.write_table(table, fh, compression="zstd")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk must not leave half-written temp files behind
            raise
        _fsync_dir(path.parent)

    def days(self) -> list[date]:
        if not self.root.exists():
            return []
        return sorted(date.fromisoformat(p.name[4:]) for p in self.root.glob("day=*") if p.is_dir())

    def _read_day(self, day: date) -> list[dict]:
        parts = sorted(_day_dir(self.root, day).glob("part-*.parquet"))
        rows: list[dict] = []
        for part in parts:
            rows.extend(pq.read_table(part, schema=SCHEMA).to_pylist())
        return rows

    def read(self, start: datetime | None = None, end: datetime | None = None) -> Iterator[NewsItem]:
        """Items with start <= published < end, in (published, id) order; repeated ids yielded once."""
        for day in self.days():
            if start and day < start.astimezone(UTC).date():
                continue
            if end and day > end.astimezone(UTC).date():
                break
            seen: set[str] = set()
            rows = sorted(self._read_day(day), key=lambda r: (r["published"], r["id"]))
            for row in rows:
                if row["id"] in seen:
                    continue
                seen.add(row["id"])
                if (start and row["published"] < start) or (end and row["published"] >= end):
                    continue
                yield NewsItem.model_validate(
                    {k: v for k, v in row.items() if v is not None} | {"summary": row["summary"] or ""}
                )

    def count(self, start: datetime | None = None, end: datetime | None = None) -> int:
        return sum(1 for _ in self.read(start, end))

    def compact(self, day: date) -> int:
        """Merge a day's part files into one (repeated ids kept once). Returns the item count."""
        directory = _day_dir(self.root, day)
        parts = sorted(directory.glob("part-*.parquet"))
        if len(parts) <= 1:
            return sum(pq.read_metadata(p).num_rows for p in parts)
        items = list(
            self.read(
                datetime.combine(day, datetime.min.time(), UTC),
                datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC),
            )
        )
        self._write(directory / f"part-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}-compacted.parquet", items)
        for part in parts:
            part.unlink()
        return len(items)
