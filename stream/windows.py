"""Event-time sentiment windows per dimension key (pure: no Kafka, no Faust, no clock of its own).

The live worker, the replay and the backtest all feed :class:`WindowStore` the same way, which is
what makes backtests tell the truth about live.

Time semantics (the Dataflow model: event-time windows, a watermark, allowed lateness, late panes):

* **Event time** is the headline's publish time, checked at the edge (``pipeline.checked_item``): a
  time too far ahead of the fetch time is clamped to it, so no record can drag time into the future.
* Items land in tumbling **buckets** of ``bucket_seconds`` by event time, per key (``all``,
  ``topic:<label>``, ``ticker:<symbol>``). A rolling window of width *w* ending at *e* is the sum of
  the buckets in ``[e - w, e)``; windows end on every bucket boundary.
* The **watermark** says "event time has reached here": the smallest of the input **lanes'** (Kafka
  partitions') newest event times, minus ``watermark_delay_s`` for stragglers. A lane that is caught
  up and quiet stops holding it back; the caller may also advance it from the wall clock
  (:meth:`advance`) so a quiet topic's windows still close, and may cap it (``ceiling``) at wall
  time plus the tolerance, as a last guard against a future-dated record.
* When a bucket boundary passes the watermark, the windows ending there **close**: their first,
  *on-time* result is emitted, one :class:`Closed` per width, for each key with data; its revision is its
  item count, which only grows, so a restart that publishes a window again never gives it a lower one.
* An item whose bucket already closed is **late**. Up to ``allowed_lateness_s`` behind the watermark
  it still counts in its own bucket, and every closed window it touches is emitted again as a new
  **revision** (:meth:`flush_revisions`): same key, start and end, a higher ``revision``. Consumers keep
  the highest revision. Older items are
  **rejected** (:meth:`too_late`): the caller counts them and sends them to a side output; nothing
  is dropped without a trace.
* The same item id is counted **once**, however often it is redelivered, in the keys it first came with.
* A window's ``revision`` is its **content**: the number of items it holds when it is published. Counts
  only grow (items are added, never taken away, and a redelivery is not counted again), so a later
  result of a window always carries a higher number than an earlier one with less in it, and the same
  content always carries the same number, however the items were polled and however often the worker
  restarted. A number of *late* items, as it was before, is not: a restart replays the log in large
  polls sorted by event time, so items that were late before the crash come back on time and the
  count of late items restarted lower than what readers already held, who then kept a stale window.
* Memory is bounded by time, not by traffic pattern: buckets and ids are kept for
  ``allowed_lateness_s + widest window`` behind the watermark (about 120 buckets per active key with
  the defaults), then evicted; a late item older than that is rejected, never half-counted.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from finsent.records import Evidence, WindowStat

# Before any event time: "nothing seen yet" for the newest event time, a lane's and the watermark. Not -1 (or any
# time a headline could carry): items dated before 1970 have negative epoch seconds, and a store of them never closed
# a window live, since it took their newest event time for "nothing yet".
NEVER = -(2**62)


@dataclass(frozen=True)
class Observation:
    """What the windows need from one scored headline."""

    item_id: str
    at: datetime  # event time (UTC)
    keys: tuple[str, ...]
    sentiment: Literal["negative", "neutral", "positive"]
    score: float  # p(positive) - p(negative)
    evidence: Evidence


# Scores are summed as integers in units of 2**-52 (a headline's score is off by at most 2**-53, float precision,
# far below the float32 the windows are published in). Integer sums do not depend on the order items arrive in, as
# float sums did in their last bits, and they make a window a difference of two running totals (``windows_at``).
SCORE_UNIT = 2.0**-52
_UNITS_PER_SCORE = 2**52
_SENTIMENTS = frozenset(("negative", "neutral", "positive"))
Totals = tuple[int, int, int, int]  # (negative, neutral, positive, score_units)
NO_TOTALS: Totals = (0, 0, 0, 0)


@dataclass(slots=True)
class Bucket:
    negative: int = 0
    neutral: int = 0
    positive: int = 0
    score_units: int = 0  # the scores' sum in SCORE_UNITs
    evidence: list[tuple[float, str, Evidence]] = field(default_factory=list)  # min-heap on p_negative
    # (negative, neutral, positive, score_units) summed over this key's held buckets up to this one, from the
    # key's base: valid for the key's first ``WindowStore.totals_valid[key]`` buckets only
    totals: Totals = NO_TOTALS

    @property
    def count(self) -> int:
        return self.negative + self.neutral + self.positive

    @property
    def score_sum(self) -> float:
        return self.score_units * SCORE_UNIT

    def plus(self, t: Totals) -> Totals:
        """``t`` with this bucket's counts added: the next running totals, or an eviction's new base."""
        return (
            t[0] + self.negative,
            t[1] + self.neutral,
            t[2] + self.positive,
            t[3] + self.score_units,
        )

    def add(self, obs: Observation, units: int, keep: int) -> None:
        """``units``: ``obs.score`` in SCORE_UNITs, checked by the store before anything is counted."""
        setattr(self, obs.sentiment, getattr(self, obs.sentiment) + 1)
        self.score_units += units
        if keep:
            entry = (obs.evidence.p_negative, obs.item_id, obs.evidence)
            if len(self.evidence) < keep:
                heapq.heappush(self.evidence, entry)
            elif entry > self.evidence[0]:
                heapq.heapreplace(self.evidence, entry)


@dataclass(slots=True)
class Closed:
    """One rolling window's result (on-time or a revision), with the evidence behind it. A value: nothing
    changes one after it is made (``dataclasses.replace`` makes a changed copy, as for a revision).

    Kept as plain numbers: a backtest closes about ten windows per headline and writes them straight to
    columns, and building a validated :class:`WindowStat` for each cost a quarter of its bookkeeping. The
    record is built on first use of :attr:`stat` (publishing, the surge detector), once. Not a frozen
    dataclass: its generated ``__init__`` sets each field through ``object.__setattr__``, 0.79 against 0.14 us
    a result, ~7 us of a backtest's bookkeeping per headline.
    """

    key: str
    width_s: int
    end_s: int  # epoch seconds; the window is [end_s - width_s, end_s)
    negative: int
    neutral: int
    positive: int
    score_sum: float
    revision: int  # the window's version: its count (see the module's docstring)
    # The headlines behind it, most negative first: only for the widths the store gathers them for
    # (``WindowStore(evidence_widths=...)``: the surge detector's), empty for the others.
    evidence: tuple[Evidence, ...]
    revised: bool = False  # published again because late items changed it (not its on-time result)
    _stat: WindowStat | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def start_s(self) -> int:
        return self.end_s - self.width_s

    @property
    def count(self) -> int:
        return self.negative + self.neutral + self.positive

    @property
    def negative_share(self) -> float:
        count = self.negative + self.neutral + self.positive
        return self.negative / count if count else 0.0

    @property
    def start(self) -> datetime:
        return _dt(self.start_s)

    @property
    def end(self) -> datetime:
        return _dt(self.end_s)

    @property
    def mean_score(self) -> float:
        count = self.negative + self.neutral + self.positive
        return max(-1.0, min(1.0, self.score_sum / count)) if count else 0.0

    @property
    def stat(self) -> WindowStat:
        stat = self._stat
        if stat is None:
            stat = WindowStat.model_construct(
                # Built from counts the store keeps consistent itself: skip re-validation (hot path).
                key=self.key,
                start=self.start,
                end=self.end,
                count=self.count,
                negative=self.negative,
                neutral=self.neutral,
                positive=self.positive,
                mean_score=self.mean_score,
                revision=self.revision,
                v=WindowStat.SCHEMA,
            )
            self._stat = stat  # a cache, not a change of value
        return stat


class WindowStore:
    def __init__(
        self,
        bucket_seconds: int = 60,
        rolling_seconds: tuple[int, ...] = (300, 900, 3600),
        watermark_delay_s: int = 120,
        allowed_lateness_s: int = 3600,
        evidence: int = 5,
        evidence_widths: tuple[int, ...] | None = None,
    ):
        if any(w % bucket_seconds for w in rolling_seconds):
            raise ValueError("rolling widths must be multiples of the bucket size")
        self.bucket = bucket_seconds
        self.widths = tuple(sorted(rolling_seconds))
        self.delay = watermark_delay_s
        self.lateness = allowed_lateness_s
        self.keep = evidence
        # Widths whose results carry evidence (None: all). Gathering it merges every bucket's top entries across
        # the window: for the widest window that was a quarter of a backtest's bookkeeping, for results nobody read.
        wanted = self.widths if evidence_widths is None else tuple(evidence_widths)
        if not set(wanted) <= set(self.widths):
            raise ValueError(f"evidence_widths {wanted} must be among the rolling widths {self.widths}")
        self.evidence_widths = frozenset(wanted) if evidence else frozenset()
        self.evidence_until = max(self.evidence_widths, default=0)  # no width wider than this merges evidence
        self.key_starts: dict[str, list[int]] = {}  # key -> its bucket starts (epoch s), sorted: found by bisection
        self.key_rows: dict[str, list[Bucket]] = {}  # key -> its buckets, in the order of ``key_starts``
        # Running totals (``Bucket.totals``): a window is the newest bucket's totals minus those of the bucket before
        # its first one, not a walk over its buckets (60 for an hour of one-minute buckets, ~70 bucket visits per
        # headline in a backtest). Kept lazily: a change to a key's bucket ``at`` makes the totals from ``at`` on
        # stale, and the next window read brings them up to date as far as it needs. ``totals_base``: what the
        # key's evicted buckets held, the totals before its first held bucket.
        self.totals_valid: dict[str, int] = {}
        self.totals_base: dict[str, Totals] = {}
        self.keys_at: dict[int, set[str]] = {}  # bucket start -> keys with data there
        self.starts: list[int] = []  # sorted keys of keys_at: finds the next boundary with data in O(log n)
        # Item ids counted (redelivery dedup), once across keys: an item re-scored on redelivery with another topic
        # (a restarted worker, a new model) counts in the keys it first came with, not in a second topic too.
        self.seen: set[str] = set()
        self.seen_at: dict[int, list[str]] = defaultdict(list)  # bucket start -> ids counted there: eviction
        self.evicted_before = NEVER
        self.max_event = NEVER  # the newest event time seen (NEVER: none yet)
        self.lane_max: dict[int, int] = {}  # lane -> its newest event time (NEVER: expected, none delivered yet)
        self.idle_lanes: set[int] = set()
        self.ceiling: float | None = None  # the watermark never passes this (wall clock + tolerance), if set
        self.watermark = NEVER
        self.next_close: int | None = None  # end of the oldest window boundary not yet closed
        self.dirty: dict[str, set[int]] = defaultdict(set)  # key -> closed bucket starts that got late items
        self.pending: list[Closed] = []  # revisions taken when the watermark moved, not yet flushed
        self.late = 0  # counted late (revisions)
        self.rejected = 0  # too late: not counted
        self.duplicates = 0

    # -- time -------------------------------------------------------------------------------------
    def bucket_start(self, ts: float) -> int:
        return int(ts // self.bucket) * self.bucket

    @property
    def closed_until(self) -> int:
        """Every window ending at or before this has had its on-time result."""
        return self.next_close - self.bucket if self.next_close is not None else NEVER

    def too_late(self, at: datetime) -> bool:
        """Older than the watermark by more than the allowed lateness: not counted (the caller rejects it)."""
        return at.timestamp() < self.watermark - self.lateness

    def expect(self, lane: int) -> None:
        """A lane known to have a backlog holds the watermark back until it delivers (or goes idle)."""
        self.lane_max.setdefault(lane, NEVER)
        self.idle_lanes.discard(lane)

    def set_idle(self, lane: int, idle: bool = True) -> list[Closed]:
        """An idle lane (nothing more to read for now) no longer holds the watermark back."""
        if idle:
            self.idle_lanes.add(lane)
        else:
            self.idle_lanes.discard(lane)
        return self._close_until(self._event_watermark()) if self.max_event > NEVER else []

    def _event_watermark(self) -> int:
        busy = [m for lane, m in self.lane_max.items() if lane not in self.idle_lanes]
        low = min(busy) if busy else self.max_event
        return low - self.delay if low > NEVER else NEVER

    def advance(self, now: datetime, idle_s: float = 0.0) -> list[Closed]:
        """Outside progress (idle timer, end of a backtest): ``now`` is the event-time clock estimate."""
        return self._close_until(int(now.timestamp() - idle_s) - self.delay)

    def close_to(self, end: int) -> list[Closed]:
        """Close every window ending at or before ``end`` (a restart catching up with what it published)."""
        return self._close_until(end)

    # -- items ------------------------------------------------------------------------------------
    def add(self, obs: Observation, lane: int = 0) -> list[Closed]:
        """Count one observation; return the windows that closed because the watermark moved.

        The caller checks :meth:`too_late` first; a late item is counted in its own bucket and marks
        the closed windows it touches for :meth:`flush_revisions`.
        """
        # Checked before anything is counted: a bad observation raises here and leaves the store as it was
        # (the pipeline's records already refuse both; hand-built observations do not pass through them).
        if obs.sentiment not in _SENTIMENTS:
            raise ValueError(f"{obs.item_id}: unknown sentiment {obs.sentiment!r}")
        if not -1.0 <= obs.score <= 1.0:  # NaN fails this too
            raise ValueError(f"{obs.item_id}: score {obs.score!r} outside [-1, 1]")
        units = round(obs.score * _UNITS_PER_SCORE)
        ts = obs.at.timestamp()
        start = self.bucket_start(ts)
        end = start + self.bucket
        if self.next_close is None or self.watermark < end < self.next_close:
            self.next_close = end  # only before the first close: an earlier on-time item starts the clock
        late = end <= self.closed_until  # its first window has had its on-time result already
        repeated = obs.item_id in self.seen
        if not repeated:
            self.seen.add(obs.item_id)
            self.seen_at[start].append(obs.item_id)
        for key in () if repeated else dict.fromkeys(obs.keys):  # a key named twice counts once
            starts = self.key_starts.get(key)
            if starts is None:
                starts, rows = self.key_starts[key], self.key_rows[key] = [], []
            else:
                rows = self.key_rows[key]
            at = len(starts) - 1 if starts and starts[-1] == start else bisect.bisect_left(starts, start)
            if at < len(starts) and starts[at] == start:
                bucket = rows[at]
            else:
                bucket = Bucket()
                starts.insert(at, start)
                rows.insert(at, bucket)
                self._index(start, key)
            if self.totals_valid.get(key, 0) > at:
                self.totals_valid[key] = at
            bucket.add(obs, units, self.keep)
            if late:
                self.dirty[key].add(start)
        self.duplicates += repeated
        self.late += late and not repeated
        capped = int(min(ts, self.ceiling) // 1) if self.ceiling is not None else int(ts // 1)  # floor: before 1970 too
        self.max_event = max(self.max_event, capped)
        self.lane_max[lane] = max(self.lane_max.get(lane, NEVER), capped)
        self.idle_lanes.discard(lane)
        return self._close_until(self._event_watermark())

    def _index(self, start: int, key: str) -> None:
        keys = self.keys_at.get(start)
        if keys is None:
            keys = self.keys_at[start] = set()
            bisect.insort(self.starts, start)
        keys.add(key)

    # -- results ----------------------------------------------------------------------------------
    def window(self, key: str, width: int, end: int) -> Closed | None:
        """The window ``[end - width, end)`` of ``key`` as it stands now (None when it holds nothing)."""
        found = self.windows_at(key, end, (width,))
        return found[0] if found else None

    def newest_start(self, key: str) -> int | None:
        """The start of ``key``'s newest bucket held (None: it holds none)."""
        starts = self.key_starts.get(key)
        return starts[-1] if starts else None

    def windows_at(self, key: str, end: int, widths: tuple[int, ...] | None = None) -> list[Closed]:
        """Every window of ``key`` ending at ``end`` (``widths`` ascending; default all), narrowest first. Counts
        and sums are differences of running totals (``Bucket.totals``); only the evidence is gathered bucket by
        bucket, newest first, and only over the widths that carry it (the narrower windows' buckets are the
        newest of the wider ones, so one walk serves them all)."""
        starts = self.key_starts.get(key)
        if not starts:
            return []
        i = bisect.bisect_left(starts, end) - 1  # the newest bucket before ``end``
        if i < 0:
            return []
        if widths is None:
            widths = self.widths  # sorted once in __init__: no check on the close path
        elif list(widths) != sorted(widths):
            raise ValueError(f"widths must be ascending (each window extends the previous): {widths}")
        rows = self.key_rows[key]
        base = self.totals_base.get(key, NO_TOTALS)
        valid = self.totals_valid.get(key, 0)
        if valid <= i:  # bring the totals up to date as far as this window needs
            t = rows[valid - 1].totals if valid else base
            for b in rows[valid : i + 1]:
                t = b.totals = b.plus(t)
            self.totals_valid[key] = i + 1
        newest = rows[i].totals
        keep, gather, gather_until = self.keep, self.evidence_widths, self.evidence_until
        top: list[tuple[float, str, Evidence]] = []  # min-heap: the ``keep`` largest entries seen so far
        merged = i  # the evidence of buckets newer than this one is in ``top``
        out: list[Closed] = []
        for width in widths:
            first = bisect.bisect_left(starts, end - width, 0, i + 1)  # the oldest bucket inside the window
            if first > i:
                continue
            before = rows[first - 1].totals if first else base
            negative, neutral, positive = newest[0] - before[0], newest[1] - before[1], newest[2] - before[2]
            if width <= gather_until:  # a wider evidence window still needs this one's entries
                while merged >= first:
                    for entry in rows[merged].evidence:
                        if len(top) < keep:
                            heapq.heappush(top, entry)
                        elif entry > top[0]:
                            heapq.heapreplace(top, entry)
                    merged -= 1
            evidence = tuple(e[2] for e in sorted(top, reverse=True)) if width in gather else ()
            score_sum = (newest[3] - before[3]) * SCORE_UNIT
            count = negative + neutral + positive
            out.append(Closed(key, width, end, negative, neutral, positive, score_sum, count, evidence))
        return out

    def flush_revisions(self, until: float | None = None) -> list[Closed]:
        """Every closed window (ending at or before ``until``) that late items changed since the last
        flush, once each. Later ends get these items in their on-time result."""
        out, self.pending = self.pending, []
        out += self._revisions(self.closed_until if until is None else min(self.closed_until, until))
        out.sort(key=lambda c: (c.end_s, c.width_s, c.key))
        return out

    def _revisions(self, closed_until: float) -> list[Closed]:
        out: list[Closed] = []
        if closed_until <= NEVER or closed_until == float("-inf"):
            self.dirty.clear()
            return out
        closed_until = int(closed_until)
        for key, starts in self.dirty.items():
            touched: dict[int, set[int]] = defaultdict(set)  # window end -> widths a late item changed there
            for start in starts:
                for width in self.widths:
                    last = min(start + width, closed_until)
                    for end in range(start + self.bucket, last + 1, self.bucket):
                        touched[end].add(width)
            for end, widths in touched.items():
                out += [dataclasses.replace(c, revised=True) for c in self.windows_at(key, end, tuple(sorted(widths)))]
        self.dirty.clear()
        return out

    def _close_until(self, watermark: float) -> list[Closed]:
        if self.ceiling is not None:
            watermark = min(watermark, self.ceiling - self.delay)
        watermark = int(watermark)
        if watermark <= self.watermark:
            return []
        if self.dirty:  # revisions are taken before the watermark moves on: what they revise is still held
            self.pending += self._revisions(self.closed_until)
        self.watermark = watermark
        closed: list[Closed] = []
        widest = self.widths[-1]
        while self.next_close is not None and self.next_close <= watermark:
            end = self.next_close
            keys = set().union(*(self.keys_at.get(s, ()) for s in range(end - widest, end, self.bucket)))
            if keys:
                for key in sorted(keys):
                    closed += self.windows_at(key, end)
                self.next_close = end + self.bucket
                continue
            # Nothing inside any window ending here: jump to the next boundary with data, but never past
            # the watermark's own bucket, so an on-time item arriving in the gap still gets its windows.
            i = bisect.bisect_left(self.starts, end)
            ahead = self.starts[i] + self.bucket if i < len(self.starts) else None
            limit = self.bucket_start(watermark) + self.bucket
            self.next_close = min(ahead, limit) if ahead is not None else limit
        self._evict(watermark)
        return closed

    def _evict(self, watermark: int) -> None:
        horizon = self.bucket_start(watermark - self.lateness) - self.widths[-1]
        if horizon <= self.evicted_before:
            return  # nothing new fell out of the horizon: eviction runs once per bucket, not per event
        self.evicted_before = horizon
        while self.starts and self.starts[0] < horizon:
            start = self.starts.pop(0)
            for key in self.keys_at.pop(start, ()):
                starts = self.key_starts.get(key)
                # The key's oldest bucket: its older ones went out with earlier starts (the base relies on it).
                if starts is not None and starts[0] == start:
                    del starts[0]
                    gone = self.key_rows[key].pop(0)
                    self.totals_base[key] = gone.plus(self.totals_base.get(key, NO_TOTALS))
                    # The later buckets' totals counted the evicted one, as the base now does: they stay right.
                    self.totals_valid[key] = max(0, self.totals_valid.get(key, 0) - 1)
                    if not starts:
                        del self.key_starts[key]
                        del self.key_rows[key]
                        del self.totals_valid[key]
                        del self.totals_base[key]
        for start in [s for s in self.seen_at if s < horizon]:
            self.seen.difference_update(self.seen_at.pop(start))

    def size(self) -> tuple[int, int]:
        """(buckets held, ids held): what eviction keeps bounded. A bucket counts while its data or its entry in
        the per-key index is held (either one left behind would grow without bound)."""
        held = max(sum(len(s) for s in self.key_starts.values()), sum(len(r) for r in self.key_rows.values()))
        return held, len(self.seen)


def _dt(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def keys_for(topic: str, tickers: tuple[str, ...]) -> tuple[str, ...]:
    return ("all", f"topic:{topic}", *(f"ticker:{t}" for t in tickers))


__all__ = ["NEVER", "Bucket", "Closed", "Observation", "WindowStore", "keys_for"]
