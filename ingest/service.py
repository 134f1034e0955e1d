"""``finsent ingest``: wires settings into the poller (the I/O shell around the pure cores)."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from finsent.http import start_metrics_server
from finsent.ingest.archive import Archive
from finsent.ingest.dedup_store import DedupStore
from finsent.ingest.feeds import FeedConfig
from finsent.ingest.fetch import Fetcher, FetchLimits
from finsent.ingest.metrics import IngestMetrics
from finsent.ingest.poller import Poller, PollSummary
from finsent.ingest.sinks import JsonlSink, KafkaSink, Sink
from finsent.osthreads import exit_later
from finsent.settings import Settings, setting_label

log = logging.getLogger("finsent.ingest")


@dataclass
class Components:
    poller: Poller
    sink: Sink
    dedup: DedupStore
    metrics: IngestMetrics


def build(settings: Settings, feeds: list[FeedConfig], output: Path | None) -> Components:
    cfg = settings.ingest
    state = settings.paths.state_dir
    metrics = IngestMetrics()
    sink: Sink = JsonlSink(output) if output else KafkaSink(settings.kafka, settings.topics.raw.name)
    # A JSONL run keeps its own dedup memory, so trying a feed list into a file does not hide items from Kafka later.
    dedup_path = cfg.dedup_path or state / "ingest" / ("dedup-" + output.stem + ".sqlite" if output else "dedup.sqlite")
    dedup = DedupStore(
        dedup_path,
        timedelta(hours=cfg.dedup_horizon_hours),
        cfg.near_duplicate_threshold,
        id_horizon=timedelta(days=cfg.dedup_id_horizon_days),
    )
    if dedup.moved_aside is not None:  # logged by the store; counted here, where the registry is
        metrics.dedup_resets.inc()
    fetcher = Fetcher(
        FetchLimits(total_s=cfg.total_timeout_s, max_bytes=cfg.max_bytes),
        allow_private=settings.allow_private_feeds,
    )
    edge = settings.windows
    poller = Poller(
        feeds,
        fetcher,
        dedup,
        sink,
        Archive(settings.paths.archive_dir),
        metrics,
        per_host=cfg.per_host,
        max_pending=cfg.max_pending,
        future_tolerance_s=edge.future_tolerance_s,
        max_tickers=edge.max_tickers_per_item,
        crash_at=cfg.debug_crash_at,
    )
    return Components(poller, sink, dedup, metrics)


def format_summary(summaries: list[PollSummary]) -> str:
    lines = [f"{'feed':<24} {'outcome':<13} {'entries':>7} {'new':>5} {'dup':>5} {'invalid':>7} {'sent':>5}  error"]
    for s in summaries:
        err = f"{s.error}: {s.detail[:60]}" if s.error else ""
        lines.append(
            f"{s.feed:<24} {s.outcome:<13} {s.entries:>7} {s.new:>5} {s.duplicate:>5} {s.invalid:>7} {s.published:>5}  {err}"
        )
    return "\n".join(lines)


async def _run(components: Components, once: bool, stop_timeout_s: float) -> list[PollSummary]:
    try:
        if once:
            return await components.poller.run_once()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_stop() -> None:  # a stop stuck on a broker that went first is bounded (marks follow the archive)
            exit_later(stop_timeout_s, 1, "ingest stop")
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_stop)
        await components.poller.run_forever(stop)
        return []
    finally:
        await components.poller.fetcher.aclose()
        await components.sink.close()
        components.dedup.close()


def run(
    settings: Settings, feeds: list[FeedConfig], once: bool = False, output: Path | None = None
) -> tuple[list[PollSummary], str | None]:
    """The polls' summaries (``--once``) and what was left undone at exit (``left_undone``)."""
    components = build(settings, feeds, output)
    if not once:
        start_metrics_server(
            settings.ingest.metrics_port,
            settings.services.host,
            components.metrics.registry,
            setting_label("ingest", "metrics_port"),
        )
        log.info(
            "ingest running",
            extra={
                "feeds": len(feeds),
                "metrics": f"http://{settings.services.host}:{settings.ingest.metrics_port}/metrics",
                "sink": "jsonl" if output else settings.topics.raw.name,
            },
        )
    summaries = asyncio.run(_run(components, once, settings.stream.shutdown_timeout_s))
    if components.poller.pending:
        log.error(
            "items not acknowledged by the sink at exit (they stay unmarked and will be fetched again)",
            extra={"pending": len(components.poller.pending)},
        )
    _log_left_over(components.poller)
    return summaries, left_undone(components.poller)


def left_undone(poller: Poller) -> str | None:
    """What a run leaves for the next one, in one line (``None``: everything went all the way). ``--once`` exits 1
    on it: its summary's "ok" is the fetch's, and a cron job reading exit 0 took a dead broker for success."""
    parts = [
        f"{len(items)} {what}"
        for items, what in (
            (poller.pending, "not acknowledged by the sink (no broker answered, or the output file failed)"),
            (poller.unarchived, "not archived"),
            (poller.unmarked, "not marked as seen"),
        )
        if items
    ]
    if not parts:
        return None
    return "items left for the next run (nothing is lost; they are fetched again): " + "; ".join(parts)


def _log_left_over(poller: Poller) -> None:
    """Where items were left at exit, each state in its own words (none of them is marked, so the next run
    fetches them again; what is already archived is read once from the archive however often it is written)."""
    if poller.unarchived:
        log.error(
            "items published but not archived at exit (they stay unmarked and will be fetched, published "
            "and archived again)",
            extra={"unarchived": len(poller.unarchived)},
        )
    if poller.unmarked:
        log.error(
            "items archived but not marked as seen at exit: the dedup store refused the marks (they will be "
            "fetched and published again; the archive keeps them once)",
            extra={"unmarked": len(poller.unmarked)},
        )
