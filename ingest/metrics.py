"""Ingest metrics (prometheus-client). One registry per process; tests pass their own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.fetches = Counter("finsent_feed_fetches_total", "Feed fetches by outcome", ["feed", "outcome"], registry=r)
        self.errors = Counter("finsent_feed_errors_total", "Feed errors by kind", ["feed", "kind"], registry=r)
        self.items = Counter(
            "finsent_feed_items_total",
            "Feed entries by status (new, duplicate, invalid, dropped, deferred: the full pending buffer left them for the next poll)",
            ["feed", "status"],
            registry=r,
        )
        # fix: clamped (publish time too far ahead of the fetch time) | tickers_capped (more than max_tickers_per_item)
        self.corrected = Counter(
            "finsent_ingest_items_corrected_total",
            "Entries the edge check corrected, by fix",
            ["feed", "fix"],
            registry=r,
        )
        self.duplicates = Counter(
            "finsent_feed_duplicates_total", "Duplicates by feed and reason", ["feed", "reason"], registry=r
        )
        self.last_success = Gauge(
            "finsent_feed_last_success_timestamp_seconds",
            "Unix time of the last successful fetch",
            ["feed"],
            registry=r,
        )
        # Fetches in a row that failed, per feed (0 after a success): what FeedErrors watches. A count of errors in a
        # window could not fire: the backoff spaces a failing feed's fetches (10, 20, 40 min at the default
        # 5-minute interval), so fewer than the threshold ever landed in it.
        self.consecutive_failures = Gauge(
            "finsent_feed_consecutive_failures",
            "Fetches of the feed in a row that failed (0 after a success)",
            ["feed"],
            registry=r,
        )
        self.fetch_seconds = Histogram(
            "finsent_feed_fetch_seconds",
            "Fetch latency",
            ["feed"],
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        # A poll that raised past its own error handling (a bug, or input nothing anticipated): the feed is backed
        # off and polled again; the other feeds are not affected.
        self.poll_crashes = Counter(
            "finsent_ingest_poll_crashes_total", "Feed polls that crashed (retried with backoff)", ["feed"], registry=r
        )
        self.parse_seconds = Histogram(
            "finsent_feed_parse_seconds",
            "Decoding and parsing one fetched feed (in a worker thread)",
            ["feed"],
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.published = Counter("finsent_ingest_published_total", "Items acknowledged by the sink", registry=r)
        self.publish_errors = Counter(
            "finsent_ingest_publish_errors_total", "Sink failures (items retried later)", registry=r
        )
        self.pending = Gauge(
            "finsent_ingest_pending_items", "Items accepted but not yet acknowledged by the sink", registry=r
        )
        # Acknowledged items wait, unmarked, until the archive holds them durably: a failed write (full disk, permissions)
        # is retried with backoff instead of losing the item from the archive, the broker's recovery path.
        self.archive_errors = Counter(
            "finsent_ingest_archive_errors_total",
            "Archive writes that failed (the items are retried with backoff, not marked)",
            registry=r,
        )
        self.unarchived = Gauge(
            "finsent_ingest_unarchived_items",
            "Items acknowledged by the sink but not yet durably archived (and so not marked)",
            registry=r,
        )
        # Archived items wait for their mark when the dedup store refuses it (full disk, locked by another process):
        # the mark alone is retried with backoff, the archive is not written again.
        self.dedup_errors = Counter(
            "finsent_ingest_dedup_errors_total",
            "Dedup store writes (marks) that failed (retried with backoff; the items are archived)",
            registry=r,
        )
        self.unmarked = Gauge(
            "finsent_ingest_unmarked_items",
            "Items durably archived but not yet marked as seen (the dedup store refused the mark)",
            registry=r,
        )
        # An unreadable dedup store is moved aside and ingest starts on an empty one (items still listed are re-published).
        self.dedup_resets = Counter(
            "finsent_ingest_dedup_store_resets_total",
            "Dedup stores found unreadable at start and moved aside",
            registry=r,
        )
