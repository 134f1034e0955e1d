"""The stream's pure pipeline steps, shared line for line by the live worker, the replay and the backtest.

raw bytes ──decode──► NewsItem ──(classifier)──► ScoredItem ──observe──► Aggregation
                                                                           ├─► closed WindowStats
                                                                           └─► SurgeAlerts

No Kafka, no Faust, no torch and no clock of its own here: the shells (``worker``, ``aggregator``,
the backtest) bring the I/O and the time. That is what lets a backtest claim to say what live would
have done.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from finsent.errors import PoisonRecord, RecordError
from finsent.records import Evidence, NewsItem, Prediction, ScoredItem, SurgeAlert, WindowStat
from finsent.settings import Settings
from finsent.stream.surge import KeyState, SurgeDetector
from finsent.stream.windows import NEVER, Closed, Observation, WindowStore, keys_for


def decode_raw(value: bytes | None, max_bytes: int) -> NewsItem:
    """A raw ``finsent.news.raw`` value as a NewsItem, or PoisonRecord saying why not."""
    if value is None:
        raise PoisonRecord("empty record (tombstone)")
    if len(value) > max_bytes:
        raise PoisonRecord(f"record of {len(value)} bytes exceeds max_record_bytes={max_bytes}")
    try:
        return NewsItem.from_json(value)
    except UnicodeDecodeError as err:
        raise PoisonRecord(f"not UTF-8: {err}") from None
    except RecordError as err:
        raise PoisonRecord(str(err)) from None
    # Anything else the JSON and validation layers can throw at bytes. ArithmeticError: a value that is valid
    # as written but overflows when normalised (an OverflowError escaped here once and crash-looped the
    # worker on one record); a poison record must become a dead letter, never an exit.
    except (ValueError, TypeError, ArithmeticError) as err:
        raise PoisonRecord(f"undecodable: {type(err).__name__}: {err}") from None


def text_of(item: NewsItem) -> str:
    """What the classifier reads: the headline (summaries of feeds are too uneven to help)."""
    return item.title


def to_scored(item: NewsItem, prediction: Prediction, scored_at: datetime) -> ScoredItem:
    """``prediction``: the classifier's answer (``finsent.records.Prediction``; the pure core imports no model)."""
    return ScoredItem(
        item=item,
        topic=prediction.topic,
        topic_probs=prediction.topic_probs,
        sentiment=prediction.sentiment,
        sentiment_probs=prediction.sentiment_probs,
        model=prediction.model,
        scored_at=scored_at,
        latency_s=max(0.0, (scored_at - item.published).total_seconds()),
        flag=prediction.flag,
    )


def observation(scored: ScoredItem) -> Observation:
    item = scored.item
    return Observation(
        item_id=item.id,
        at=item.published,
        keys=keys_for(scored.topic, item.tickers),
        sentiment=scored.sentiment,
        score=scored.score,
        evidence=Evidence(
            item_id=item.id,
            title=item.title,
            source=item.source,
            url=item.url,
            published=item.published,
            p_negative=scored.sentiment_probs["negative"],
        ),
    )


@dataclass
class Emitted:
    """What one step produced: windows (on-time results and revisions), surge events, rejected items."""

    windows: list[Closed] = field(default_factory=list)
    alerts: list[SurgeAlert] = field(default_factory=list)
    rejected: list[Observation] = field(default_factory=list)  # too late to count: the shell side-outputs them

    def extend(self, other: Emitted) -> None:
        self.windows += other.windows
        self.alerts += other.alerts
        self.rejected += other.rejected

    def __bool__(self) -> bool:
        return bool(self.windows or self.alerts or self.rejected)


@dataclass(slots=True)
class Judged:
    """One key judged at one window end: the state it was judged from, and the transitions it caused."""

    end: int
    before: KeyState
    decisions: list[SurgeAlert]


# Too-late rejections a restore point lists for an exact replay (~40 bytes each in its JSON): at most ~200 KB.
MAX_LISTED_REJECTIONS = 5000


class Aggregation:
    """Windows + surge detector for one stream of scored items; the same answer whatever the arrival order.

    * On-time results: when the watermark passes a window end, the window is emitted and the detector
      judges the surge-width window of every key there (``trigger="close"``).
    * Late items (up to the allowed lateness) are counted in their own buckets; the windows they
      touch are emitted again as revisions, and each touched key is **re-judged** from the state it had
      before the first revised window (:meth:`_rewind`). What changed is published as corrections
      keyed by transition (``trigger="late"``; ``retracted`` for a transition that no longer holds).
      So the final windows and surges depend only on which items arrived, not on when: the live
      worker at any speed and the offline backtest agree.
    * Early, provisional alerts (:meth:`end_step`): the open window of each key that got items is
      judged without changing any state; a firing is published at once (``trigger="early"``) and held
      until its window closes, where the on-time judgement confirms it (same transition) or it is
      retracted. One provisional per key at a time: no flapping.

    Restarts (:meth:`begin_restore`): the shell replays the scored log up to its restore point with
    ``restoring`` set; nothing up to ``emitted_until`` is emitted again, and the detector re-judges
    silently from its restored state (``judged_from``) to rebuild the history rewinds need. An early
    firing published after the restore point was written (a crash between its acknowledgement and the
    next restore point) is not in the restored state, and the live re-run may not fire it again (other
    polls, other timing): the shell hands over what the alerts topic holds past the restore point, and
    every early firing there that nothing later settled is held again (:meth:`_adopt_published`), so its
    window's close confirms or retracts it as if there had been no crash.
    """

    def __init__(self, settings: Settings):
        w, s = settings.windows, settings.surge
        self.store = WindowStore(
            bucket_seconds=w.bucket_seconds,
            rolling_seconds=tuple(w.rolling_seconds),
            watermark_delay_s=w.watermark_delay_s,
            allowed_lateness_s=w.allowed_lateness_s,
            evidence=w.evidence_per_window,
            evidence_widths=(s.window_s,),  # only the surge detector reads a window's headlines
        )
        self.detector = SurgeDetector(s)
        self.too_late = w.too_late
        self.retimed = 0  # too late, counted in the open window (windows.too_late = "open_window")
        # Such items whose new bucket a restart's replay may read (item id -> the event time they were counted at):
        # the replay counts them there again, not in their own, long-evicted bucket.
        self.retimed_ids: dict[str, float] = {}
        self.surge_width = s.window_s
        self.early = s.early
        self.emitted_until = -math.inf  # windows ending at or before this were published before a restart
        self.judged_from = -math.inf  # ends at or before this are in the detector's restored state already
        self.judged_until = -math.inf  # the newest end judged
        self.restoring = False
        # The surge width's windows at the newest window end closed, per key: what the gauges show (``surge_gauges``).
        # Only that end: a key without a window there reads 0, so older ones were never read again, and keeping the
        # newest window of every (key, width) ever seen grew without bound with ever-new tickers.
        self.last: dict[str, Closed] = {}
        self.history: dict[str, list[Judged]] = {}
        self.provisional: dict[str, SurgeAlert] = {}  # key -> early firing not yet confirmed or retracted
        self.touched: dict[str, float] = {}  # key -> newest event time added since the last end_step
        self.forgotten = 0
        self._last_forget = -math.inf
        # Items rejected as too late whose bucket a restart's replay may still read (item id -> bucket start), and
        # during such a replay the bucket below which nothing replayed is in a window that can still be published.
        # See :meth:`add_observation`.
        self.rejected_ids: dict[str, int] = {}
        self._rejected_pruned = -math.inf
        self.replay_floor = -math.inf
        self.exact_replay = False

    # -- input ------------------------------------------------------------------------------------
    def add(self, scored: ScoredItem, lane: int = 0) -> Emitted:
        return self.add_observation(observation(scored), lane)

    def add_observation(self, obs: Observation, lane: int = 0) -> Emitted:
        """Count ``obs`` (or reject it as too late: returned in ``rejected`` for the shell's side output).

        A restart replays its restore point's span of the scored log in large polls sorted by event time, so
        the watermark a replayed item meets is not the one it met before the crash: judged by it, an item
        rejected (and dead-lettered) before would come back before the items that had moved the watermark past
        it and be counted silently, and the restarted answer would differ from a clean run's. So a replay does
        not judge lateness again; it repeats what was decided: the restore point lists every rejection whose
        bucket a replay can read (:meth:`snapshot`), and everything else in the replayed span was counted
        before. Replayed items below ``replay_floor`` are in no window that can still be published or revised
        and are skipped (as are any whose bucket the replay evicted already: they could not be counted
        consistently). A restore point without that list (an older build) replays as before."""
        store = self.store
        if self.exact_replay and self.restoring:
            if (retimed := self.retimed_ids.get(obs.item_id)) is not None:
                obs = replace(obs, at=datetime.fromtimestamp(retimed, UTC))
            start = store.bucket_start(obs.at.timestamp())
            if obs.item_id in self.rejected_ids:
                store.rejected += 1
                return Emitted()
            if start < self.replay_floor or start < store.evicted_before:
                return Emitted()
        elif store.too_late(obs.at):
            if obs.item_id in store.seen:
                # A redelivery of an item counted while it was on time (a worker restart's re-scoring, a producer
                # retry): a duplicate, not a rejection. Listed as rejected, it would make a restart's replay skip
                # the original occurrence, and the restarted windows would hold one item fewer.
                store.duplicates += 1
                return Emitted()
            if self.too_late == "open_window":
                # counted as if it arrived now: at the watermark, in windows that are all still open
                now = store.watermark
                self.retimed += 1
                self._note_retimed(obs.item_id, now)
                obs = replace(obs, at=datetime.fromtimestamp(now, UTC))
            else:
                store.rejected += 1
                self._note_rejected(obs)
                return Emitted(rejected=[] if self.restoring else [obs])
        ts = obs.at.timestamp()
        for key in obs.keys:
            self.touched[key] = max(self.touched.get(key, ts), ts)
        return self._after(store.add(obs, lane))

    def set_idle(self, lane: int) -> Emitted:
        """Input ``lane`` is caught up: it no longer holds the watermark back."""
        return self._after(self.store.set_idle(lane))

    def advance(self, event_now: datetime) -> Emitted:
        """Move the watermark from outside (idle timer): ``event_now`` is the event-time clock estimate."""
        return self._after(self.store.advance(event_now))

    def _after(self, closed: list[Closed]) -> Emitted:
        """The store closed windows up to ``store.closed_until``: first revise what late items changed
        in windows judged before (in order), then judge the new ends. Every end up to ``judged_until``
        has then been judged (ends without headlines have nothing to judge)."""
        if not closed and self.store.closed_until <= self.judged_until:
            return Emitted()
        out = self._revise()
        out.extend(self._handle(closed))
        self.judged_until = max(self.judged_until, self.store.closed_until)
        return out

    def end_step(self) -> Emitted:
        """After a batch of input: publish revisions, re-judge what they changed, judge open windows early."""
        out = self._revise()
        if self.early and not self.restoring:
            store = self.store
            for key in sorted(self.touched):
                end = store.bucket_start(self.touched[key]) + store.bucket
                if end <= store.closed_until or key in self.provisional or self._stale(key, end):
                    continue
                c = store.window(key, self.surge_width, end)
                if c is not None and (alert := self.detector.would_fire(c, c.evidence)):
                    alert = alert.model_copy(update={"trigger": "early"})
                    self.provisional[key] = alert
                    out.alerts.append(alert)
        self.touched.clear()
        return out

    # -- on-time results --------------------------------------------------------------------------
    def _silent(self, end: float) -> bool:
        return self.restoring and end <= self.emitted_until

    def _handle(self, closed: list[Closed]) -> Emitted:
        out = Emitted()
        if not closed:
            return out
        by_end: dict[int, list[Closed]] = {}
        for c in closed:
            by_end.setdefault(c.end_s, []).append(c)
        for end in sorted(by_end):
            at_end = by_end[end]
            self.last = {c.key: c for c in at_end if c.width_s == self.surge_width}
            silent = self._silent(end)
            if not silent:
                out.windows += at_end
            if end <= self.judged_from:
                continue  # the restored detector state already holds this judgement
            watched = {c.key: c for c in at_end if c.width_s == self.surge_width}
            horizon = self._rewind_horizon()
            firing = {k for k, st in self.detector.keys.items() if st.firing is not None}
            due = {k for k, a in self.provisional.items() if a.window_end.timestamp() <= end}
            for key in sorted(watched.keys() | firing | due):
                decisions = self._judge(key, end, watched.get(key), horizon)
                if not silent:
                    out.alerts += decisions
                prov = self.provisional.get(key)
                if prov is not None and prov.window_end.timestamp() <= end:
                    del self.provisional[key]
                    if not silent and not any(d.transition == prov.transition for d in decisions):
                        out.alerts.append(prov.model_copy(update={"retracted": True, "trigger": "close"}))
                        self._rejudge_open(key)
            self._maybe_forget(end)
        return out

    def _rejudge_open(self, key: str) -> None:
        """An early firing its complete window withdrew: judge the key's open window early again at the next
        :meth:`end_step`, not only when its next item arrives. Without this the worker's gauge dropped between a
        withdrawal by the idle timer and the key's next poll, though the open window still surged, and Prometheus
        resolved the alert and started it again (a flap: a resolution and a second page, or, inside one
        Alertmanager flush, a resolution with the later start; session 23's CI failure)."""
        newest = self.store.newest_start(key)
        if newest is not None and newest + self.store.bucket > self.store.closed_until:  # items in open buckets
            self.touched[key] = max(self.touched.get(key, -math.inf), newest)

    def _judge(self, key: str, end: int, closed: Closed | None, horizon: float) -> list[SurgeAlert]:
        """One key at one window end; recorded so a late revision can re-judge from here. ``horizon``:
        :meth:`_rewind_horizon`, which the caller takes once for all the keys it judges (the watermark stands
        still meanwhile)."""
        st = self.detector.state(key)
        if closed is None:
            if st.firing is None:
                return []
            # A firing key that went silent still needs its window: an empty one resolves it.
            closed = Closed(key, self.surge_width, end, 0, 0, 0, 0.0, 0, ())
        before = st.copy()
        if self._stale(key, end):
            # Idle longer than the forget horizon: judged from a fresh baseline, as a key the memory sweep dropped
            # (:meth:`_maybe_forget`). Part of judging, so a function of the key's windows alone: the same whatever
            # the arrival order, the sweep's hours or a restart, and a rewind re-judges it the same way.
            self.detector.keys[key] = KeyState()
        alert = self.detector.observe(closed, closed.evidence)
        decisions = [alert] if alert else []
        hist = self.history.get(key)
        if hist is None:
            hist = self.history[key] = []
        while hist and hist[0].end <= horizon:
            hist.pop(0)
        hist.append(Judged(end, before, decisions))
        return decisions

    def _stale(self, key: str, end: float) -> bool:
        """``key``'s baseline is past the forget horizon at ``end``: it is judged from a fresh one (so it cannot fire
        early either, as a key never seen cannot)."""
        st = self.detector.keys.get(key)
        return (
            st is not None
            and st.firing is None
            and st.windows > 0
            and st.last_active < end - self.detector.cfg.forget_after_s
        )

    def _rewind_horizon(self) -> float:
        """Window ends at or before this can no longer be revised: late items that old are rejected."""
        store = self.store
        return store.bucket_start(store.watermark - store.lateness) if store.watermark > NEVER else -math.inf

    def _maybe_forget(self, end: int) -> None:
        """Free the baselines of keys idle past the forget horizon (hourly, or when there are more than ``max_keys``).

        Only as of the rewind horizon, never the newest end: a late headline may still revive a key up to there,
        and its rewind needs the key's history. A key dropped here is one :meth:`_judge` would judge from a fresh
        baseline anyway (idle longer than ``forget_after_s`` before any end it can still judge), so when the sweep
        runs (which depends on arrival and on restarts) does not change any answer. The ``max_keys`` cap is the
        exception: it bounds memory under a flood of new keys and drops the least recently active quiet ones."""
        det = self.detector
        if end - self._last_forget < 3600 and len(det.keys) <= det.cfg.max_keys:
            return
        self._last_forget = end
        horizon = self._rewind_horizon()
        for key in det.forget(min(end, horizon)):
            self.history.pop(key, None)
            self.forgotten += 1

    def _note_rejected(self, obs: Observation) -> None:
        """Remember a rejection a restart's replay could meet again (its bucket may still be replayed). Pruned when
        the replay's start moves on (once per bucket of event time): bounded by the rejections of that span."""
        start = self.store.bucket_start(obs.at.timestamp())
        self._prune_rejected()
        if start >= self._rejected_pruned:
            self.rejected_ids[obs.item_id] = start

    def _note_retimed(self, item_id: str, at: float) -> None:
        self._prune_rejected()
        self.retimed_ids[item_id] = at

    def _prune_rejected(self) -> float:
        floor = self.revisable_from()
        if floor > self._rejected_pruned:
            self._rejected_pruned = floor
            self.rejected_ids = {i: s for i, s in self.rejected_ids.items() if s >= floor}
            bucket = self.store.bucket_start
            self.retimed_ids = {i: t for i, t in self.retimed_ids.items() if bucket(t) >= floor}
        return floor

    # -- late items -------------------------------------------------------------------------------
    def _revise(self) -> Emitted:
        out = Emitted()
        revised = self.store.flush_revisions(until=self.judged_until)
        if not revised:
            return out
        first: dict[str, int] = {}
        for c in revised:
            end = c.end_s
            if not self._silent(end):
                out.windows.append(c)
            newest = self.last.get(c.key) if c.width_s == self.surge_width else None
            if newest is not None and newest.end_s == end:
                self.last[c.key] = c
            if c.width_s == self.surge_width and end > self.judged_from:
                first[c.key] = min(first.get(c.key, end), end)
        for key in sorted(first):
            out.alerts += self._rewind(key, first[key])
        return out

    def _rewind(self, key: str, start: int) -> list[SurgeAlert]:
        """Re-judge ``key`` from the first revised end; return the corrections to what was published."""
        hist = self.history.get(key, [])
        i = next((n for n, j in enumerate(hist) if j.end >= start), len(hist))
        old = hist[i:]
        del hist[i:]
        if old:
            self.detector.keys[key] = old[0].before.copy()
        new: list[SurgeAlert] = []
        bucket = self.store.bucket
        horizon = self._rewind_horizon()
        for end in range(start, int(self.judged_until) + 1, bucket):
            new += self._judge(key, end, self.store.window(key, self.surge_width, end), horizon)
        if self._silent(self.judged_until):
            return []
        return _corrections([d for j in old for d in j.decisions], new)

    # -- restore points ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The detector as of :meth:`_rewind_horizon` (compact), for a restore point.

        Later judgements are not stored: a restart replays the scored log and re-judges them, which
        rebuilds the history that rewinds need. Each key's state is a short list, so even 100k keys
        stay small (and ``max_keys`` bounds them).
        """
        horizon = self._rewind_horizon()
        keys = {}
        for key, st in self.detector.keys.items():
            hist = self.history.get(key, [])
            keys[key] = next((j.before for j in hist if j.end > horizon), st).to_row()
        floor = self._prune_rejected() if self.store.watermark > NEVER else -math.inf
        listed = len(self.rejected_ids) + len(self.retimed_ids) <= MAX_LISTED_REJECTIONS
        return {
            "judged_from": _finite(horizon),
            "keys": keys,
            "provisional": {k: a.to_dict() for k, a in self.provisional.items()},
            # What a replay from this restore point must decide as it was decided (``add_observation``).
            "replay_floor": _finite(floor),
            # Bounded: a restore point is one Kafka record (1 MiB). Past the bound (a late backfill rejected by the
            # thousand) the list is left out and a restart judges lateness again for that span, as before.
            "rejected": dict(self.rejected_ids) if listed else None,
            "retimed": dict(self.retimed_ids) if listed else None,
        }

    def begin_restore(
        self, emitted_until: float, snapshot: dict[str, Any], published: list[SurgeAlert] | None = None
    ) -> None:
        """Start a rebuild: the shell then replays the scored log and calls :meth:`finish_restore`.

        ``published``: the alerts published after the restore point was written, in publication order
        per key (the alerts topic past the restore point's ``alerts_from``)."""
        self.restoring = True
        self.emitted_until = emitted_until
        jf = snapshot.get("judged_from")
        self.judged_from = -math.inf if jf is None else float(jf)
        self.judged_until = self.judged_from
        self.detector.keys = {key: KeyState.from_row(v) for key, v in snapshot.get("keys", {}).items()}
        self.provisional = {k: SurgeAlert.from_json(json.dumps(a)) for k, a in snapshot.get("provisional", {}).items()}
        rejected = snapshot.get("rejected")
        self.exact_replay = rejected is not None  # None: a restore point of an older build (replayed as before)
        self.rejected_ids = {str(i): int(s) for i, s in (rejected or {}).items()}
        self.retimed_ids = {str(i): float(t) for i, t in (snapshot.get("retimed") or {}).items()}
        floor = snapshot.get("replay_floor")
        self.replay_floor = -math.inf if floor is None else float(floor)
        # Held from the start: the replay itself may close their windows (ends past emitted_until are published).
        self._adopt_published(published or [])

    def finish_restore(self) -> Emitted:
        """Everything published before the restart is rebuilt: close up to it silently, then go live. Returns
        what must still be published: revisions of windows past ``emitted_until`` that the replay's last items
        made (the replay may close such windows, e.g. when a lane idles), which the caller publishes as it does
        :meth:`end_step`'s."""
        out = Emitted()
        if math.isfinite(self.emitted_until):
            out.extend(self._after(self.store.close_to(int(self.emitted_until))))
        out.extend(self._revise())
        self.touched.clear()
        self.restoring = False
        self.exact_replay = False
        return out

    def _adopt_published(self, published: list[SurgeAlert]) -> None:
        """Hold again each early firing published after the restore point that nothing published after it
        settled (a confirmation or retraction of its window, or anything about a later window of its key).
        It replaces a restored provisional of an older window: that one's settlement is in ``published``
        (a key holds one provisional at a time, so it was settled before the newer one was published)."""
        unsettled: dict[str, SurgeAlert] = {}
        for alert in published:
            if alert.trigger == "early" and not alert.retracted:
                unsettled[alert.key] = alert
            elif (held := unsettled.get(alert.key)) is not None and alert.window_end >= held.window_end:
                del unsettled[alert.key]
        for key, alert in sorted(unsettled.items()):
            held = self.provisional.get(key)
            if alert.window_end.timestamp() <= self.emitted_until:
                continue  # its window was judged and published before the restore point: settled there
            if held is None or held.window_end < alert.window_end:
                self.provisional[key] = alert

    # -- what the Kafka shell asks of the core: it never reaches into the store or the detector ----------------
    def expect_lane(self, lane: int) -> None:
        """``lane`` holds the watermark until it delivers or goes idle."""
        self.store.expect(lane)

    def cap_event_time(self, ceiling: float) -> None:
        """No event time past ``ceiling`` (wall clock + tolerance) may move the watermark."""
        self.store.ceiling = ceiling

    def bucket_of(self, ts: float) -> int:
        return self.store.bucket_start(ts)

    @property
    def watermark(self) -> float:
        return self.store.watermark

    @property
    def newest_event(self) -> float | None:
        """The newest event time seen (None before the first item: any number could be a headline's time)."""
        newest = self.store.max_event
        return None if newest <= NEVER else newest

    @property
    def widest_s(self) -> int:
        return self.store.widths[-1]

    def counts(self) -> tuple[int, int]:
        """(late items counted, redelivered items not counted again), since the start."""
        return self.store.late, self.store.duplicates

    def state_size(self) -> tuple[int, int]:
        """(buckets, item ids) held in memory."""
        return self.store.size()

    def revisable_from(self) -> float:
        """The earliest bucket start an item may still land in: older offsets need not be replayed."""
        store = self.store
        return store.bucket_start(store.watermark) - store.widths[-1] - store.lateness - store.bucket

    def surge_gauges(self) -> Iterator[tuple[str, float | None, float, SurgeAlert | None, int]]:
        """Per key: (key, z-score, baseline mean, the firing alert or None, count of the watched window).

        An early (provisional) firing shows its open window, which is what the alert rule's volume floor
        must see; otherwise the newest judged window, or 0 when the key had no items in it."""
        for key, st in self.detector.keys.items():
            last = self.last.get(key)
            fresh = last is not None and last.end_s == self.judged_until
            provisional = self.provisional.get(key) if st.firing is None else None
            if provisional is not None:
                yield key, provisional.zscore, st.mean, provisional, provisional.count
            else:
                yield key, st.last_z, st.mean, st.firing, last.count if fresh and last is not None else 0


def final_alerts(records: Iterable[SurgeAlert]) -> list[SurgeAlert]:
    """The alerts changelog (in publish order) as it finally stands: the newest record of every
    transition, retracted ones dropped. What compliance, a backtest report or a parity check reads."""
    newest: dict[tuple[str, str, str], SurgeAlert] = {}
    for a in records:
        newest.pop(a.transition, None)
        newest[a.transition] = a
    return [a for a in newest.values() if not a.retracted]


def final_windows(stats: Iterable[WindowStat]) -> dict[tuple[str, datetime, datetime], WindowStat]:
    """Windows by (key, start, end) at their highest revision: what every consumer of ``finsent.windows`` keeps."""
    out: dict[tuple[str, datetime, datetime], WindowStat] = {}
    for w in stats:
        k = (w.key, w.start, w.end)
        if k not in out or w.revision >= out[k].revision:
            out[k] = w
    return out


def _corrections(old: list[SurgeAlert], new: list[SurgeAlert]) -> list[SurgeAlert]:
    """What to publish so the newest record of every transition matches the re-judged decisions."""
    old_by = {a.transition: a for a in old}
    new_by = {a.transition: a for a in new}
    out = []
    for t, a in new_by.items():
        before = old_by.get(t)
        if before is None or before.model_dump(exclude={"trigger"}) != a.model_dump(exclude={"trigger"}):
            out.append(a.model_copy(update={"trigger": "late"}))
    for t, a in old_by.items():
        if t not in new_by:
            out.append(a.model_copy(update={"retracted": True, "trigger": "late"}))
    return out


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


__all__ = [
    "Aggregation",
    "Emitted",
    "PoisonRecord",
    "decode_raw",
    "final_alerts",
    "final_windows",
    "observation",
    "text_of",
    "to_scored",
]
