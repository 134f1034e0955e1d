"""Ingest loses nothing: killed (-9) at any point of accepting a batch, or facing an archive it cannot write,
every item ends up published (at least once) and in the archive (exactly once as read; once on disk after
compaction), because an item is marked as seen only after the sink acknowledged it AND the archive holds it.

Real processes: local HTTP feeds, ``finsent ingest --once`` against the session's Tansu broker, a kill -9
from inside at the chosen point (``ingest.debug_crash_at``), then a plain restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import environ_without_finsent
from streamkit import read_topic

from finsent.ingest.archive import Archive
from finsent.ingest.dedup_store import DedupStore
from finsent.ingest.feeds import FeedConfig
from finsent.ingest.fetch import Fetcher
from finsent.ingest.metrics import IngestMetrics
from finsent.ingest.poller import Poller
from finsent.ingest.sinks import JsonlSink
from finsent.kafka import ensure_topics
from finsent.local.feeds import DEMO_FEEDS, FeedServer
from finsent.records import NewsItem
from finsent.settings import TopicSpec


def _titles(server: FeedServer) -> set[str]:
    return {title for feed in DEMO_FEEDS for _, title, _, _ in server.published(feed)}


def _feeds_file(tmp_path: Path, server: FeedServer) -> Path:
    path = tmp_path / "feeds.toml"
    path.write_text("".join(f'[[feeds]]\nname = "{f}"\nurl = "{server.url}/feeds/{f}"\n\n' for f in DEMO_FEEDS))
    return path


def _ingest(
    tmp_path: Path, server: FeedServer, *, output: Path | None = None, **env_extra: str
) -> subprocess.CompletedProcess:
    env = environ_without_finsent()
    env.update(
        FINSENT_PATHS__STATE_DIR=str(tmp_path / "state"),
        FINSENT_PATHS__ARCHIVE_DIR=str(tmp_path / "archive"),
        FINSENT_ALLOW_PRIVATE_FEEDS="1",
        FINSENT_LOG_JSON="1",
        **env_extra,
    )
    cmd = [sys.executable, "-m", "finsent.cli", "ingest", "--feeds", str(_feeds_file(tmp_path, server)), "--once"]
    return subprocess.run(
        cmd + (["--output", str(output)] if output else []), env=env, capture_output=True, text=True, timeout=120
    )


def _logged(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]


def _archived_rows(root: Path) -> list[str]:
    """Every id in every part file: what is on disk, before read() drops repeats."""
    parts = sorted(root.rglob("part-*.parquet"))
    return [i for part in parts for i in pq.read_table(part, columns=["id"]).column("id").to_pylist()]


@pytest.mark.parametrize("point", ["after_ack", "after_archive"])
def test_a_kill_9_at_either_point_loses_nothing(tmp_path, frozen_feeds, broker, point):
    topic = f"raw-{uuid.uuid4().hex[:6]}"
    ensure_topics(broker, [TopicSpec(name=topic, partitions=2)])
    kafka = {
        "FINSENT_KAFKA__BOOTSTRAP": broker,
        "FINSENT_TOPICS__RAW__NAME": topic,
        "FINSENT_TOPICS__RAW__PARTITIONS": "2",
    }
    expected = _titles(frozen_feeds)
    n = len(expected)
    assert n >= 30

    crashed = _ingest(tmp_path, frozen_feeds, FINSENT_INGEST__DEBUG_CRASH_AT=point, **kafka)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert any(x["msg"].startswith("debug crash point reached") and x["point"] == point for x in _logged(crashed))
    published = [NewsItem.from_json(r.value) for r in read_topic(broker, topic)]
    assert published, "the crash came after a broker ack"
    archived = list(Archive(tmp_path / "archive").read())
    assert len(archived) == (0 if point == "after_ack" else len(published))
    store = DedupStore(tmp_path / "state" / "ingest" / "dedup.sqlite")
    assert not any(store.check(i).duplicate for i in published)  # nothing marked: the restart fetches them again
    store.close()

    restarted = _ingest(tmp_path, frozen_feeds, **kafka)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    archive = Archive(tmp_path / "archive")
    items = list(archive.read())
    assert len(items) == len({i.id for i in items}) == n and {i.title for i in items} == expected
    for day in archive.days():
        archive.compact(day)
    assert sorted(_archived_rows(tmp_path / "archive")) == sorted(i.id for i in items)  # exactly once on disk
    on_topic = [NewsItem.from_json(r.value) for r in read_topic(broker, topic)]
    assert {i.id for i in on_topic} == {i.id for i in items}  # all published; repeats allowed (at least once)

    again = _ingest(tmp_path, frozen_feeds, **kafka)  # everything is marked now: nothing is published twice more
    assert again.returncode == 0 and len(read_topic(broker, topic)) == len(on_topic)


def _block(root: Path) -> None:
    """An archive root nothing can be written under: read-only, or (root ignores modes) a plain file."""
    if os.geteuid() == 0:
        root.write_text("not a directory")
    else:
        root.mkdir()
        root.chmod(0o500)


def _unblock(root: Path) -> None:
    if root.is_file():
        root.unlink()
    else:
        root.chmod(0o700)


def test_an_unwritable_archive_is_retried_with_backoff_counted_and_nothing_is_marked_until_archived(
    tmp_path, frozen_feeds, caplog
):
    caplog.set_level(logging.ERROR, logger="finsent.ingest")
    root = tmp_path / "archive"
    _block(root)
    feed = FeedConfig(name="wire-markets", url=f"{frozen_feeds.url}/feeds/wire-markets", interval=1)
    dedup, metrics, out = DedupStore(tmp_path / "dedup.sqlite"), IngestMetrics(), tmp_path / "out.jsonl"
    poller = Poller(
        [feed], Fetcher(allow_private=True), dedup, JsonlSink(out), Archive(root), metrics, archive_retry_s=0.2
    )
    seen: dict[str, object] = {}

    def blocked_phase_over():
        seen.update(
            unarchived=len(poller.unarchived),
            marked=sum(dedup.check(i).duplicate for i in poller.unarchived),
            errors=metrics.registry.get_sample_value("finsent_ingest_archive_errors_total"),
        )
        _unblock(root)

    async def scenario():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.call_later(3.2, blocked_phase_over)
        loop.call_later(6.0, stop.set)
        await poller.run_forever(stop)
        await poller.fetcher.aclose()

    asyncio.run(scenario())
    n = len(frozen_feeds.published("wire-markets"))
    assert seen["unarchived"] == n and seen["marked"] == 0  # published, waiting, not marked as seen
    assert 2 <= seen["errors"] <= 6  # retried, but backed off (0.2, 0.4, 0.8, 1.6 s), not every loop round
    failures = [r for r in caplog.records if r.getMessage().startswith("archive write failed")]
    assert len(failures) == seen["errors"] and not any(r.exc_info for r in failures)
    assert [r.retry_in_s for r in failures] == sorted(r.retry_in_s for r in failures) and failures[-1].retry_in_s > 0.2
    polls = sum(
        metrics.registry.get_sample_value("finsent_feed_fetches_total", {"feed": "wire-markets", "outcome": o}) or 0
        for o in ("ok", "not_modified")
    )
    assert polls >= 3  # ingest kept polling all along
    assert Archive(root).count() == n and poller.unarchived == []  # archived once the disk was back
    assert all(dedup.check(NewsItem.from_json(line)).duplicate for line in out.read_bytes().splitlines())
    assert len(out.read_bytes().splitlines()) == n  # re-polls while waiting did not send them again
    assert metrics.registry.get_sample_value("finsent_ingest_unarchived_items") == 0
    dedup.close()


def test_ingest_once_with_an_unwritable_archive_exits_cleanly_and_the_next_run_archives_everything(
    tmp_path, frozen_feeds
):
    root, out, n = tmp_path / "archive", tmp_path / "out.jsonl", len(_titles(frozen_feeds))
    _block(root)
    first = _ingest(tmp_path, frozen_feeds, output=out)
    # exit 1 (a run that left items for the next, which exit 0 hid) with its one line; no traceback
    assert first.returncode == 1 and "Traceback" not in first.stderr, first.stderr[-2000:]
    assert f"{n} not archived" in first.stderr.rstrip().splitlines()[-1]
    logged = _logged(first)
    assert any(x["msg"].startswith("archive write failed") and x["level"] == "error" for x in logged)
    assert any(x["msg"].startswith("items published but not archived at exit") and x["unarchived"] == n for x in logged)
    _unblock(root)
    second = _ingest(tmp_path, frozen_feeds, output=out)
    assert second.returncode == 0, second.stderr[-2000:]
    assert {i.title for i in Archive(root).read()} == _titles(frozen_feeds) and Archive(root).count() == n
    assert len(out.read_text().splitlines()) == 2 * n  # not marked the first time: sent again (at least once)
