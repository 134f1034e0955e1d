"""The polling loop: fetch -> parse -> normalise -> dedup -> sink -> archive -> mark.

Each feed has its own schedule (interval with jitter; exponential backoff after errors; a server's
Retry-After is honoured), fetches run concurrently with at most ``per_host`` at a time per host,
and the accepting step runs under one lock so the same story arriving from two feeds in the same
instant is still caught as a duplicate. Items are archived only once the sink acknowledged them, and
marked as seen only once the archive holds them durably: a crash (or a failed archive write) anywhere
on the way leaves the item unmarked, so it is fetched and published again (at least once), never lost
from the archive. Each item is in one state at a time: ``pending`` (not acknowledged by the sink: retried
first), ``unarchived`` (acknowledged, its archive write failed: retried with backoff) or ``unmarked``
(durably archived, the dedup store refused the mark, e.g. a full disk or a lock held by another process:
the mark alone is retried with backoff, off the event loop; the item is never archived again). The three
share the bounded buffer of ``max_pending``; a poll that finds it full defers what does not fit (counted as
``deferred``) and drops the feed's new validators, so the next poll fetches the deferred items again.

One feed can never stop the others. Parsing (feedparser over up to ``max_bytes``) and normalising run in
worker threads, so a huge feed does not stall the event loop and the other feeds' timers; whatever they
raise becomes that feed's error (``parse_error``, ``normalize_error``), counted and backed off like a
failed fetch. A poll that still raises is an ``internal_error`` of its feed: counted in
``finsent_ingest_poll_crashes_total``, logged with its traceback, backed off, polled again later.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

from finsent.errors import ArchiveWriteError, NormalizeError, ParseError
from finsent.ingest.archive import Archive
from finsent.ingest.dedup import Deduper
from finsent.ingest.dedup_store import DedupStore
from finsent.ingest.feeds import FeedConfig
from finsent.ingest.fetch import Fetcher, Validators
from finsent.ingest.metrics import IngestMetrics
from finsent.ingest.normalize import FUTURE_TOLERANCE_S, MAX_TICKERS, normalize_checked
from finsent.ingest.parse import parse
from finsent.ingest.sinks import Sink
from finsent.records import NewsItem

log = logging.getLogger("finsent.ingest")


@dataclass
class PollSummary:
    feed: str
    outcome: str = "ok"  # ok | not_modified | error
    error: str | None = None
    detail: str = ""
    entries: int = 0
    new: int = 0
    duplicate: int = 0
    invalid: int = 0
    corrected: dict[str, int] = field(default_factory=dict)  # fix -> entries (clamped, tickers_capped)
    published: int = 0
    deferred: int = 0  # fresh items the full pending buffer could not take: fetched again on the next poll
    seconds: float = 0.0


@dataclass
class FeedState:
    validators: Validators = field(default_factory=Validators)
    next_due: float = 0.0
    failures: int = 0


class Poller:
    def __init__(
        self,
        feeds: list[FeedConfig],
        fetcher: Fetcher,
        dedup: DedupStore | Deduper,
        sink: Sink,
        archive: Archive | None = None,
        metrics: IngestMetrics | None = None,
        per_host: int = 2,
        max_pending: int = 50_000,
        jitter: float = 0.1,
        backoff_max_s: float = 3600.0,
        rng: random.Random | None = None,
        future_tolerance_s: float = FUTURE_TOLERANCE_S,
        max_tickers: int = MAX_TICKERS,
        archive_retry_s: float = 1.0,
        archive_retry_max_s: float = 60.0,
        crash_at: str = "",
    ):
        self.feeds = feeds
        self.fetcher = fetcher
        self.dedup = dedup
        self.sink = sink
        self.archive = archive
        self.metrics = metrics or IngestMetrics()
        self.max_pending = max_pending
        self.jitter = jitter
        self.backoff_max_s = backoff_max_s
        self.rng = rng or random.Random()
        self.future_tolerance_s = future_tolerance_s
        self.max_tickers = max_tickers
        self.state = {f.name: FeedState() for f in feeds}
        started = time.time()
        for f in feeds:
            # until a feed's first success the start of this process stands in for it: a feed failing from the start
            # had no series at all, so FeedStale never fired for it
            self.metrics.last_success.labels(f.name).set(started)
            self.metrics.consecutive_failures.labels(f.name).set(0)
        self.pending: list[NewsItem] = []
        self.unarchived: list[NewsItem] = []  # acknowledged by the sink, not yet durably archived, so not marked
        self.unmarked: list[NewsItem] = []  # durably archived, the dedup store refused the mark: only that is retried
        # The backoff of both durable steps (archive write, dedup mark): archive_retry_s doubling to archive_retry_max_s.
        self.archive_retry_s = archive_retry_s
        self.archive_retry_max_s = archive_retry_max_s
        self._archive_failures = 0
        self._archive_retry_at = 0.0
        self._mark_failures = 0
        self._mark_retry_at = 0.0
        self.crash_at = crash_at
        self._lock = asyncio.Lock()
        self._hosts: dict[str, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(per_host))

    # ------------------------------------------------------------------ scheduling

    def _delay_after(self, feed: FeedConfig, summary: PollSummary, retry_after: float | None) -> float:
        st = self.state[feed.name]
        if summary.outcome == "error":
            st.failures += 1
            self.metrics.consecutive_failures.labels(feed.name).set(st.failures)
            delay = min(feed.interval * 2 ** min(st.failures, 16), self.backoff_max_s)
            if retry_after is not None:  # honoured up to the backoff's cap: a server's "Retry-After: 10^400" (inf)
                delay = max(delay, min(retry_after, self.backoff_max_s))  # turned the feed off for good
            return delay
        st.failures = 0
        self.metrics.consecutive_failures.labels(feed.name).set(0)
        return feed.interval * (1 + self.rng.uniform(-self.jitter, self.jitter))

    # ------------------------------------------------------------------ one feed

    async def poll(self, feed: FeedConfig) -> PollSummary:
        """One poll of one feed; never raises (an unexpected exception is the feed's ``internal_error``)."""
        try:
            return await self._poll(feed)
        except Exception as err:  # noqa: BLE001 - a bug or a stranger's input must not end the run
            return self._crashed(feed, err)

    def _crashed(self, feed: FeedConfig, err: BaseException) -> PollSummary:
        self.metrics.poll_crashes.labels(feed.name).inc()
        log.error("feed poll crashed", exc_info=err if isinstance(err, Exception) else None, extra={"feed": feed.name})
        return self._failed(feed, PollSummary(feed.name), "internal_error", f"{type(err).__name__}: {err}", None)

    async def _poll(self, feed: FeedConfig) -> PollSummary:
        summary = PollSummary(feed.name)
        st = self.state[feed.name]
        host = urlsplit(feed.url).hostname or ""
        async with self._hosts[host]:
            result = await self.fetcher.fetch(feed.url, st.validators)
        summary.seconds = result.elapsed_s
        self.metrics.fetch_seconds.labels(feed.name).observe(result.elapsed_s)
        fetched = datetime.now(UTC)
        if result.error:
            return self._failed(feed, summary, result.error, result.detail, result.retry_after)
        if result.not_modified:
            summary.outcome = "not_modified"
            if self.pending or self.unarchived or self.unmarked:  # earlier items still wait for sink, archive or mark
                async with self._lock:
                    summary.published = await self._flush(self.pending)
        else:
            parse_started = time.monotonic()
            try:  # CPU-bound on a big feed: off the event loop, so the other feeds keep their timers
                parsed = await asyncio.to_thread(parse, result.body, result.content_type)
            except ParseError as err:
                return self._failed(feed, summary, err.kind, err.detail, None)
            except Exception as err:
                log.debug("parse raised", exc_info=True, extra={"feed": feed.name})
                return self._failed(feed, summary, "parse_error", f"{type(err).__name__}: {err}", None)
            finally:
                self.metrics.parse_seconds.labels(feed.name).observe(time.monotonic() - parse_started)
            if parsed.bozo:
                log.info("feed not well-formed, entries read anyway", extra={"feed": feed.name, "bozo": parsed.bozo})
            if parsed.dropped:
                self.metrics.items.labels(feed.name, "dropped").inc(parsed.dropped)
            summary.entries = len(parsed.entries)
            try:
                items = await asyncio.to_thread(self._normalize_all, feed, parsed, fetched, summary)
            except Exception as err:
                log.debug("normalise raised", exc_info=True, extra={"feed": feed.name})
                return self._failed(feed, summary, "normalize_error", f"{type(err).__name__}: {err}", None)
            self.metrics.items.labels(feed.name, "invalid").inc(summary.invalid)
            self._count_corrected(feed, summary)
            await self._accept(feed, items, summary)
            # Kept only once every item was taken: with items deferred (or a step raising before this) a 304 on
            # the next poll would hide them for good, so the next poll fetches the whole feed again instead.
            if not summary.deferred:
                st.validators = result.validators
        self.metrics.fetches.labels(feed.name, summary.outcome).inc()
        self.metrics.last_success.labels(feed.name).set(time.time())
        st.next_due = time.monotonic() + self._delay_after(feed, summary, None)
        return summary

    def _normalize_all(self, feed: FeedConfig, parsed, fetched: datetime, summary: PollSummary) -> list[NewsItem]:
        """CPU-bound (thousands of entries in a big feed): runs in a worker thread, off the event loop."""
        items: list[NewsItem] = []
        for entry in parsed.entries:
            try:
                item, fixes = normalize_checked(
                    entry,
                    source=feed.name,
                    fetched=fetched,
                    feed_language=parsed.language,
                    default_tickers=feed.tickers,
                    tags=feed.tags,
                    future_tolerance_s=self.future_tolerance_s,
                    max_tickers=self.max_tickers,
                )
            except (NormalizeError, ValueError) as err:
                summary.invalid += 1
                log.debug("entry skipped", extra={"feed": feed.name, "error": str(err)})
                continue
            items.append(item)
            for fix in fixes:
                summary.corrected[fix] = summary.corrected.get(fix, 0) + 1
        return items

    def _count_corrected(self, feed: FeedConfig, summary: PollSummary) -> None:
        """Counted and logged once per poll: a feed dating its items in the future (or stuffing tickers)
        does it to every entry, so a line per entry would drown the log."""
        for fix, n in summary.corrected.items():
            self.metrics.corrected.labels(feed.name, fix).inc(n)
        if summary.corrected:
            log.warning(
                "feed entries corrected at the edge",
                extra={
                    "feed": feed.name,
                    **{f"items_{fix}": n for fix, n in sorted(summary.corrected.items())},
                    "future_tolerance_s": self.future_tolerance_s,
                    "max_tickers": self.max_tickers,
                },
            )

    def _failed(
        self, feed: FeedConfig, summary: PollSummary, kind: str, detail: str, retry_after: float | None
    ) -> PollSummary:
        summary.outcome, summary.error, summary.detail = "error", kind, detail
        self.metrics.fetches.labels(feed.name, "error").inc()
        self.metrics.errors.labels(feed.name, kind).inc()
        delay = self._delay_after(feed, summary, retry_after)
        self.state[feed.name].next_due = time.monotonic() + delay
        log.warning(
            "feed failed",
            extra={"feed": feed.name, "kind": kind, "detail": detail[:300], "retry_in_s": round(delay, 1)},
        )
        return summary

    async def _accept(self, feed: FeedConfig, items: list[NewsItem], summary: PollSummary) -> None:
        async with self._lock:
            fresh = await asyncio.to_thread(self._select_fresh, feed, items, summary)
            self.metrics.items.labels(feed.name, "duplicate").inc(summary.duplicate)
            room = max(self.max_pending - len(self.pending) - len(self.unarchived) - len(self.unmarked), 0)
            if len(fresh) > room:
                summary.deferred = len(fresh) - room
                self.metrics.items.labels(feed.name, "deferred").inc(summary.deferred)
                log.error(
                    "pending buffer full: items deferred, the feed is fetched again in full on its next poll",
                    extra={"feed": feed.name, "deferred": summary.deferred, "max_pending": self.max_pending},
                )
                fresh = fresh[:room]
            summary.new = len(fresh)
            self.metrics.items.labels(feed.name, "new").inc(len(fresh))
            summary.published = await self._flush(self.pending + fresh)

    def _select_fresh(self, feed: FeedConfig, items: list[NewsItem], summary: PollSummary) -> list[NewsItem]:
        """Items that are neither seen before nor repeated within this batch/pending. Caller holds the lock."""
        batch = Deduper()  # duplicates within this very batch (and pending/unarchived) are not in the store yet
        for item in self.pending + self.unarchived + self.unmarked:
            batch.mark(item)
        fresh: list[NewsItem] = []
        for item in items:
            verdict = self.dedup.check(item)
            if not verdict.duplicate:
                verdict = batch.check(item)
            if verdict.duplicate:
                summary.duplicate += 1
                self.metrics.duplicates.labels(feed.name, verdict.reason or "?").inc()
                continue
            batch.mark(item)
            fresh.append(item)
        return fresh

    async def _flush(self, items: list[NewsItem]) -> int:
        """Send; archive what was acknowledged, then mark it as seen; keep the rest pending. Caller holds the lock.

        Every crash point is safe in this order: killed after the ack or after the archive write, the item is
        not marked, so the next run fetches, publishes (a duplicate on the topic: at least once) and archives it
        again (the archive reads a repeated id once). Marking before archiving lost the item from the archive
        for good, and the archive is how a broker that lost its log is refilled."""
        acked = await self.sink.send(items) if items else []
        acked_ids = {i.id for i in acked}
        self.pending = [i for i in items if i.id not in acked_ids]
        self.metrics.published.inc(len(acked))
        if self.pending:
            self.metrics.publish_errors.inc(len(self.pending))
        self.metrics.pending.set(len(self.pending))
        if acked:
            self._crash_point("after_ack")
            self.unarchived.extend(acked)
        await self._archive()
        await self._mark()
        return len(acked)

    async def _archive(self) -> None:
        """Archive (fsynced) the acknowledged items; what the archive holds moves on to ``unmarked`` and is never
        written again. A failed write (full disk, permissions) never ends ingest: what it did not write stays in
        ``unarchived`` and is retried with backoff. Caller holds the lock."""
        if not self.unarchived or time.monotonic() < self._archive_retry_at:
            return
        batch = list(self.unarchived)
        if self.archive is not None:
            try:
                await asyncio.to_thread(self.archive.append, batch)
            except Exception as err:  # noqa: BLE001 - OSError mostly; whatever it is, the items must wait, not vanish
                written = err.written if isinstance(err, ArchiveWriteError) else set()
                self._archived([i for i in batch if i.id in written])
                self._archive_failed(err, len(self.unarchived))
                return
            self._crash_point("after_archive")
        self._archived(batch)
        self._archive_failures, self._archive_retry_at = 0, 0.0

    def _archived(self, items: list[NewsItem]) -> None:
        """``items`` are durable in the archive: from ``unarchived`` to ``unmarked``."""
        done = {i.id for i in items}
        self.unarchived = [i for i in self.unarchived if i.id not in done]
        self.unmarked.extend(items)
        self.metrics.unarchived.set(len(self.unarchived))
        self.metrics.unmarked.set(len(self.unmarked))

    def _archive_failed(self, err: Exception, items: int) -> None:
        """One line, no traceback: a full disk is an operational condition, and it repeats until fixed."""
        self._archive_failures += 1
        delay = self._backoff(self._archive_failures)
        self._archive_retry_at = time.monotonic() + delay
        self.metrics.archive_errors.inc()
        log.error(
            "archive write failed: items stay unmarked and are retried",
            extra={
                "error": f"{type(err).__name__}: {err}",
                "items": items,
                "failures": self._archive_failures,
                "retry_in_s": round(delay, 1),
            },
        )

    def _backoff(self, failures: int) -> float:
        return min(self.archive_retry_s * 2 ** min(failures - 1, 16), self.archive_retry_max_s)

    async def _mark(self) -> None:
        """Mark the archived items as seen, in a worker thread: a store locked by another process waits out
        SQLite's busy timeout there, not on the event loop. A store that refuses (full disk, lock) never ends
        ingest and never sends the items back to the archive: they stay in ``unmarked`` and only the mark is
        retried with backoff (until then a re-poll sees them as duplicates of the buffer). Caller holds the lock."""
        if not self.unmarked or time.monotonic() < self._mark_retry_at:
            return
        batch = list(self.unmarked)
        done, err = await asyncio.to_thread(self._mark_all, batch)
        del self.unmarked[:done]
        self.metrics.unmarked.set(len(self.unmarked))
        if err is None:
            self._mark_failures, self._mark_retry_at = 0, 0.0
        else:
            self._mark_failed(err, len(self.unmarked))

    def _mark_all(self, batch: list[NewsItem]) -> tuple[int, Exception | None]:
        """(how many were marked, the error that stopped the rest). Runs in a worker thread."""
        for done, item in enumerate(batch):
            try:
                self.dedup.mark(item)
            except Exception as err:  # noqa: BLE001 - sqlite3.OperationalError mostly; the items wait, they are archived
                return done, err
        return len(batch), None

    def _mark_failed(self, err: Exception, items: int) -> None:
        """One line, no traceback, as for the archive: a full or locked store repeats until fixed."""
        self._mark_failures += 1
        delay = self._backoff(self._mark_failures)
        self._mark_retry_at = time.monotonic() + delay
        self.metrics.dedup_errors.inc()
        log.error(
            "dedup store write failed: items are archived, their marks are retried",
            extra={
                "error": f"{type(err).__name__}: {err}",
                "items": items,
                "failures": self._mark_failures,
                "retry_in_s": round(delay, 1),
            },
        )

    def _crash_point(self, point: str) -> None:
        """Test hook (``ingest.debug_crash_at``): die here as kill -9 would, with no cleanup and no flush."""
        if self.crash_at == point:
            log.warning("debug crash point reached: killing this process", extra={"point": point})
            os.kill(os.getpid(), signal.SIGKILL)

    # ------------------------------------------------------------------ all feeds

    async def run_once(self) -> list[PollSummary]:
        return list(await asyncio.gather(*(self.poll(f) for f in self.feeds)))

    def _reap(self, feed: FeedConfig, task: asyncio.Task) -> None:
        """A finished poll task; one that died (raised past ``poll``, or was cancelled by someone else) is
        counted as a crash and its feed backed off before the task is started again."""
        if task.cancelled():
            self._crashed(feed, asyncio.CancelledError("poll task cancelled"))
        elif (err := task.exception()) is not None:
            self._crashed(feed, err)

    async def run_forever(self, stop: asyncio.Event) -> None:
        tasks: dict[str, asyncio.Task] = {}
        while not stop.is_set():
            now = time.monotonic()
            for feed in self.feeds:
                task = tasks.get(feed.name)
                if task is not None and task.done():
                    del tasks[feed.name]
                    self._reap(feed, task)
                    task = None
                if task is None and self.state[feed.name].next_due <= now:
                    tasks[feed.name] = asyncio.create_task(self.poll(feed), name=f"poll-{feed.name}")
            if self.pending or self.unarchived or self.unmarked:
                try:
                    async with self._lock:
                        await self._flush(self.pending)
                except Exception:
                    log.exception("flushing pending items failed", extra={"pending": len(self.pending)})
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            except TimeoutError:
                pass
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
