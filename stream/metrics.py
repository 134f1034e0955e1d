"""The worker's /metrics: what Prometheus alert rules and Grafana panels read.

Per-key series carry ``dim`` (``all`` | ``topic`` | ``ticker``) and ``name`` (the topic label, the
ticker symbol, or ``all``). Cardinality is bounded: tickers get per-key window gauges only when they
are on the watch-list or among the ``ticker_top_k`` busiest over the widest window; a ticker that
drops out has no series any more. Surge state is exported for *every* key that fires, so no alert is
lost to the bound.

The per-key gauges are built at scrape time from the current state (``KeyGauges``, client_python's
``Collector`` pattern): the aggregator hands over the newest windows and the detector's state of every key, as a
whole, and a key that is no longer in that state (a ticker out of the bound, a key the detector forgot) simply has
no series, instead of a label book that must remember to remove it.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from finsent.model.placement import MODEL_INFO_LABELS
from finsent.records import NewsItem, SurgeAlert, WindowStat, checked_item
from finsent.settings import Windows

log = logging.getLogger("finsent.stream.metrics")
SEVERITIES = ("warning", "critical")
FAILED_REASONS = ("poison", "model", "bad_scored_record")  # finsent_worker_items_failed_total{reason}
REJECTED_REASONS = ("too_late", "poisoned_restore_point")  # finsent_window_rejected_items_total{reason}
EDGE_FIXES = ("clamped", "tickers_capped")  # finsent_worker_items_corrected_total{fix} (records.checked_item)
STAGES = ("fetch", "prepare", "in_tray", "infer", "deliver")  # a scored record's way through the worker


def split_key(key: str) -> tuple[str, str]:
    dim, _, name = key.partition(":")
    return (dim, name) if name else (dim, dim)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, top_k: int = 50, watchlist: tuple[str, ...] = ()):
        self.registry = r = registry or CollectorRegistry()
        self.top_k = top_k
        self.watchlist = {t.upper() for t in watchlist}
        self.keys = KeyGauges()
        r.register(self.keys)
        # scoring
        self.items_in = Counter("finsent_worker_items_in_total", "Raw records taken from the input topic", registry=r)
        self.items_scored = Counter(
            "finsent_worker_items_scored_total", "Items scored and acknowledged on the scored topic", registry=r
        )
        self.items_corrected = Counter(
            "finsent_worker_items_corrected_total",
            "Items the edge check corrected, by fix (clamped: event time too far ahead; tickers_capped): raw items in the"
            " worker, scored items from another producer in the aggregator",
            ["fix"],
            registry=r,
        )
        self.items_failed = Counter(
            "finsent_worker_items_failed_total", "Records sent to the DLQ, by reason", ["reason"], registry=r
        )
        self.letters_lost = Counter(
            "finsent_worker_dead_letters_lost_total",
            "Dead letters the broker refused as too large even cut to their bare minimum (the record moves on "
            "without one; the worker's error log names it)",
            registry=r,
        )
        self.batch_size = Histogram(
            "finsent_worker_batch_size",
            "Micro-batch size (items per classifier call)",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )
        self.model_calls = Counter(
            "finsent_worker_model_calls_total",
            "Classifier calls, by how they ran: alone on all cores, or side by side on a share of them"
            " (stream.model_calls, stream.split_from_records)",
            ["way"],
            registry=r,
        )
        self.model_call_ways = {way: self.model_calls.labels(way) for way in ("alone", "side_by_side")}
        self.inference_seconds = Histogram(
            "finsent_worker_inference_seconds",
            "Classifier time per micro-batch",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.e2e_seconds = Histogram(
            "finsent_worker_e2e_seconds",
            "Raw record appended to Kafka -> scored record acknowledged",
            registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.stage_seconds = Histogram(
            "finsent_worker_stage_seconds",
            "Per record taken from the input (dead letters too), the part of appended->acknowledged spent in each"
            " worker stage: fetch (appended -> taken from Faust's buffer), prepare (decode, tokenize), in_tray"
            " (waiting for the model), infer, deliver (produce -> acks); the last three only for batches that reached"
            " the model (a batch of dead letters alone skips it)",
            ["stage"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.stages = {name: self.stage_seconds.labels(name) for name in STAGES}
        self.news_age_seconds = Histogram(
            "finsent_worker_news_age_seconds",
            "Headline published -> scored (includes the feed's own delay)",
            registry=r,
            buckets=(1, 5, 15, 30, 60, 120, 300, 900, 3600, 4 * 3600, 24 * 3600),
        )
        self.lag = Gauge(
            "finsent_worker_consumer_lag",
            "Records behind the partition's high watermark",
            ["topic", "partition"],
            registry=r,
        )
        self.model_info = Gauge(
            "finsent_worker_model_info",
            "The classifier in use: its backend, the graph it runs (recipe) and whether the export gate accepted it",
            MODEL_INFO_LABELS,
            registry=r,
        )
        self.retries = Counter(
            "finsent_worker_inference_retries_total",
            "Classifier calls beyond one per batch (retries, bisection)",
            registry=r,
        )
        # aggregation
        self.late = Counter(
            "finsent_window_late_items_total",
            "Late items counted in their own bucket (the windows they touch are published again)",
            registry=r,
        )
        self.rejected = Counter(
            "finsent_window_rejected_items_total",
            "Items not counted in any window, by reason (sent to the DLQ)",
            ["reason"],
            registry=r,
        )
        self.retimed = Counter(
            "finsent_window_retimed_items_total",
            "Items past the allowed lateness counted in the open window instead of their own (windows.too_late="
            'open_window; with reject they are in finsent_window_rejected_items_total{reason="too_late"})',
            registry=r,
        )
        self.revisions = Counter(
            "finsent_window_revisions_total", "Window results published again after late items", registry=r
        )
        self.keys_forgotten = Counter(
            "finsent_surge_keys_forgotten_total",
            "Surge baselines dropped (idle past surge.forget_after_s, or beyond surge.max_keys)",
            registry=r,
        )
        self.duplicates = Counter(
            "finsent_window_duplicate_items_total", "Redelivered items not counted again", registry=r
        )
        self.windows_closed = Counter("finsent_windows_closed_total", "Closed windows published", registry=r)
        self.watermark = Gauge(
            "finsent_window_watermark_timestamp_seconds", "Event-time watermark of the aggregator", registry=r
        )
        self.state_buckets = Gauge(
            "finsent_window_state_buckets", "Buckets held in memory (bounded by eviction)", registry=r
        )
        self.state_ids = Gauge(
            "finsent_window_state_item_ids", "Item ids held for redelivery dedup (bounded)", registry=r
        )
        self.restored = Counter(
            "finsent_window_restored_items_total", "Scored items replayed to rebuild state after a start", registry=r
        )
        self.checkpoints = Counter("finsent_window_checkpoints_total", "Aggregator restore points written", registry=r)
        self.aggregated = Counter(
            "finsent_window_items_total",
            "Scored items the aggregator read, live and replayed (the denominator of late/rejected shares)",
            registry=r,
        )
        # Unix time, not an age: a stuck event loop freezes an age gauge, while time() - this keeps growing.
        self.restore_point_current = Gauge(
            "finsent_window_restore_point_timestamp_seconds",
            "When the newest restore point was last known to cover the aggregator's state (written, or found "
            "unchanged; set at start). 0 on workers that do not aggregate",
            registry=r,
        )
        self.restore_skipped = Counter(
            "finsent_restore_points_skipped_total",
            "Restore points passed over on start, by reason (unreadable: not a restore point; version: another format)",
            ["reason"],
            registry=r,
        )
        self.restore_fresh = Counter(
            "finsent_restore_fresh_starts_total",
            "Aggregator starts without state although restore points exist, by reason (none_readable, poisoned)",
            ["reason"],
            registry=r,
        )
        self.s_alerts = Counter(
            "finsent_surge_alerts_total",
            "Surge events published (state: firing, resolved or retracted)",
            ["dim", "state", "severity"],
            registry=r,
        )
        # Every reason a rule or panel watches exists from the start at 0: a series that first appears at N is not an
        # increase to Prometheus, so a worker's first flood of dead letters (after every restart) never alerted.
        for counter, reasons in (
            (self.items_failed, FAILED_REASONS),
            (self.rejected, REJECTED_REASONS),
            (self.items_corrected, EDGE_FIXES),
            (self.restore_skipped, ("unreadable", "version")),
            (self.restore_fresh, ("none_readable", "poisoned")),
        ):
            for reason in reasons:
                counter.labels(reason)

    # -- per-key gauges (state handed to KeyGauges, read at scrape time) ------------------------------
    def allowed_tickers(self, volumes: dict[str, int]) -> set[str]:
        busiest = sorted(volumes, key=lambda t: (-volumes[t], t))[: self.top_k]
        return set(busiest) | self.watchlist

    def windows(
        self, stats: list[tuple[WindowStat, int]], ticker_volumes: dict[str, int], end: datetime | None = None
    ) -> None:
        """The windows closed at one boundary; series shown before but absent now read as empty."""
        self.keys.windows(stats, self.allowed_tickers(ticker_volumes), end)

    def surge_states(self, states: Iterable[tuple[str, float | None, float, SurgeAlert | None, int]]) -> None:
        """The detector's state of every key it keeps (``Aggregation.surge_gauges``: key, z-score, baseline, the
        firing alert or None, count), as a whole: a key not in it (forgotten by the detector) has no series."""
        self.keys.surges(
            (key, z, baseline, firing.severity if firing is not None else None, count)
            for key, z, baseline, firing, count in states
        )

    def alert(self, alert: SurgeAlert) -> None:
        state = "retracted" if alert.retracted else alert.state
        self.s_alerts.labels(split_key(alert.key)[0], state, alert.severity).inc()


@dataclass(frozen=True)
class _Window:
    count: int
    negative: int
    share: float
    score: float
    end: float


@dataclass(frozen=True)
class _Surge:
    z: float
    count: int
    baseline: float
    severity: str | None  # firing at this severity, or None


WINDOW_GAUGES = (
    ("finsent_window_count", "Headlines in the newest closed window", "count"),
    ("finsent_window_negative", "Negative headlines in the newest closed window", "negative"),
    ("finsent_window_negative_share", "Negative share of the newest closed window", "share"),
    ("finsent_window_mean_score", "Mean p(pos)-p(neg) of the newest closed window", "score"),
    ("finsent_window_end_timestamp_seconds", "End of the newest closed window", "end"),
)
SURGE_GAUGES = (
    ("finsent_surge_zscore", "z-score of the watched window vs the key's baseline", "z"),
    ("finsent_surge_window_count", "Headlines in the window the detector judged last", "count"),
    ("finsent_surge_baseline_negative_share", "EWMA baseline of the negative share", "baseline"),
)


class KeyGauges:
    """The per-key window and surge gauges, made at scrape time from the newest state (a ``Collector``).

    ``shown_tickers`` is the cardinality bound's verdict at the last boundary: tickers outside it have no window
    series, and no surge series unless they fire (a firing key is never hidden). Updated from the aggregator's
    event loop, read by the metrics server's thread: one lock around both."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str, str], _Window] = {}
        self._surges: dict[tuple[str, str], _Surge] = {}
        self.shown_tickers: set[str] = set()

    def windows(self, stats: list[tuple[WindowStat, int]], shown_tickers: set[str], end: datetime | None) -> None:
        with self._lock:
            self.shown_tickers = shown_tickers
            hidden = [k for k in self._windows if k[0] == "ticker" and k[1] not in shown_tickers]
            for label in hidden:
                del self._windows[label]
            for key, surge in list(self._surges.items()):
                if key[0] == "ticker" and key[1] not in shown_tickers and surge.severity is None:
                    del self._surges[key]
            for label, old in self._windows.items():  # shown before, no window now: an empty window
                self._windows[label] = _Window(0, 0, 0.0, 0.0, end.timestamp() if end is not None else old.end)
            for stat, width in stats:
                dim, name = split_key(stat.key)
                if dim == "ticker" and name not in shown_tickers:
                    continue
                self._windows[(dim, name, str(width))] = _Window(
                    stat.count, stat.negative, stat.negative_share, stat.mean_score, stat.end.timestamp()
                )

    def surges(self, states: Iterable[tuple[str, float | None, float, str | None, int]]) -> None:
        """Replace the surge state whole with the detector's (key, z, baseline, firing severity or None, count) of
        every key it keeps: a key it forgot (``surge.forget_after_s``) has no series from here on, instead of its
        last values for ever. A z-score not computed reads NaN."""
        states = list(states)
        with self._lock:
            surges: dict[tuple[str, str], _Surge] = {}
            for key, z, baseline, severity, count in states:
                dim, name = split_key(key)
                if dim == "ticker" and name not in self.shown_tickers and severity is None:
                    # Outside the bound and not firing: no series. (A ticker that fired and resolved must lose its
                    # active=1 here; the label book before this kept it, and the alert never resolved.)
                    continue
                surges[(dim, name)] = _Surge(z if z is not None else math.nan, count, baseline, severity)
            self._surges = surges

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            windows, surges = list(self._windows.items()), list(self._surges.items())
        for metric, doc, field in WINDOW_GAUGES:
            family = GaugeMetricFamily(metric, doc, labels=["dim", "name", "width"])
            for label, w in windows:
                family.add_metric(list(label), getattr(w, field))
            yield family
        for metric, doc, field in SURGE_GAUGES:
            family = GaugeMetricFamily(metric, doc, labels=["dim", "name"])
            for key, sg in surges:
                family.add_metric(list(key), getattr(sg, field))
            yield family
        active = GaugeMetricFamily(
            "finsent_surge_active",
            "1 while a surge fires for the key (label: its severity)",
            labels=["dim", "name", "severity"],
        )
        for key, sg in surges:
            for sev in SEVERITIES:
                active.add_metric([*key, sev], 1.0 if sg.severity == sev else 0.0)
        yield active


__all__ = ["KeyGauges", "WorkerMetrics", "split_key"]


def edge_checked(item: NewsItem, now: datetime, windows: Windows, fixed: dict[str, int]) -> NewsItem:
    """The item as the windows may count it (``checked_item``); what was corrected is added up in ``fixed``, to be
    counted once per batch (``count_corrected``): a producer that dates items in the future does it to all of them."""
    item, fixes = checked_item(item, now, windows.future_tolerance_s, windows.max_tickers_per_item)
    for fix in fixes:
        fixed[fix] = fixed.get(fix, 0) + 1
    return item


def count_corrected(metrics: WorkerMetrics, windows: Windows, fixed: dict[str, int], what: str) -> None:
    """``fixed`` on /metrics and in one log line (``what``: "raw items", "scored items")."""
    for fix, n in fixed.items():
        metrics.items_corrected.labels(fix).inc(n)
    if fixed:
        log.warning(
            f"{what} corrected at the edge",
            extra={
                **{f"items_{fix}": n for fix, n in sorted(fixed.items())},
                "future_tolerance_s": windows.future_tolerance_s,
                "max_tickers": windows.max_tickers_per_item,
            },
        )
