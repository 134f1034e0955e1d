"""The worker's /metrics: what Prometheus alert rules and Grafana panels read.

Per-key series carry ``dim`` (``all`` | ``topic`` | ``ticker``) and ``name`` (the topic label, the
ticker symbol, or ``all``). Cardinality is bounded: tickers get per-key window gauges only when they
are on the watch-list or among the ``ticker_top_k`` busiest over the widest window; a ticker that
drops out has its series removed. Surge state is exported for *every* key that fires, so no alert is
lost to the bound.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from finsent.records import SurgeAlert, WindowStat

SEVERITIES = ("warning", "critical")


def split_key(key: str) -> tuple[str, str]:
    dim, _, name = key.partition(":")
    return (dim, name) if name else (dim, dim)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, top_k: int = 50, watchlist: tuple[str, ...] = ()):
        self.registry = r = registry or CollectorRegistry()
        self.top_k = top_k
        self.watchlist = {t.upper() for t in watchlist}
        self.shown_tickers: set[str] = set()
        self._widths: dict[tuple[str, str], set[str]] = {}  # label sets written, so they can be removed
        self._surge_keys: set[tuple[str, str]] = set()
        self._firing: set[tuple[str, str]] = set()  # never dropped by the cardinality bound
        # scoring
        self.items_in = Counter("finsent_worker_items_in_total", "Raw records taken from the input topic", registry=r)
        self.items_scored = Counter(
            "finsent_worker_items_scored_total", "Items scored and acknowledged on the scored topic", registry=r
        )
        self.items_corrected = Counter(
            "finsent_worker_items_corrected_total",
            "Raw items the edge check corrected, by fix (clamped: event time too far ahead; tickers_capped)",
            ["fix"],
            registry=r,
        )
        self.items_failed = Counter(
            "finsent_worker_items_failed_total", "Records sent to the DLQ, by reason", ["reason"], registry=r
        )
        self.batch_size = Histogram(
            "finsent_worker_batch_size",
            "Micro-batch size (items per classifier call)",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )
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
        self.model_info = Gauge("finsent_worker_model_info", "The classifier in use", ["model", "backend"], registry=r)
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
        labels = ["dim", "name", "width"]
        self.w_count = Gauge("finsent_window_count", "Headlines in the newest closed window", labels, registry=r)
        self.w_negative = Gauge(
            "finsent_window_negative", "Negative headlines in the newest closed window", labels, registry=r
        )
        self.w_share = Gauge(
            "finsent_window_negative_share", "Negative share of the newest closed window", labels, registry=r
        )
        self.w_score = Gauge(
            "finsent_window_mean_score", "Mean p(pos)-p(neg) of the newest closed window", labels, registry=r
        )
        self.w_end = Gauge(
            "finsent_window_end_timestamp_seconds", "End of the newest closed window", labels, registry=r
        )
        self.s_z = Gauge(
            "finsent_surge_zscore", "z-score of the watched window vs the key's baseline", ["dim", "name"], registry=r
        )
        self.s_count = Gauge(
            "finsent_surge_window_count",
            "Headlines in the window the detector judged last",
            ["dim", "name"],
            registry=r,
        )
        self.s_baseline = Gauge(
            "finsent_surge_baseline_negative_share", "EWMA baseline of the negative share", ["dim", "name"], registry=r
        )
        self.s_active = Gauge(
            "finsent_surge_active",
            "1 while a surge fires for the key (label: its severity)",
            ["dim", "name", "severity"],
            registry=r,
        )
        self.s_alerts = Counter(
            "finsent_surge_alerts_total",
            "Surge events published (state: firing, resolved or retracted)",
            ["dim", "state", "severity"],
            registry=r,
        )

    # -- per-key gauges ---------------------------------------------------------------------------
    def allowed_tickers(self, volumes: dict[str, int]) -> set[str]:
        busiest = sorted(volumes, key=lambda t: (-volumes[t], t))[: self.top_k]
        return set(busiest) | self.watchlist

    def windows(self, stats: list[tuple[WindowStat, int]], ticker_volumes: dict[str, int], end=None) -> None:
        """The windows closed at one boundary; series written before but absent now read as empty."""
        shown = self.allowed_tickers(ticker_volumes)
        for gone in self.shown_tickers - shown:
            self._forget("ticker", gone)
        self.shown_tickers = shown
        present = {(*split_key(stat.key), str(width)) for stat, width in stats}
        for (dim, name), widths in self._widths.items():
            for width in widths:
                if (dim, name, width) not in present:
                    for gauge in (self.w_count, self.w_negative, self.w_share, self.w_score):
                        gauge.labels(dim, name, width).set(0)
                    if end is not None:
                        self.w_end.labels(dim, name, width).set(end.timestamp())
        for stat, width in stats:
            dim, name = split_key(stat.key)
            if dim == "ticker" and name not in shown:
                continue
            lab = (dim, name, str(width))
            self._widths.setdefault((dim, name), set()).add(lab[2])
            self.w_count.labels(*lab).set(stat.count)
            self.w_negative.labels(*lab).set(stat.negative)
            self.w_share.labels(*lab).set(stat.negative_share)
            self.w_score.labels(*lab).set(stat.mean_score)
            self.w_end.labels(*lab).set(stat.end.timestamp())

    def surge_state(self, key: str, z: float, baseline: float, firing: SurgeAlert | None, count: int = 0) -> None:
        dim, name = split_key(key)
        if dim == "ticker" and name not in self.shown_tickers and firing is None:
            return
        self._surge_keys.add((dim, name))
        if firing is None:
            self._firing.discard((dim, name))
        else:
            self._firing.add((dim, name))
        self.s_z.labels(dim, name).set(z)
        self.s_count.labels(dim, name).set(count)
        self.s_baseline.labels(dim, name).set(baseline)
        for sev in SEVERITIES:
            self.s_active.labels(dim, name, sev).set(1 if firing is not None and firing.severity == sev else 0)

    def alert(self, alert: SurgeAlert) -> None:
        state = "retracted" if alert.retracted else alert.state
        self.s_alerts.labels(split_key(alert.key)[0], state, alert.severity).inc()

    def _forget(self, dim: str, name: str) -> None:
        for width in self._widths.pop((dim, name), ()):
            for gauge in (self.w_count, self.w_negative, self.w_share, self.w_score, self.w_end):
                gauge.remove(dim, name, width)
        if (dim, name) in self._surge_keys and (dim, name) not in self._firing:
            self._surge_keys.discard((dim, name))
            for gauge in (self.s_z, self.s_baseline, self.s_count):
                gauge.remove(dim, name)
            for sev in SEVERITIES:
                self.s_active.remove(dim, name, sev)


__all__ = ["WorkerMetrics", "split_key"]
