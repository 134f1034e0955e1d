"""Exact and near-duplicate detection of headlines within a time horizon.

* exact: same item id, same canonical URL, or same normalised title (the same wire story carried
  verbatim by several outlets);
* near: MinHash over the title's words and word pairs; two titles whose estimated Jaccard
  similarity is at least ``threshold`` are the same story re-worded slightly ("Apple shares fall 5%"
  / "Apple shares fall 5 pct - Reuters"). SimHash was tried first and rejected: on ~12-word headlines
  a two-word suffix flips ~11 of 64 bits, as much as an unrelated story. Lookup is sub-linear with
  LSH banding (``bands`` x ``rows``); candidates sharing a band are confirmed on the full signature.

``check`` and ``mark`` are separate on purpose: the publisher marks an item only after the broker
acknowledged it, so a crash between the two re-sends rather than loses. :class:`DedupStore` persists
marks in SQLite so a restart does not re-emit what was already published.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np

from finsent.ingest.normalize import normalised_title
from finsent.records import NewsItem

NUM_PERM = 32
_RNG = np.random.default_rng(20240502)
_A = _RNG.integers(1, 2**63, NUM_PERM, dtype=np.uint64) | np.uint64(1)
_B = _RNG.integers(0, 2**63, NUM_PERM, dtype=np.uint64)


def shingles(text: str) -> set[str]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])}


def minhash(text: str) -> np.ndarray:
    """32 minima of multiply-add hash families (uint64 wrap-around arithmetic) over the shingles."""
    grams = shingles(text) or {""}
    h = np.fromiter(
        (int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "big") for g in grams),
        dtype=np.uint64, count=len(grams),
    )
    with np.errstate(over="ignore"):
        return (np.outer(_A, h) + _B[:, None]).min(axis=1)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Estimated Jaccard similarity of the two shingle sets."""
    return float((a == b).mean())


@dataclass(frozen=True)
class Verdict:
    duplicate: bool
    reason: str | None = None  # "id", "url", "title", "near"
    of: str | None = None  # id of the item it duplicates


@dataclass
class _Mark:
    item_id: str
    at: float  # event time, epoch seconds
    keys: tuple[str, ...]
    sig: np.ndarray


class Deduper:
    """In-memory index over the last ``horizon`` of marked items (pure; no I/O)."""

    def __init__(self, horizon: timedelta = timedelta(hours=48), threshold: float = 0.7, bands: int = 8,
                 max_candidates: int = 64):
        if NUM_PERM % bands:
            raise ValueError(f"bands must divide {NUM_PERM}")
        self.horizon = horizon.total_seconds()
        self.threshold = threshold
        self.bands = bands
        self.rows = NUM_PERM // bands
        # Newest candidates compared per band: bounds the cost when a (hostile) feed sends thousands of
        # near-identical titles that all share a band; a duplicate is almost always a recent item.
        self.max_candidates = max_candidates
        self._keys: dict[str, str] = {}
        self._bands: dict[tuple[int, bytes], list[_Mark]] = defaultdict(list)
        self._order: deque[_Mark] = deque()
        self._newest = 0.0

    def __len__(self) -> int:
        return len(self._order)

    @staticmethod
    def exact_keys(item: NewsItem) -> tuple[str, ...]:
        keys = [f"id:{item.id}"]
        if item.url:
            keys.append(f"url:{item.url}")
        title = normalised_title(item.title)
        if len(title) >= 12:  # very short titles ("Update", "Breaking") are not evidence of sameness
            keys.append(f"title:{title}")
        return tuple(keys)

    def _band_keys(self, sig: np.ndarray) -> list[tuple[int, bytes]]:
        r = self.rows
        return [(b, sig[b * r : (b + 1) * r].tobytes()) for b in range(self.bands)]

    def check(self, item: NewsItem) -> Verdict:
        for key in self.exact_keys(item):
            if key in self._keys:
                return Verdict(True, key.split(":", 1)[0], self._keys[key])
        if len(normalised_title(item.title).split()) < 4:
            return Verdict(False)
        sig = minhash(item.title)
        for band in self._band_keys(sig):
            for mark in reversed(self._bands.get(band, ())[-self.max_candidates :]):
                if similarity(mark.sig, sig) >= self.threshold:
                    return Verdict(True, "near", mark.item_id)
        return Verdict(False)

    @classmethod
    def mark_of(cls, item: NewsItem) -> _Mark:
        return _Mark(item.id, item.published.timestamp(), cls.exact_keys(item), minhash(item.title))

    def mark(self, item: NewsItem) -> None:
        self._add(self.mark_of(item))

    def _add(self, record: _Mark) -> None:
        for key in record.keys:
            self._keys.setdefault(key, record.item_id)
        for band in self._band_keys(record.sig):
            self._bands[band].append(record)
        self._order.append(record)
        self._newest = max(self._newest, record.at)
        self._evict()

    def _evict(self) -> None:
        limit = self._newest - self.horizon
        while self._order and self._order[0].at < limit:
            old = self._order.popleft()
            for key in old.keys:
                if self._keys.get(key) == old.item_id:
                    del self._keys[key]
            for band in self._band_keys(old.sig):
                bucket = self._bands.get(band)
                if bucket is not None:
                    bucket[:] = [m for m in bucket if m is not old]
                    if not bucket:
                        del self._bands[band]


class DedupStore:
    """A Deduper whose marks survive restarts (SQLite, WAL)."""

    def __init__(self, path: Path, horizon: timedelta = timedelta(hours=48), threshold: float = 0.7):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS marks (item_id TEXT PRIMARY KEY, at REAL NOT NULL, keys TEXT NOT NULL, sig BLOB NOT NULL)"
        )
        self.core = Deduper(horizon, threshold)
        newest = self.db.execute("SELECT MAX(at) FROM marks").fetchone()[0] or 0.0
        cutoff = newest - horizon.total_seconds()
        self.db.execute("DELETE FROM marks WHERE at < ?", (cutoff,))
        for item_id, at, keys, sig in self.db.execute("SELECT item_id, at, keys, sig FROM marks ORDER BY at"):
            self.core._add(_Mark(item_id, at, tuple(keys.split("\n")), np.frombuffer(sig, dtype=np.uint64)))

    def check(self, item: NewsItem) -> Verdict:
        return self.core.check(item)

    def mark(self, item: NewsItem) -> None:
        mark = Deduper.mark_of(item)
        self.db.execute(
            "INSERT OR REPLACE INTO marks VALUES (?, ?, ?, ?)", (mark.item_id, mark.at, "\n".join(mark.keys), mark.sig.tobytes())
        )
        self.core._add(mark)

    def close(self) -> None:
        self.db.close()
