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
from dataclasses import dataclass, field
from datetime import UTC, datetime

from finsent.records import Evidence, NewsItem, RecordError, ScoredItem, SurgeAlert, WindowStat
from finsent.settings import Settings
from finsent.stream.surge import KeyState, SurgeDetector
from finsent.stream.windows import Closed, Observation, WindowStore, keys_for


class PoisonRecord(ValueError):
    """A raw record that can never be processed (it goes to the DLQ with this message)."""


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
    except (ValueError, TypeError) as err:  # anything else the JSON layer can throw at bytes
        raise PoisonRecord(f"undecodable: {err}") from None


def text_of(item: NewsItem) -> str:
    """What the classifier reads: the headline (summaries of feeds are too uneven to help)."""
    return item.title


def to_scored(item: NewsItem, prediction, scored_at: datetime) -> ScoredItem:
    """``prediction`` is a ``finsent.model.Prediction`` (duck-typed: the pure core does not import torch)."""
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
        sentiment=scored.sentiment,  # type: ignore[arg-type]
        score=scored.score,
        evidence=Evidence(
            item_id=item.id, title=item.title, source=item.source, url=item.url, published=item.published,
            p_negative=scored.sentiment_probs["negative"],
        ),
    )


@dataclass
class Emitted:
    """What one step produced: closed windows (every width) and surge events."""

    windows: list[Closed] = field(default_factory=list)
    alerts: list[SurgeAlert] = field(default_factory=list)

    def extend(self, other: Emitted) -> None:
        self.windows += other.windows
        self.alerts += other.alerts

    def __bool__(self) -> bool:
        return bool(self.windows or self.alerts)


class Aggregation:
    """Windows + surge detector for one stream of scored items.

    ``emitted_until`` is the end of the newest window already handed out: windows ending at or before
    it are recomputed silently (neither re-emitted nor fed to the detector again). A restarted
    aggregator sets it from its checkpoint, replays the scored items since then and so rebuilds
    exactly the state it had, without double-counting into the detector's baseline.
    """

    def __init__(self, settings: Settings):
        w, s = settings.windows, settings.surge
        self.store = WindowStore(
            bucket_seconds=w.bucket_seconds, rolling_seconds=tuple(w.rolling_seconds),
            allowed_lateness_s=w.allowed_lateness_s, late_policy=w.late_policy, evidence=w.evidence_per_window,
        )
        self.detector = SurgeDetector(s)
        self.surge_width = s.window_s
        self.emitted_until = -math.inf
        self.last: dict[tuple[str, int], WindowStat] = {}  # newest closed window per (key, width)

    def add(self, scored: ScoredItem, lane: int = 0) -> Emitted:
        return self.add_observation(observation(scored), lane)

    def add_observation(self, obs: Observation, lane: int = 0) -> Emitted:
        return self._handle(self.store.add(obs, lane))

    def set_idle(self, lane: int) -> Emitted:
        """Input ``lane`` is caught up: it no longer holds the watermark back."""
        return self._handle(self.store.set_idle(lane))

    def advance(self, event_now: datetime) -> Emitted:
        """Move the watermark from outside (idle timer): ``event_now`` is the event-time clock estimate."""
        return self._handle(self.store.advance(event_now))

    def _handle(self, closed: list[Closed]) -> Emitted:
        out = Emitted()
        if not closed:
            return out
        ends = sorted({c.stat.end for c in closed})
        for end in ends:
            at_end = [c for c in closed if c.stat.end == end]
            for c in at_end:
                self.last[(c.stat.key, c.width_s)] = c.stat
            if end.timestamp() <= self.emitted_until:
                continue
            out.windows += at_end
            seen = set()
            for c in at_end:
                if c.width_s == self.surge_width:
                    seen.add(c.stat.key)
                    if alert := self.detector.observe(c.stat, c.evidence):
                        out.alerts.append(alert)
            # A firing key that went silent still needs its window: an empty one resolves it.
            for key, st in list(self.detector.keys.items()):
                if st.firing is not None and key not in seen:
                    empty = WindowStat(key=key, start=_dt(end.timestamp() - self.surge_width), end=end, count=0,
                                       negative=0, neutral=0, positive=0, mean_score=0.0)
                    if alert := self.detector.observe(empty):
                        out.alerts.append(alert)
            self.emitted_until = end.timestamp()
        return out

    # -- restore points ---------------------------------------------------------------------------
    def detector_state(self) -> dict:
        return {
            key: {"mean": st.mean, "var": st.var, "windows": st.windows, "quiet_until": _finite(st.quiet_until),
                  "last_z": st.last_z, "firing": st.firing.to_dict() if st.firing else None}
            for key, st in self.detector.keys.items()
        }

    def load_detector_state(self, data: dict) -> None:
        self.detector.keys = {
            key: KeyState(mean=v["mean"], var=v["var"], windows=v["windows"],
                          quiet_until=-math.inf if v["quiet_until"] is None else v["quiet_until"], last_z=v["last_z"],
                          firing=SurgeAlert.from_json(json.dumps(v["firing"])) if v["firing"] else None)
            for key, v in data.items()
        }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


__all__ = ["Aggregation", "Emitted", "PoisonRecord", "decode_raw", "observation", "text_of", "to_scored"]
