"""Ingest when a step after the broker's ack fails: the dedup store cannot record a mark (full disk, locked by
another process), the archive can write some days and not others, the pending buffer is full. Every item ends
up published, archived once and marked once the failure ends; every failure is counted on /metrics, logged in
one line, and never re-runs the steps that already succeeded.

Real local HTTP feeds, a real SQLite store (made to refuse writes with ``PRAGMA query_only``, or locked by
another connection), a real archive on disk (a day blocked by a plain file where its directory belongs)."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from conftest import environ_without_finsent

from finsent.ingest.archive import Archive
from finsent.ingest.dedup import Deduper
from finsent.ingest.dedup_store import DedupStore
from finsent.ingest.feeds import FeedConfig
from finsent.ingest.fetch import Fetcher
from finsent.ingest.metrics import IngestMetrics
from finsent.ingest.poller import Poller
from finsent.ingest.sinks import JsonlSink
from finsent.local.feeds import FeedServer, LoopbackServer, rss

RSS = "application/rss+xml; charset=utf-8"


def _metric(metrics: IngestMetrics, name: str, labels: dict | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


def _parts_per_day(root: Path) -> list[int]:
    """How many part files each day holds: [1, 1] is two days archived once each."""
    return [len(list(day.glob("part-*.parquet"))) for day in sorted(root.glob("day=*"))]


def _marked(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT COUNT(*) FROM marks").fetchone()[0]
    finally:
        db.close()


def _scenario(poller: Poller, stop_after: float, at: dict[float, object]) -> None:
    """``run_forever`` for ``stop_after`` seconds; ``at``: callbacks by time (on the loop, in order)."""

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for delay, callback in at.items():
            loop.call_later(delay, callback)
        loop.call_later(stop_after, stop.set)
        await poller.run_forever(stop)
        await poller.fetcher.aclose()

    asyncio.run(main())


# ----------------------------------------------------------------------------- the dedup store fails to mark


def test_a_dedup_store_that_cannot_write_is_retried_with_backoff_counted_and_nothing_is_archived_twice(
    tmp_path, frozen_feeds, caplog
):
    """Before: the exception of ``mark`` left the whole batch in ``unarchived``, so every loop round (0.5 s)
    archived the same items again (17 part files in 10 s), /metrics said archive_errors 0 and unarchived 0, and
    the failure showed only as the feed's internal_error."""
    caplog.set_level(logging.ERROR, logger="finsent.ingest")
    feed = FeedConfig(name="wire-markets", url=f"{frozen_feeds.url}/feeds/wire-markets", interval=1)
    path, root, out = tmp_path / "dedup.sqlite", tmp_path / "archive", tmp_path / "out.jsonl"
    dedup, metrics = DedupStore(path), IngestMetrics()
    dedup.db.execute(
        "PRAGMA query_only=ON"
    )  # every write fails, as on a full disk ("attempt to write a readonly database")
    poller = Poller(
        [feed], Fetcher(allow_private=True), dedup, JsonlSink(out), Archive(root), metrics, archive_retry_s=0.2
    )
    n = len(frozen_feeds.published("wire-markets"))
    seen: dict[str, object] = {}

    def disk_back():
        seen.update(
            parts=_parts_per_day(root),
            marked=_marked(path),
            dedup_errors=_metric(metrics, "finsent_ingest_dedup_errors_total"),
            archive_errors=_metric(metrics, "finsent_ingest_archive_errors_total"),
            unmarked_gauge=_metric(metrics, "finsent_ingest_unmarked_items"),
            unarchived_gauge=_metric(metrics, "finsent_ingest_unarchived_items"),
            crashes=_metric(metrics, "finsent_ingest_poll_crashes_total", {"feed": "wire-markets"}),
            unmarked=len(getattr(poller, "unmarked", ())),
            unarchived=len(poller.unarchived),
        )
        dedup.db.execute("PRAGMA query_only=OFF")

    _scenario(poller, 5.5, {3.2: disk_back})
    assert seen["parts"] and set(seen["parts"]) == {1}, (
        seen
    )  # archived once, and never again while the marks could not be written
    assert seen["marked"] == 0 and seen["archive_errors"] == 0 and seen["crashes"] == 0, seen
    assert (seen["unmarked"], seen["unarchived"], seen["unmarked_gauge"], seen["unarchived_gauge"]) == (n, 0, n, 0)
    assert 2 <= seen["dedup_errors"] <= 6, seen  # retried, but backed off (0.2, 0.4, 0.8, 1.6 s)
    failures = [r for r in caplog.records if r.getMessage().startswith("dedup store write failed")]
    assert len(failures) == seen["dedup_errors"] and not any(r.exc_info for r in failures)
    assert "readonly" in failures[0].error and failures[0].items == n
    # the store writes again: marked, nothing archived or published again
    assert (
        _marked(path) == n and poller.unmarked == [] and set(_parts_per_day(root)) == {1} and Archive(root).count() == n
    )
    assert len(out.read_text().splitlines()) == n
    assert _metric(metrics, "finsent_ingest_unmarked_items") == 0
    dedup.close()


def test_a_locked_dedup_store_does_not_block_the_event_loop(tmp_path, frozen_feeds):
    """Before: ``mark`` ran on the event loop, so a store locked by another process stopped every feed's timers
    for SQLite's busy timeout (5 s by default; 1.5 s here) on each attempt."""
    feed = FeedConfig(name="wire-markets", url=f"{frozen_feeds.url}/feeds/wire-markets", interval=1)
    path = tmp_path / "dedup.sqlite"
    dedup, metrics = DedupStore(path), IngestMetrics()
    dedup.db.execute("PRAGMA busy_timeout=1500")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")  # another process's write lock, held for the first 3 s
    poller = Poller(
        [feed],
        Fetcher(allow_private=True),
        dedup,
        JsonlSink(tmp_path / "o.jsonl"),
        Archive(tmp_path / "archive"),
        metrics,
        archive_retry_s=0.2,
    )
    gaps: list[float] = []

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        async def heartbeat():
            while not stop.is_set():
                t = time.monotonic()
                await asyncio.sleep(0.05)
                gaps.append(time.monotonic() - t)

        beat = asyncio.create_task(heartbeat())
        loop.call_later(3.0, lambda: other.execute("ROLLBACK"))
        loop.call_later(6.0, stop.set)
        await poller.run_forever(stop)
        await beat
        await poller.fetcher.aclose()

    asyncio.run(main())
    other.close()
    assert _metric(metrics, "finsent_ingest_dedup_errors_total") >= 1  # "database is locked", counted
    assert max(gaps) < 0.5, max(gaps)
    assert poller.unmarked == [] and _marked(path) == len(frozen_feeds.published("wire-markets"))
    assert set(_parts_per_day(tmp_path / "archive")) == {1}
    dedup.close()


class _LockingFeed(BaseHTTPRequestHandler):
    """Serves one RSS document; the first request also takes a write lock on the dedup store of the ingest
    process that asked (another process, as in production when a second ingest or a backup holds it)."""

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        server = self.server
        if server.lock is None:
            server.lock = sqlite3.connect(server.store, isolation_level=None, check_same_thread=False)
            server.lock.execute("BEGIN EXCLUSIVE")
        self.send_response(200)
        self.send_header("Content-Type", RSS)
        self.send_header("Content-Length", str(len(server.body)))
        self.end_headers()
        self.wfile.write(server.body)


def test_ingest_once_says_truthfully_which_items_were_archived_but_not_marked(tmp_path):
    """Before: the exit log said "published but not archived" of items that were archived (and the feed's
    summary was an internal_error)."""
    now = datetime.now(UTC)
    store = tmp_path / "state" / "ingest" / "dedup-out.sqlite"
    httpd = LoopbackServer(("127.0.0.1", 0), _LockingFeed)
    httpd.lock, httpd.store = None, store
    httpd.body = rss(
        "locked", [(f"l{i}", f"Headline number {i} moves markets", f"http://x.test/{i}", now) for i in range(3)]
    )
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    feeds = tmp_path / "feeds.toml"
    feeds.write_text(f'[[feeds]]\nname = "locked"\nurl = "{httpd.url}/feed"\n')
    out = tmp_path / "out.jsonl"
    env = environ_without_finsent()
    env.update(
        FINSENT_PATHS__STATE_DIR=str(tmp_path / "state"),
        FINSENT_PATHS__ARCHIVE_DIR=str(tmp_path / "archive"),
        FINSENT_ALLOW_PRIVATE_FEEDS="1",
        FINSENT_LOG_JSON="1",
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "finsent.cli", "ingest", "--feeds", str(feeds), "--once", "--output", str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        httpd.shutdown()
        if httpd.lock is not None:
            httpd.lock.close()
    # exit 1: the run left items for the next one (they were 0 before, as if all had gone through)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.rstrip().splitlines()[-1].endswith("3 not marked as seen"), proc.stderr[-500:]
    logged = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    msgs = [x["msg"] for x in logged]
    assert any(m.startswith("dedup store write failed") for m in msgs), msgs
    left = [x for x in logged if x["msg"].startswith("items archived but not marked as seen at exit")]
    assert len(left) == 1 and left[0]["unmarked"] == 3, msgs
    assert not any("not archived" in m for m in msgs), msgs
    assert Archive(tmp_path / "archive").count() == 3 and _parts_per_day(tmp_path / "archive") == [1]
    assert "internal_error" not in proc.stdout, proc.stdout


# ----------------------------------------------------------------------------- the archive writes some days


def test_days_already_archived_are_not_written_again_when_another_day_failed(tmp_path):
    """Before: ``append`` raised on the first failing day, and the retry wrote the days that had succeeded
    once more (a new part file of the same items per retry)."""
    today = datetime.now(UTC).date()
    yesterday, midnight = today - timedelta(days=1), datetime.combine(today, datetime.min.time(), UTC)
    s = FeedServer(rate_per_s=0.0005, burst_at=3600, backlog=0).start()
    s.extra["two-days"] = (
        rss(
            "two",
            [
                ("t1", "Oil rises on supply worries", f"{s.url}/t1", midnight + timedelta(seconds=2)),
                ("t2", "Gold falls as the dollar firms", f"{s.url}/t2", midnight + timedelta(seconds=1)),
                ("y1", "Banks lead a broad market rally", f"{s.url}/y1", midnight - timedelta(hours=12)),
            ],
        ),
        RSS,
    )
    root = tmp_path / "archive"
    blocked = root / f"day={yesterday.isoformat()}"
    root.mkdir()
    blocked.write_text("not a directory")  # this day cannot be written; today's can
    feed = FeedConfig(name="two", url=f"{s.url}/hostile/two-days", interval=1)
    dedup, metrics = Deduper(), IngestMetrics()
    poller = Poller(
        [feed], Fetcher(allow_private=True), dedup, JsonlSink(tmp_path / "o.jsonl"), Archive(root), metrics,
        archive_retry_s=0.2,
    )  # fmt: skip
    seen: dict[str, object] = {}

    def unblock():
        seen.update(
            today_parts=len(list((root / f"day={today.isoformat()}").glob("part-*"))),
            errors=_metric(metrics, "finsent_ingest_archive_errors_total"),
            unarchived=_metric(metrics, "finsent_ingest_unarchived_items"),
        )
        blocked.unlink()

    try:
        _scenario(poller, 4.0, {2.0: unblock})
    finally:
        s.stop()
    assert seen["errors"] >= 2 and seen["today_parts"] == 1, seen  # retried, today's items never written again
    assert seen["unarchived"] == 1, seen  # only yesterday's item waits
    assert len(list((root / f"day={today.isoformat()}").glob("part-*"))) == 1
    assert len(list((root / f"day={yesterday.isoformat()}").glob("part-*"))) == 1
    assert (
        Archive(root).count() == 3
        and poller.unarchived == []
        and _metric(metrics, "finsent_ingest_unarchived_items") == 0
    )


# ----------------------------------------------------------------------------- the pending buffer is full


def test_items_deferred_by_a_full_buffer_are_fetched_again_and_counted_apart(tmp_path, frozen_feeds):
    """Before: the feed's new ETag was kept although items were cut off, so every later poll got 304 and the
    cut-off items never came; and they were counted as status="new" before the cut."""
    feed = FeedConfig(name="wm", url=f"{frozen_feeds.url}/feeds/wire-markets")
    metrics = IngestMetrics()
    out = tmp_path / "o.jsonl"
    poller = Poller([feed], Fetcher(allow_private=True), Deduper(), JsonlSink(out), metrics=metrics, max_pending=3)
    n = len(frozen_feeds.published("wire-markets"))
    assert n >= 7

    async def polls():
        results = [await poller.poll(feed) for _ in range(n // 3 + 3)]
        await poller.fetcher.aclose()
        return results

    summaries = asyncio.run(polls())
    assert len(out.read_text().splitlines()) == n  # every item came, in rounds of what the buffer could take
    assert (summaries[0].new, summaries[0].deferred) == (3, n - 3)
    assert _metric(metrics, "finsent_feed_items_total", {"feed": "wm", "status": "new"}) == n
    deferred = sum(s.deferred for s in summaries)
    assert (
        deferred > 0 and _metric(metrics, "finsent_feed_items_total", {"feed": "wm", "status": "deferred"}) == deferred
    )
    assert summaries[-1].outcome == "not_modified"  # once nothing was deferred, the validators were kept


def test_an_output_file_on_a_full_disk_acknowledges_nothing_and_gets_every_item_whole_later(tmp_path, frozen_feeds):
    """``--output`` on a full disk (a link to /dev/full: every write fails with ENOSPC) was a poll crash with a
    traceback, and a torn line glued to the next run's first item lost that item for good."""
    feed = FeedConfig(name="wm", url=f"{frozen_feeds.url}/feeds/wire-markets")
    metrics = IngestMetrics()
    out, real = tmp_path / "o.jsonl", tmp_path / "real.jsonl"
    poller = Poller([feed], Fetcher(allow_private=True), Deduper(), JsonlSink(out), metrics=metrics)
    out.unlink()
    out.symlink_to("/dev/full")  # the disk fills after the start
    n = len(frozen_feeds.published("wire-markets"))

    async def polls():
        first = await poller.poll(feed)
        out.unlink()
        out.symlink_to(real)  # space again
        second = await poller.poll(feed)
        await poller.fetcher.aclose()
        return first, second

    first, second = asyncio.run(polls())
    assert second.outcome != "error"
    assert first.outcome != "error" and _metric(metrics, "finsent_ingest_publish_errors_total") == n
    rows = [json.loads(line) for line in real.read_text().splitlines()]
    assert len(rows) == len({r["id"] for r in rows}) == n and poller.pending == []


def test_a_dedup_store_that_cannot_be_created_at_start_is_one_line_naming_it(tmp_path):
    """A full disk at start (here: a file-size limit of 0 bytes, so SQLite cannot write its first page) was a
    sqlite3.OperationalError traceback out of `finsent ingest`; it is one line naming the store, exit 1."""
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # EFBIG instead of being killed, as a full disk answers
        "resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))\n"
        "from pathlib import Path\n"
        "from finsent.errors import StateStoreError\n"
        "from finsent.ingest.dedup_store import DedupStore\n"
        "try:\n"
        f"    DedupStore(Path({str(tmp_path / 'state' / 'dedup.sqlite')!r}))\n"
        "except StateStoreError as err:\n"
        "    print('refused:', err, 'exit', err.exit_code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stdout.startswith("refused: dedup store ") and "dedup.sqlite cannot be opened" in proc.stdout
    assert proc.stdout.rstrip().endswith("exit 1")
