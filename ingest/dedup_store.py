"""Dedup marks that survive restarts: the pure :class:`finsent.ingest.dedup.Deduper` over a SQLite file.

A store that cannot be read (not a database, a damaged one, rows SQLite reads but ingest cannot) is moved aside,
renamed with a timestamp, loudly, so ingest still starts (items the feeds still list are published again).
Kept apart from the core so that the core stays pure (no file, no database), as the import contract says.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np

from finsent.errors import StateStoreError
from finsent.files import move_aside
from finsent.ingest.dedup import ID_HORIZON, NUM_PERM, Deduper, Verdict, _Mark
from finsent.records import NewsItem

log = logging.getLogger("finsent.ingest.dedup")  # one logger for the dedup, core and store


class DamagedRow(sqlite3.DatabaseError):
    """A row SQLite reads back but ingest cannot: SQLite keeps no checksums of row contents, so a damaged file can
    open cleanly and hold a signature cut short or a time that is text."""


def _is_corruption(err: sqlite3.DatabaseError) -> bool:
    """Not a database, a malformed one, or damaged rows; a locked or unreadable (permissions) file is not moved aside."""
    if isinstance(err, DamagedRow):
        return True
    code = getattr(err, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _mark_of_row(item_id: object, at: object, keys: object, sig: object, seen: object) -> _Mark:
    """A stored row as a mark, or ``DamagedRow`` saying what is wrong with it."""
    try:
        if not (isinstance(item_id, str) and isinstance(keys, str) and isinstance(sig, bytes)):
            raise TypeError("item_id, keys or sig of the wrong type")
        if not (isinstance(at, int | float) and isinstance(seen, int | float) and math.isfinite(at + seen)):
            raise TypeError("at or seen is not a finite number")
        signature = np.frombuffer(sig, dtype=np.uint64)
        if len(signature) != NUM_PERM:
            raise ValueError(f"signature of {len(sig)} bytes, not {NUM_PERM * 8}")
        return _Mark(item_id, float(at), tuple(keys.split("\n")), signature, float(seen))
    except (TypeError, ValueError) as err:
        raise DamagedRow(f"damaged mark {str(item_id)[:80]!r}: {err}") from None


class DedupStore:
    """A Deduper whose marks survive restarts (SQLite, WAL).

    A row is dropped at start once both horizons passed; a row past the near-duplicate horizon only
    still answers for its id. ``moved_aside`` is where an unreadable store went (None if it was fine).
    """

    def __init__(
        self,
        path: Path,
        horizon: timedelta = timedelta(hours=48),
        threshold: float = 0.7,
        id_horizon: timedelta = ID_HORIZON,
        clock: Callable[[], float] = time.time,
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.moved_aside: Path | None = None
        self._args = (horizon, threshold, id_horizon, clock)
        try:
            try:
                self._open()
            except sqlite3.DatabaseError as err:
                if not _is_corruption(err):
                    raise
                self.moved_aside = self._move_aside(err)
                self._open()
        except sqlite3.OperationalError as err:  # a full disk, a read-only folder, a lock: one line, not a traceback
            raise StateStoreError(f"dedup store {path} cannot be opened: {err}") from None

    def _open(self) -> None:
        horizon, threshold, id_horizon, clock = self._args
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self._migrate()
            self.core = Deduper(horizon, threshold, id_horizon=id_horizon, clock=clock)
            self._load(horizon.total_seconds(), id_horizon.total_seconds(), clock())
        except BaseException:
            self.db.close()
            raise

    def _migrate(self) -> None:
        """Stores written before the id horizon have no ``seen``: their marks count as seen now."""
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS marks (item_id TEXT PRIMARY KEY, at REAL NOT NULL, keys TEXT NOT NULL,"
            " sig BLOB NOT NULL, seen REAL)"
        )
        if "seen" not in {row[1] for row in self.db.execute("PRAGMA table_info(marks)")}:
            self.db.execute("ALTER TABLE marks ADD COLUMN seen REAL")
        self.db.execute("UPDATE marks SET seen = ? WHERE seen IS NULL", (time.time(),))

    def _load(self, horizon_s: float, id_horizon_s: float, now: float) -> None:
        newest = self.db.execute("SELECT MAX(at) FROM marks WHERE typeof(at) IN ('real', 'integer')").fetchone()[0]
        newest = newest or 0.0  # a row whose time is not a number is read below, and found damaged there
        near_cutoff, id_cutoff = newest - horizon_s, now - id_horizon_s
        self.db.execute("DELETE FROM marks WHERE at < ? AND seen < ?", (near_cutoff, id_cutoff))
        for row in self.db.execute(
            "SELECT item_id, at, keys, sig, seen FROM marks WHERE seen >= ? OR at >= ? ORDER BY seen",
            (id_cutoff, near_cutoff),
        ):
            mark = _mark_of_row(*row)  # every row read is checked, or a damaged one stops a later ingest mid-run
            if mark.seen >= id_cutoff:
                self.core._remember_id(mark.item_id, mark.seen)
        rows = self.db.execute(
            "SELECT item_id, at, keys, sig, seen FROM marks WHERE at >= ? ORDER BY at", (near_cutoff,)
        )
        for row in rows:
            self.core._add_near(_mark_of_row(*row))

    def _move_aside(self, err: sqlite3.DatabaseError) -> Path:
        """Rename the store (and its WAL/SHM files) with a timestamp suffix: kept for a post-mortem, out of the way."""
        target = move_aside(self.path)
        log.error(
            "dedup store unreadable: moved aside, starting with an empty one (items the feeds still list "
            "will be published again)",
            extra={"path": str(self.path), "moved_to": str(target), "error": str(err)},
        )
        return target

    def check(self, item: NewsItem) -> Verdict:
        return self.core.check(item)

    def mark(self, item: NewsItem) -> None:
        mark = Deduper.mark_of(item, self.core.clock())
        self.db.execute(
            "INSERT OR REPLACE INTO marks (item_id, at, keys, sig, seen) VALUES (?, ?, ?, ?, ?)",
            (mark.item_id, mark.at, "\n".join(mark.keys), mark.sig.tobytes(), mark.seen),
        )
        self.core._add(mark)

    def close(self) -> None:
        self.db.close()
