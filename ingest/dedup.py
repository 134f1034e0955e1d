"""Exact and near-duplicate detection of headlines within a time horizon.

* exact: same item id, same canonical URL, or same normalised title (the same wire story carried
  verbatim by several outlets);
* near: MinHash over the title's words and word pairs; two titles whose estimated Jaccard
  similarity is at least ``threshold`` are the same story re-worded slightly ("Apple shares fall 5%"
  / "Apple shares fall 5 pct - Reuters"). SimHash was tried first and rejected: on ~12-word headlines
  a two-word suffix flips ~11 of 64 bits, as much as an unrelated story. Lookup is sub-linear with
  LSH banding (``bands`` x ``rows``); candidates sharing a band are confirmed on the full signature.

Two horizons. Near-duplicate evidence (URL, title, MinHash) is kept for ``horizon`` of *event* time
behind the newest item: a re-worded story arrives within hours. Exact item ids are kept much longer,
for ``id_horizon`` of *wall-clock* time since they were marked: a feed may list an item for weeks (a
central bank's press releases), and forgetting its id while the feed still lists it re-publishes it.

``check`` and ``mark`` are separate on purpose: the publisher marks an item only after the broker
acknowledged it and the archive holds it, so a crash before the mark re-sends rather than loses.
:class:`finsent.ingest.dedup_store.DedupStore` persists marks in SQLite so a restart does not re-emit what was
already published; this module is the pure core it wraps (no file, no database: the import contract checks it).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import numpy as np

from finsent.ingest.normalize import normalised_title
from finsent.records import NewsItem

log = logging.getLogger("finsent.ingest.dedup")

ID_HORIZON = timedelta(days=30)

NUM_PERM = 32
_RNG = np.random.default_rng(20240502)
_A = _RNG.integers(1, 2**63, NUM_PERM, dtype=np.uint64) | np.uint64(1)
_B = _RNG.integers(0, 2**63, NUM_PERM, dtype=np.uint64)


def shingles(text: str) -> set[str]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return set(words) | {f"{a} {b}" for a, b in itertools.pairwise(words)}


def minhash(text: str) -> np.ndarray:
    """32 minima of multiply-add hash families (uint64 wrap-around arithmetic) over the shingles."""
    grams = shingles(text) or {""}
    h = np.fromiter(
        (int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "big") for g in grams),
        dtype=np.uint64,
        count=len(grams),
    )
    with np.errstate(over="ignore"):
        signature: np.ndarray = (np.outer(_A, h) + _B[:, None]).min(axis=1)
    return signature


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
    seen: float = 0.0  # wall-clock time it was marked, epoch seconds (the exact-id horizon counts from here)


class Deduper:
    """In-memory index over the last ``horizon`` of marked items, and their ids over ``id_horizon`` (no I/O)."""

    def __init__(
        self,
        horizon: timedelta = timedelta(hours=48),
        threshold: float = 0.7,
        bands: int = 8,
        max_candidates: int = 64,
        id_horizon: timedelta = ID_HORIZON,
        clock: Callable[[], float] = time.time,
    ):
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
        self.id_horizon = id_horizon.total_seconds()
        self.clock = clock
        self._ids: dict[str, float] = {}  # item id -> wall-clock time marked
        self._id_order: deque[tuple[float, str]] = deque()

    def __len__(self) -> int:
        """Marks inside the near-duplicate horizon (ids may be remembered longer)."""
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
        if item.id in self._ids:
            return Verdict(True, "id", item.id)
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
    def mark_of(cls, item: NewsItem, seen: float | None = None) -> _Mark:
        return _Mark(
            item.id,
            item.published.timestamp(),
            cls.exact_keys(item),
            minhash(item.title),
            time.time() if seen is None else seen,
        )

    def mark(self, item: NewsItem) -> None:
        self._add(self.mark_of(item, self.clock()))

    def _add(self, record: _Mark) -> None:
        self._remember_id(record.item_id, record.seen)
        self._add_near(record)

    def _remember_id(self, item_id: str, seen: float) -> None:
        """The exact id, kept for ``id_horizon`` of wall-clock time whatever the event times around it."""
        self._ids[item_id] = seen
        self._id_order.append((seen, item_id))
        cutoff = self.clock() - self.id_horizon
        while self._id_order and self._id_order[0][0] < cutoff:
            old_seen, old_id = self._id_order.popleft()
            if self._ids.get(old_id) == old_seen:  # not re-marked since
                del self._ids[old_id]

    def _add_near(self, record: _Mark) -> None:
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
