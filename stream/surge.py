"""Negative-sentiment surge detection per key (pure: same code live, in replays and in backtests).

For every closed window of one key the detector compares the window's negative share with an EWMA
baseline (mean and variance) learned from that key's *earlier* windows:

* **fires** when z ≥ ``z_threshold`` and the window has at least ``min_volume`` headlines and a
  negative share of at least ``min_negative_share``, once ``warmup_windows`` windows built a baseline;
* **stays one alert** while firing (same ``alert_id``); severity is ``critical`` from ``critical_z``,
  and an escalation re-emits the firing alert with the higher severity;
* **resolves** only when z falls below ``z_resolve`` (hysteresis: no flapping around the threshold)
  or volume falls under the floor;
* after resolving, the key is quiet for ``cooldown_s`` (one surge = one alert);
* the baseline learns only from windows that are not part of a surge, so a long surge does not
  become the new normal while it lasts.

The detector is a pure function of the sequence of windows it is shown: :meth:`SurgeDetector.observe`
changes one key's :class:`KeyState`, which is small and copyable, so the aggregation can keep a
key's recent states and re-judge from one when late items revise a window already judged (see
``pipeline.Aggregation``). :meth:`SurgeDetector.would_fire` judges an open window without changing
anything: the early, provisional alert.

Keys are bounded: a key without a window for ``forget_after_s`` loses its baseline, and beyond
``max_keys`` the least recently active quiet keys go first (:meth:`SurgeDetector.forget`).

The standard deviation has a floor (``min_std``) so a topic that was always 0 % negative does not
turn one negative headline into an infinite z-score (``min_volume`` guards the same flank).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from finsent.records import Evidence, SurgeAlert
from finsent.settings import Surge

Severity = Literal["warning", "critical"]


class Window(Protocol):
    """What the detector reads of a window: a published ``WindowStat``, or the store's ``Closed`` result as it
    comes (building a record per judged window was a fifth of a backtest's judging; datetimes are read only
    when an alert is made)."""

    @property
    def key(self) -> str: ...
    @property
    def count(self) -> int: ...
    @property
    def negative(self) -> int: ...
    @property
    def negative_share(self) -> float: ...
    @property
    def start(self) -> datetime: ...
    @property
    def end(self) -> datetime: ...
    @property
    def end_s(self) -> float: ...  # ``end`` in epoch seconds


@dataclass
class KeyState:
    mean: float = 0.0
    var: float = 0.0
    windows: int = 0
    firing: SurgeAlert | None = None
    quiet_until: float = float("-inf")  # epoch seconds: cooldown end
    last_z: float = 0.0
    last_active: float = float("-inf")  # end of the newest window with headlines (event time)

    def copy(self) -> KeyState:
        # ``firing`` is an immutable record: a shallow copy is a snapshot. Copied field by field through the
        # instance dict (a new field is copied too): ``dataclasses.replace`` re-ran ``__init__`` at ~4 us a judgement.
        new = object.__new__(KeyState)
        new.__dict__.update(self.__dict__)
        return new

    def to_row(self) -> list[object]:
        """Compact JSON form for a restore point: 100k keys of it stay small."""
        return [
            round(self.mean, 6),
            round(self.var, 8),
            self.windows,
            _finite(self.quiet_until),
            round(self.last_z, 4),
            _finite(self.last_active),
            self.firing.to_dict() if self.firing else None,
        ]

    @classmethod
    def from_row(cls, v: list[Any]) -> KeyState:
        return cls(
            mean=v[0],
            var=v[1],
            windows=v[2],
            quiet_until=_inf(v[3]),
            last_z=v[4],
            last_active=_inf(v[5]),
            firing=SurgeAlert.from_json(json.dumps(v[6])) if v[6] else None,
        )  # strict records: JSON mode

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))


class SurgeDetector:
    def __init__(self, cfg: Surge = Surge(), min_std: float = 0.05):
        self.cfg = cfg
        self.min_std = min_std
        self.keys: dict[str, KeyState] = {}

    def state(self, key: str) -> KeyState:
        st = self.keys.get(key)
        if st is None:  # not ``setdefault(key, KeyState())``: that built a state per judgement, to throw away
            st = self.keys[key] = KeyState()
        return st

    def _learn(self, st: KeyState, share: float) -> None:
        a = self.cfg.ewma_alpha
        if st.windows == 0:
            st.mean, st.var = share, 0.0
        else:
            diff = share - st.mean
            st.mean += a * diff
            st.var = (1 - a) * (st.var + a * diff * diff)
        st.windows += 1

    def zscore(self, st: KeyState, share: float) -> float:
        return (share - st.mean) / max(st.std, self.min_std) if st.windows else 0.0

    def would_fire(self, stat: Window, evidence: tuple[Evidence, ...] = ()) -> SurgeAlert | None:
        """The firing alert a quiet key would raise on this (open) window, changing no state."""
        st = self.keys.get(stat.key)
        if st is None or st.firing is not None:
            return None
        z = self.zscore(st, stat.negative_share)
        if not self._fires(st, stat, z):
            return None
        severity: Severity = "critical" if z >= self.cfg.critical_z else "warning"
        return self._alert(f"{stat.key}|{stat.end.isoformat()}", stat, "firing", severity, z, st, evidence)

    def _fires(self, st: KeyState, stat: Window, z: float) -> bool:
        cfg = self.cfg
        return (
            st.windows >= cfg.warmup_windows
            and stat.count >= cfg.min_volume
            and stat.negative_share >= cfg.min_negative_share
            and z >= cfg.z_threshold
            and stat.end_s >= st.quiet_until
        )

    def forget(self, now: float) -> list[str]:
        """Drop quiet keys idle since ``now - forget_after_s``, then the least active beyond ``max_keys``."""
        horizon = now - self.cfg.forget_after_s
        gone = [k for k, st in self.keys.items() if st.firing is None and st.last_active < horizon]
        for k in gone:
            del self.keys[k]
        excess = len(self.keys) - self.cfg.max_keys
        if excess > 0:  # down to 90 % of the cap, so a flood of new keys does not sort the rest every window
            excess += self.cfg.max_keys // 10
            quiet = sorted((st.last_active, k) for k, st in self.keys.items() if st.firing is None)
            for _, k in quiet[:excess]:
                del self.keys[k]
                gone.append(k)
        return gone

    def observe(self, stat: Window, evidence: tuple[Evidence, ...] = ()) -> SurgeAlert | None:
        """Feed one closed window of ``stat.key``; returns a firing/resolved alert when the state changes."""
        cfg = self.cfg
        st = self.state(stat.key)
        share = stat.negative_share
        z = self.zscore(st, share)
        st.last_z = z
        enough = stat.count >= cfg.min_volume
        severity: Severity = "critical" if z >= cfg.critical_z else "warning"
        now = stat.end_s
        if stat.count:
            st.last_active = max(st.last_active, now)

        if st.firing is not None:
            if z < cfg.z_resolve or not enough:
                resolved = self._alert(st.firing.alert_id, stat, "resolved", st.firing.severity, z, st, evidence)
                st.firing = None
                st.quiet_until = now + cfg.cooldown_s
                return resolved
            if severity == "critical" and st.firing.severity == "warning":
                st.firing = self._alert(st.firing.alert_id, stat, "firing", "critical", z, st, evidence)
                return st.firing
            return None

        if self._fires(st, stat, z):
            st.firing = self._alert(f"{stat.key}|{stat.end.isoformat()}", stat, "firing", severity, z, st, evidence)
            return st.firing
        self._learn(st, share)
        return None

    def _alert(
        self,
        alert_id: str,
        stat: Window,
        state: Literal["firing", "resolved"],
        severity: Severity,
        z: float,
        st: KeyState,
        evidence: tuple[Evidence, ...],
    ) -> SurgeAlert:
        return SurgeAlert(
            alert_id=alert_id,
            key=stat.key,
            state=state,
            severity=severity,
            window_start=stat.start,
            window_end=stat.end,
            count=stat.count,
            negative=stat.negative,
            negative_share=stat.negative_share,
            zscore=round(z, 4),
            baseline_mean=round(st.mean, 6),
            baseline_std=round(st.std, 6),
            raised_at=stat.end,
            evidence=evidence,
        )


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _inf(x: float | None) -> float:
    return -math.inf if x is None else float(x)


__all__ = ["KeyState", "SurgeDetector"]
