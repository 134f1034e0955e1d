"""The news archive: every accepted NewsItem, as Parquet partitioned by event day.

It is the source of truth for replays, backtests and refilling a broker that lost its log, so
writes are atomic (a part file appears whole or not at all) and durable (the file and the directory
entries naming it are fsynced before ``append`` returns: ingest marks an item as seen only after
that), and reads return items in event-time order whatever order they were written in. Each
``append`` writes one immutable part file per day it touches; ``compact`` merges a day's parts (and
drops repeated ids) when they accumulate.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from finsent.errors import ArchiveReadError, ArchiveWriteError
from finsent.records import NewsItem

log = logging.getLogger("finsent.ingest")

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


STALE_TEMP_S = 3600.0  # no part takes an hour to write: a temp file that old was left by a process killed mid-write


def _remove_stale_temps(directory: Path) -> None:
    """Temp files of parts whose writer was killed mid-write (``kill -9``, power loss: its cleanup never ran),
    removed when the day is next written, so repeated crashes cannot fill the disk with them; logged."""
    cutoff = time.time() - STALE_TEMP_S
    for tmp in directory.glob(".part-*.tmp"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                log.warning("stale temp file of a killed archive write removed", extra={"path": str(tmp)})
        except OSError:  # gone already (another writer swept it), or not ours to remove: leave it
            continue


class Archive:
    """``skip_unreadable``: read past part files that cannot be read (each logged and listed in ``skipped``)
    instead of stopping at the first; for a refill, where every readable item counts. Off by default, and
    never for ``compact``, which deletes the parts it merged."""

    def __init__(self, root: Path, skip_unreadable: bool = False):
        self.root = Path(root)
        self.skip_unreadable = skip_unreadable
        self.skipped: list[Path] = []
        self._foreign: set[str] = set()  # folders named like days that are not (warned about once)

    def append(self, items: Iterable[NewsItem]) -> int:
        """One part file per day. Every day is tried even after one failed, and a failure says which items were
        written all the same (``ArchiveWriteError.written``): a caller retrying must not write them twice."""
        by_day: dict[date, list[NewsItem]] = defaultdict(list)
        for item in items:
            by_day[item.published.date()].append(item)
        written: set[str] = set()
        failed: dict[date, OSError] = {}
        for day, group in by_day.items():
            try:
                self._append_day(day, group)
            except OSError as err:  # a full disk or a blocked day directory: the other days may still go
                failed[day] = err
            else:
                written.update(item.id for item in group)
        if failed:
            days = ", ".join(day.isoformat() for day in failed)
            first = next(iter(failed.values()))
            raise ArchiveWriteError(
                f"archive days not written ({days}): {first}; {len(written)} items of other days were", written
            ) from first
        return len(written)

    def _append_day(self, day: date, group: list[NewsItem]) -> None:
        directory = _day_dir(self.root, day)
        _make_dirs(directory)
        _remove_stale_temps(directory)
        name = f"part-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}.parquet"
        self._write(directory / name, group)

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
        """The day folders' dates. A folder that only looks like one (``day=2015-03-02.bak``, a copy set aside by
        hand) is not the archive's: it is skipped, named once per Archive in a warning, not a crash of every
        backtest, replay and refill."""
        if not self.root.exists():
            return []
        days: list[date] = []
        foreign: list[str] = []
        for p in self.root.glob("day=*"):
            if not p.is_dir():
                continue
            try:
                day = date.fromisoformat(p.name[4:])
            except ValueError:
                day = None
            if day is None or p.name != _day_dir(self.root, day).name:  # "day=20150302" is not where it is read
                foreign.append(p.name)
            else:
                days.append(day)
        new = sorted(set(foreign) - self._foreign)
        if new:
            self._foreign.update(new)
            log.warning(
                "archive folders that are not day folders: skipped",
                extra={"root": str(self.root), "folders": new},
            )
        return sorted(days)

    def _read_day(self, day: date) -> list[dict]:
        parts = sorted(_day_dir(self.root, day).glob("part-*.parquet"))
        rows: list[dict] = []
        for part in parts:
            try:
                rows.extend(pq.read_table(part, schema=SCHEMA).to_pylist())
            except (pa.ArrowException, OSError) as err:  # truncated, not Parquet, unreadable
                self._unreadable(part, err)
        return rows

    def _unreadable(self, part: Path, err: Exception) -> None:
        """Strict (the default): one clear error naming the file. Skipping: one ERROR line per file, counted in
        ``skipped``, the rest read on; the caller says at the end that something was left out."""
        detail = " ".join(str(err).split())[:300]
        if not self.skip_unreadable:
            raise ArchiveReadError(part, detail) from err
        self.skipped.append(part)
        log.error(
            "archive part unreadable: skipped",
            extra={"path": str(part), "error": f"{type(err).__name__}: {detail}", "skipped": len(self.skipped)},
        )

    def read(self, start: datetime | None = None, end: datetime | None = None) -> Iterator[NewsItem]:
        """Items with start <= published < end, in (published, id) order; repeated ids yielded once, the first
        copy with the tickers of every copy: an import writes a batch at a time, and a file that lists an item
        again after a batch went (StockNet: once per ticker it names) leaves its tickers in another part."""
        for day in self.days():
            if start and day < start.astimezone(UTC).date():
                continue
            if end and day > end.astimezone(UTC).date():
                break
            rows = sorted(self._read_day(day), key=lambda r: (r["published"], r["id"]))
            tickers: dict[str, list[str]] = {}
            for row in rows:
                tickers.setdefault(row["id"], []).extend(row.get("tickers") or [])
            for row in rows:
                joined = tickers.pop(row["id"], None)
                if joined is None:  # a later copy: yielded already
                    continue
                if (start and row["published"] < start) or (end and row["published"] >= end):
                    continue
                yield NewsItem.model_validate(
                    {k: v for k, v in row.items() if v is not None}
                    | {"summary": row["summary"] or "", "tickers": list(dict.fromkeys(joined))}
                )

    def count(self, start: datetime | None = None, end: datetime | None = None) -> int:
        return sum(1 for _ in self.read(start, end))

    def compact(self, day: date) -> int:
        """Merge a day's part files into one (repeated ids kept once). Returns the item count."""
        directory = _day_dir(self.root, day)
        parts = sorted(directory.glob("part-*.parquet"))
        if len(parts) <= 1:
            return sum(pq.read_metadata(p).num_rows for p in parts)
        strict = Archive(self.root)  # a part it could not read would be deleted with the others
        items = list(
            strict.read(
                datetime.combine(day, datetime.min.time(), UTC),
                datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC),
            )
        )
        self._write(directory / f"part-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}-compacted.parquet", items)
        for part in parts:
            part.unlink()
        return len(items)
