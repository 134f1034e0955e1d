"""Event-time sentiment windows per dimension key (pure: no Kafka, no Faust, no clock of its own).

The live worker, the replay and the backtest all feed :class:`WindowStore` the same way, which is
what makes backtests tell the truth about live.

* Items land in tumbling **buckets** of ``bucket_seconds`` by *event* time, per key (``all``,
  ``topic:<label>``, ``ticker:<symbol>``).
* The **watermark** is the largest event time seen minus ``allowed_lateness``, taken over input
  **lanes** (Kafka partitions): the smallest of the lanes' maxima, ignoring lanes the caller marked
  idle (caught up). Without lanes, one partition's backlog replayed ahead of another's would make
  the other's items "late" on a restart or a replay, although live they were on time. The caller
  may also advance it from the wall clock (:meth:`advance`) so a quiet topic's window still closes.
* When a bucket's end passes the watermark it **closes**, and one :class:`WindowStat` per rolling
  width (sum of the last ``width / bucket`` buckets) is emitted for each key that had data then.
* An item older than the watermark is **late**: counted, and dropped or applied to the oldest open
  bucket according to ``late_policy``.
* The same item id is counted **once** per key, however often it is redelivered.
* Memory is bounded: buckets older than the widest window and ids older than that are evicted.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from finsent.records import Evidence, WindowStat


@dataclass(frozen=True)
class Observation:
    """What the windows need from one scored headline."""

    item_id: str
    at: datetime  # event time (UTC)
    keys: tuple[str, ...]
    sentiment: Literal["negative", "neutral", "positive"]
    score: float  # p(positive) - p(negative)
    evidence: Evidence


@dataclass
class Bucket:
    negative: int = 0
    neutral: int = 0
    positive: int = 0
    score_sum: float = 0.0
    evidence: list[tuple[float, str, Evidence]] = field(default_factory=list)  # min-heap on p_negative

    @property
    def count(self) -> int:
        return self.negative + self.neutral + self.positive

    def add(self, obs: Observation, keep: int) -> None:
        setattr(self, obs.sentiment, getattr(self, obs.sentiment) + 1)
        self.score_sum += obs.score
        if keep:
            entry = (obs.evidence.p_negative, obs.item_id, obs.evidence)
            if len(self.evidence) < keep:
                heapq.heappush(self.evidence, entry)
            elif entry > self.evidence[0]:
                heapq.heapreplace(self.evidence, entry)


@dataclass(frozen=True)
class Closed:
    """Rolling windows closed at one bucket boundary, with the evidence behind each."""

    stat: WindowStat
    width_s: int
    evidence: tuple[Evidence, ...]


class WindowStore:
    def __init__(
        self,
        bucket_seconds: int = 60,
        rolling_seconds: tuple[int, ...] = (300, 900, 3600),
        allowed_lateness_s: int = 120,
        late_policy: Literal["drop", "apply"] = "drop",
        evidence: int = 5,
    ):
        if any(w % bucket_seconds for w in rolling_seconds):
            raise ValueError("rolling widths must be multiples of the bucket size")
        self.bucket = bucket_seconds
        self.widths = tuple(sorted(rolling_seconds))
        self.lateness = allowed_lateness_s
        self.late_policy = late_policy
        self.keep = evidence
        self.buckets: dict[str, dict[int, Bucket]] = defaultdict(dict)  # key -> bucket start (epoch s) -> bucket
        self.seen: dict[str, set[str]] = defaultdict(set)  # key -> item ids counted (redelivery dedup)
        self.seen_at: dict[int, list[tuple[str, str]]] = defaultdict(list)  # bucket start -> (key, id): eviction order
        self.evicted_before = -(2**62)
        self.max_event = -1
        self.lane_max: dict[int, int] = {}
        self.idle_lanes: set[int] = set()
        self.watermark = -(2**62)
        self.next_close: int | None = None  # end of the oldest bucket not yet closed
        self.late = 0
        self.duplicates = 0

    def bucket_start(self, ts: float) -> int:
        return int(ts // self.bucket) * self.bucket

    def expect(self, lane: int) -> None:
        """A lane known to have a backlog holds the watermark back until it delivers (or goes idle)."""
        self.lane_max.setdefault(lane, -1)
        self.idle_lanes.discard(lane)

    def set_idle(self, lane: int, idle: bool = True) -> list[Closed]:
        """An idle lane (nothing more to read for now) no longer holds the watermark back."""
        if idle:
            self.idle_lanes.add(lane)
        else:
            self.idle_lanes.discard(lane)
        return self._close_until(self._event_watermark()) if self.max_event >= 0 else []

    def _event_watermark(self) -> int:
        busy = [m for lane, m in self.lane_max.items() if lane not in self.idle_lanes]
        low = min(busy) if busy else self.max_event
        return low - self.lateness if low >= 0 else -(2**62)

    def add(self, obs: Observation, lane: int = 0) -> list[Closed]:
        """Count one observation; return the windows that closed because the watermark moved."""
        ts = obs.at.timestamp()
        start = self.bucket_start(ts)
        if ts < self.watermark:
            self.late += 1
            if self.late_policy == "drop":
                return []
            start = self.next_close - self.bucket if self.next_close is not None else start
        repeated = False
        for key in obs.keys:
            if obs.item_id in self.seen[key]:
                repeated = True
                continue
            self.seen[key].add(obs.item_id)
            self.seen_at[start].append((key, obs.item_id))
            bucket = self.buckets[key].setdefault(start, Bucket())
            bucket.add(obs, self.keep)
        self.duplicates += repeated
        if self.next_close is None:
            self.next_close = start + self.bucket
        self.max_event = max(self.max_event, int(ts))
        self.lane_max[lane] = max(self.lane_max.get(lane, -1), int(ts))
        self.idle_lanes.discard(lane)
        return self._close_until(self._event_watermark())

    def advance(self, now: datetime, idle_s: float = 0.0) -> list[Closed]:
        """Wall-clock progress: with no events for ``idle_s``, time still moves the watermark."""
        return self._close_until(int(now.timestamp() - idle_s) - self.lateness)

    def _close_until(self, watermark: int) -> list[Closed]:
        if watermark <= self.watermark:
            return []
        self.watermark = watermark
        closed: list[Closed] = []
        widest = self.widths[-1]
        while self.next_close is not None and self.next_close <= watermark:
            end = self.next_close
            starts = {st for b in self.buckets.values() for st in b}
            if any(end - widest <= st < end for st in starts):
                closed.extend(self._emit(end))
                self.next_close = end + self.bucket
                continue
            # Nothing inside any window ending here: jump over the gap instead of walking it.
            ahead = [st for st in starts if st >= end]
            self.next_close = min(ahead) + self.bucket if ahead else self.bucket_start(watermark) + self.bucket
        self._evict(watermark)
        return closed

    def _emit(self, end: int) -> list[Closed]:
        out = []
        for key, buckets in self.buckets.items():
            for width in self.widths:
                parts = [buckets[s] for s in range(end - width, end, self.bucket) if s in buckets]
                if not parts:
                    continue
                neg, neu, pos = (sum(getattr(b, f) for b in parts) for f in ("negative", "neutral", "positive"))
                count = neg + neu + pos
                evidence = heapq.nlargest(self.keep, (e for b in parts for e in b.evidence))
                out.append(Closed(
                    # Built from counts this class keeps consistent itself: skip re-validation (hot path).
                    WindowStat.model_construct(
                        key=key, start=_dt(end - width), end=_dt(end), count=count, negative=neg, neutral=neu,
                        positive=pos, mean_score=max(-1.0, min(1.0, sum(b.score_sum for b in parts) / count)),
                    ),
                    width,
                    tuple(e[2] for e in evidence),
                ))
        return out

    def _evict(self, watermark: int) -> None:
        horizon = self.bucket_start(watermark) - self.widths[-1]
        if horizon <= self.evicted_before:
            return  # nothing new fell out of the widest window: eviction runs once per bucket, not per event
        self.evicted_before = horizon
        for key in list(self.buckets):
            for start in [s for s in self.buckets[key] if s < horizon]:
                del self.buckets[key][start]
            if not self.buckets[key]:
                del self.buckets[key]
        for start in [s for s in self.seen_at if s < horizon - self.lateness]:
            for key, item_id in self.seen_at.pop(start):
                ids = self.seen.get(key)
                if ids is not None:
                    ids.discard(item_id)
                    if not ids:
                        del self.seen[key]

    def size(self) -> tuple[int, int]:
        """(buckets held, ids held): what eviction keeps bounded."""
        return sum(len(b) for b in self.buckets.values()), sum(len(s) for s in self.seen.values())


def _dt(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def keys_for(topic: str, tickers: tuple[str, ...]) -> tuple[str, ...]:
    return ("all", f"topic:{topic}", *(f"ticker:{t}" for t in tickers))


__all__ = ["Bucket", "Closed", "Observation", "WindowStore", "keys_for"]
