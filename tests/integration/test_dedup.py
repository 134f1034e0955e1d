import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import environ_without_finsent
from factories import news_item

from finsent.ingest.dedup import Deduper, minhash, similarity
from finsent.ingest.dedup_store import DedupStore
from finsent.local.feeds import FeedServer, rss

T0 = datetime(2024, 5, 2, 12, tzinfo=UTC)


def item(i, title, url=None, at=T0, source="wire"):
    return news_item(f"id{i}", title, at=at, source=source, url=url)


def test_exact_duplicates_by_id_url_and_title():
    d = Deduper()
    d.mark(item(1, "Apple shares slide after earnings miss", url="https://a.com/1"))
    assert d.check(item(1, "different")).reason == "id"
    assert d.check(item(2, "different", url="https://a.com/1")).reason == "url"
    v = d.check(item(3, "APPLE shares slide, after earnings miss!", source="other"))
    assert v.duplicate and v.reason == "title" and v.of == "id1"
    assert not d.check(item(4, "Microsoft shares rise after earnings beat")).duplicate


def test_near_duplicates_found_and_distinct_stories_kept():
    d = Deduper()
    d.mark(item(1, "Apple shares slide 5% after iPhone maker misses quarterly earnings estimates"))
    v = d.check(item(2, "Apple shares slide 5% after iPhone maker misses quarterly earnings estimates - Reuters"))
    assert v.duplicate and v.reason == "near" and v.of == "id1"
    assert d.check(item(4, "Apple shares slide 5 pct after iPhone maker misses quarterly earnings estimates")).duplicate
    assert not d.check(item(3, "Apple shares jump 5% after iPhone maker beats quarterly revenue estimates")).duplicate


def test_minhash_similarity_tracks_jaccard():
    a = minhash("Fed raises interest rates by a quarter point as inflation cools")
    b = minhash("Fed raises interest rates by a quarter point as inflation cools further")
    c = minhash("Oil prices tumble as OPEC output rises sharply")
    assert similarity(a, b) >= 0.7 > 0.2 > similarity(a, c)


def test_horizon_evicts_old_marks():
    d = Deduper(horizon=timedelta(hours=1))
    d.mark(item(1, "Old story about the bond market selloff today", at=T0))
    d.mark(item(2, "A much newer and unrelated market headline", at=T0 + timedelta(hours=2)))
    assert len(d) == 1
    assert not d.check(item(3, "Old story about the bond market selloff today", at=T0 + timedelta(hours=2))).duplicate


def test_store_survives_restart(tmp_path):
    path = tmp_path / "dedup.sqlite"
    s = DedupStore(path)
    s.mark(item(1, "Apple shares slide after earnings miss", url="https://a.com/1"))
    s.close()
    s2 = DedupStore(path)
    assert s2.check(item(9, "x", url="https://a.com/1")).duplicate
    assert s2.check(item(1, "anything")).reason == "id"
    s2.close()


# ----------------------------------------------------------------------------- exact ids outlive the near horizon


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_exact_ids_are_kept_for_the_wall_clock_horizon_across_restarts(tmp_path):
    """A feed listing a three-week-old item next to today's: the old id is still known after a restart
    (it used to be dropped 48 h behind the newest item), and forgotten only after the id horizon."""
    path, clock = tmp_path / "dedup.sqlite", Clock(T0.timestamp())
    old = item(1, "Central bank publishes its annual report on payment systems", at=T0 - timedelta(days=21))
    new = item(2, "Central bank keeps its policy rate unchanged at the meeting", at=T0)
    s = DedupStore(path, clock=clock)
    s.mark(old)
    s.mark(new)
    assert s.check(old).reason == "id"  # not evicted in memory either, when the newer item was marked
    s.close()
    clock.now += 3600
    s = DedupStore(path, clock=clock)
    assert s.check(old).duplicate and s.check(new).duplicate
    assert not s.check(item(3, old.title, at=T0)).duplicate  # its title evidence is past the 48 h horizon
    s.close()
    clock.now += timedelta(days=30).total_seconds()
    s = DedupStore(path, clock=clock)
    assert not s.check(old).duplicate  # both horizons passed: its row is dropped
    assert s.check(new).duplicate  # still the newest item: inside the (event-time) near-duplicate horizon
    assert s.db.execute("SELECT COUNT(*) FROM marks").fetchone()[0] == 1
    s.close()


def test_a_store_from_before_the_id_horizon_is_migrated(tmp_path):
    import sqlite3

    path = tmp_path / "dedup.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE marks (item_id TEXT PRIMARY KEY, at REAL NOT NULL, keys TEXT NOT NULL, sig BLOB NOT NULL)")
    mark = Deduper.mark_of(item(1, "Old store row about the bond market", at=T0))
    db.execute(
        "INSERT INTO marks VALUES (?, ?, ?, ?)", (mark.item_id, mark.at, "\n".join(mark.keys), mark.sig.tobytes())
    )
    db.commit()
    db.close()
    s = DedupStore(path)
    assert s.check(item(1, "x")).reason == "id" and s.moved_aside is None
    s.close()


def test_a_corrupt_store_is_moved_aside_loudly_and_ingest_starts(tmp_path, caplog):
    path = tmp_path / "dedup.sqlite"
    path.write_bytes(b"\x00garbage, not SQLite\xff" * 500)
    s = DedupStore(path)
    assert s.moved_aside is not None and s.moved_aside.name.startswith("dedup.sqlite.corrupt-")
    assert s.moved_aside.read_bytes().startswith(b"\x00garbage")
    lines = [r for r in caplog.records if r.name == "finsent.ingest.dedup"]
    assert len(lines) == 1 and lines[0].levelname == "ERROR" and "moved aside" in lines[0].getMessage()
    assert lines[0].moved_to == str(s.moved_aside) and not lines[0].exc_info
    s.mark(item(1, "Apple shares slide after earnings miss"))
    s.close()
    assert DedupStore(path).check(item(1, "x")).duplicate  # the fresh store works and persists


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE marks SET sig = x'0102030405' WHERE item_id = 'id2'",  # cut short: not a whole uint64
        "UPDATE marks SET sig = x'0102030405060708' WHERE item_id = 'id2'",  # a whole uint64, not a signature
        "UPDATE marks SET at = 'yesterday' WHERE item_id = 'id2'",
        "UPDATE marks SET seen = 'later' WHERE item_id = 'id2'",
    ],
)
def test_a_store_with_damaged_rows_is_moved_aside_like_a_corrupt_one(tmp_path, caplog, damage):
    """SQLite keeps no checksums of row contents: a damaged file opens cleanly, and a row it reads back that ingest
    cannot use stopped `finsent ingest` with a ValueError / TypeError traceback."""
    import sqlite3

    path = tmp_path / "dedup.sqlite"
    s = DedupStore(path)
    for n in (1, 2, 3):
        s.mark(item(n, f"Headline number {n} about the bond market"))
    s.close()
    db = sqlite3.connect(path)
    db.execute(damage)
    db.commit()
    db.close()
    s = DedupStore(path)
    assert s.moved_aside is not None and s.moved_aside.name.startswith("dedup.sqlite.corrupt-")
    (line,) = [r for r in caplog.records if r.name == "finsent.ingest.dedup"]
    assert "moved aside" in line.getMessage() and "damaged mark 'id2'" in line.error
    assert not s.check(item(1, "x")).duplicate  # a fresh store
    s.close()


# ----------------------------------------------------------------------------- the same through `finsent ingest`

RSS = "application/rss+xml; charset=utf-8"


@pytest.fixture
def server():
    s = FeedServer(rate_per_s=0.0005, burst_at=3600, backlog=0).start()
    now = datetime.now(UTC)
    s.extra["central-bank"] = (
        rss(
            "cb",
            [
                (
                    "cb-today",
                    "Central bank keeps its policy rate unchanged",
                    f"{s.url}/cb/today",
                    now - timedelta(hours=1),
                ),
                (
                    "cb-old",
                    "Central bank publishes its annual report on payment systems",
                    f"{s.url}/cb/old",
                    now - timedelta(days=21),
                ),
            ],
        ),
        RSS,
    )
    yield s
    s.stop()


def _ingest_once(tmp_path, server, out):
    feeds = tmp_path / "feeds.toml"
    feeds.write_text(f'[[feeds]]\nname = "central-bank"\nurl = "{server.url}/hostile/central-bank"\n')
    env = environ_without_finsent()
    env.update(FINSENT_PATHS__STATE_DIR=str(tmp_path / "state"), FINSENT_ALLOW_PRIVATE_FEEDS="1", FINSENT_LOG_JSON="1")
    return subprocess.run(
        [sys.executable, "-m", "finsent.cli", "ingest", "--feeds", str(feeds), "--once", "--output", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_three_week_old_item_is_not_published_again_after_a_restart(tmp_path, server):
    out = tmp_path / "out.jsonl"
    first = _ingest_once(tmp_path, server, out)
    assert first.returncode == 0, first.stderr[-2000:]
    assert sorted(json.loads(x)["title"] for x in out.read_text().splitlines()) == [
        "Central bank keeps its policy rate unchanged",
        "Central bank publishes its annual report on payment systems",
    ]
    second = _ingest_once(tmp_path, server, out)  # a restart: the store is read back from disk
    assert second.returncode == 0, second.stderr[-2000:]
    assert len(out.read_text().splitlines()) == 2, out.read_text()


def test_ingest_starts_on_a_corrupt_dedup_store_with_one_clear_line(tmp_path, server):
    out = tmp_path / "out.jsonl"
    store = tmp_path / "state" / "ingest" / "dedup-out.sqlite"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"garbage" * 4096)
    proc = _ingest_once(tmp_path, server, out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(out.read_text().splitlines()) == 2
    logged = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    moved = [x for x in logged if x["msg"].startswith("dedup store unreadable")]
    assert len(moved) == 1 and moved[0]["level"] == "error" and "exc" not in moved[0] and "Traceback" not in proc.stderr
    assert [p.name for p in store.parent.glob("dedup-out.sqlite.corrupt-*")] == [Path(moved[0]["moved_to"]).name]


def test_the_reset_is_counted_in_a_metric(tmp_path):
    from conftest import make_settings

    from finsent.ingest import service

    settings = make_settings(tmp_path)
    store = settings.paths.state_dir / "ingest" / "dedup.sqlite"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"garbage" * 4096)
    components = service.build(settings, [], None)
    assert components.metrics.registry.get_sample_value("finsent_ingest_dedup_store_resets_total") == 1
    components.dedup.close()
