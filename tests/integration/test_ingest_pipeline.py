"""Ingest end to end with real processes: local HTTP feeds, the CLI, a real broker that dies and returns."""

import asyncio
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import environ_without_finsent
from factories import news_item
from kafka import KafkaConsumer

from finsent.errors import FeedListError, ImportFileError
from finsent.ingest.archive import Archive
from finsent.ingest.dedup_store import DedupStore
from finsent.ingest.feeds import FeedConfig, load_feeds
from finsent.ingest.fetch import Fetcher
from finsent.ingest.importer import EdgeCheck, import_file, parse_mapping
from finsent.ingest.poller import Poller
from finsent.ingest.sinks import KafkaSink
from finsent.kafka import ensure_topics
from finsent.local.broker import broker_child
from finsent.local.feeds import FeedServer
from finsent.net import free_port, port_open
from finsent.records import NewsItem
from finsent.settings import TopicSpec


def _env(tmp_path: Path, **extra) -> dict:
    env = environ_without_finsent()
    env.update(
        {
            "FINSENT_PATHS__STATE_DIR": str(tmp_path / "state"),
            "FINSENT_PATHS__ARCHIVE_DIR": str(tmp_path / "archive"),
            "FINSENT_ALLOW_PRIVATE_FEEDS": "1",
            **extra,
        }
    )
    return env


def _finsent(env: dict, *args: str) -> subprocess.CompletedProcess:
    """``finsent <args>`` in a child process with ``env``; its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "finsent.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _feeds_file(tmp_path: Path, server: FeedServer) -> Path:
    path = tmp_path / "feeds.toml"
    path.write_text(
        f'[[feeds]]\nname = "wire-markets"\nurl = "{server.url}/feeds/wire-markets"\n\n'
        f'[[feeds]]\nname = "oil-desk"\nurl = "{server.url}/feeds/oil-desk"\ninterval = 30\ntickers = ["USO"]\n\n'
        f'[[feeds]]\nname = "dead"\nurl = "{server.url}/hostile/404"\n'
    )
    return path


def test_once_writes_jsonl_archives_and_a_restart_re_emits_nothing(tmp_path, frozen_feeds):
    feeds, out = _feeds_file(tmp_path, frozen_feeds), tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "finsent.cli", "ingest", "--feeds", str(feeds), "--once", "--output", str(out)]
    first = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    expected = len(frozen_feeds.published("wire-markets")) + len(frozen_feeds.published("oil-desk"))
    assert expected >= 20 and len(lines) == expected and {x["source"] for x in lines} == {"wire-markets", "oil-desk"}
    assert all("USO" in x["tickers"] for x in lines if x["source"] == "oil-desk")
    assert "dead" in first.stdout and "http_404" in first.stdout  # per-feed summary, exit 0 anyway
    assert Archive(tmp_path / "archive").count() == expected
    second = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert second.returncode == 0
    assert len(out.read_text().splitlines()) == expected  # nothing new written
    assert Archive(tmp_path / "archive").count() == expected


def test_once_with_no_broker_answering_exits_1_after_its_summary(tmp_path, frozen_feeds):
    """Its "ok" is the fetch's: a cron job read exit 0 and took a run that sent nothing for a success."""
    feeds = _feeds_file(tmp_path, frozen_feeds)
    env = _env(tmp_path, FINSENT_KAFKA__BOOTSTRAP=f"127.0.0.1:{free_port()}")  # nothing listens there
    proc = _finsent(env, "ingest", "--feeds", str(feeds), "--once")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "wire-markets" in proc.stdout  # the summary first
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert "items left for the next run" in line and "not acknowledged by the sink" in line
    assert "Traceback" not in proc.stderr


def test_loopback_feed_refused_without_the_setting(tmp_path, frozen_feeds):
    cmd = [
        sys.executable,
        "-m",
        "finsent.cli",
        "ingest",
        "--feeds",
        str(_feeds_file(tmp_path, frozen_feeds)),
        "--once",
        "--output",
        str(tmp_path / "o.jsonl"),
    ]
    proc = subprocess.run(
        cmd, env=_env(tmp_path, FINSENT_ALLOW_PRIVATE_FEEDS="0"), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.count("ssrf") == 3


def test_bad_feed_list_is_a_clear_error(tmp_path):
    bad = tmp_path / "f.toml"
    bad.write_text('[[feeds]]\nname = "x"\nurl = "ftp://nope"\n[[feeds]]\nname = "x"\nurl = "http://ok.example/rss"\n')
    with pytest.raises(FeedListError, match=r"feeds\[0\] \(x\): url: Value error, must be an http"):
        load_feeds(bad)
    proc = subprocess.run(
        [sys.executable, "-m", "finsent.cli", "ingest", "--feeds", str(bad), "--once"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "must be an http" in proc.stderr


def _consume(bootstrap: str, topic: str, expected: int, timeout_ms: int = 10000) -> list[NewsItem]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None, consumer_timeout_ms=timeout_ms
    )
    got = []
    for msg in consumer:
        got.append(NewsItem.from_json(msg.value))
        assert msg.key.decode() == got[-1].id
        if len(got) >= expected:
            break
    consumer.close()
    return got


def test_broker_outage_delays_but_never_loses_or_marks(tmp_path, frozen_feeds):
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    topic = f"raw-{uuid.uuid4().hex[:6]}"
    broker = broker_child("127.0.0.1", port, tmp_path / "logs")
    broker.start(lambda: port_open("127.0.0.1", port), 15)
    ensure_topics(bootstrap, [TopicSpec(name=topic, partitions=2)])
    dedup = DedupStore(tmp_path / "dedup.sqlite")
    feed = FeedConfig(name="wire-markets", url=f"{frozen_feeds.url}/feeds/wire-markets")
    poller = Poller(
        [feed], Fetcher(allow_private=True), dedup, KafkaSink(bootstrap, topic, timeout_s=3), Archive(tmp_path / "a")
    )

    async def scenario():
        broker.stop()  # the broker dies before the first poll
        summary = await poller.poll(feed)
        n = len(frozen_feeds.published("wire-markets"))
        assert summary.new == n and summary.published == 0 and len(poller.pending) == n
        assert not any(dedup.check(i).duplicate for i in poller.pending)  # nothing marked as seen
        assert Archive(tmp_path / "a").count() == 0
        broker.start(lambda: port_open("127.0.0.1", port), 15)  # it comes back (memory storage: empty)
        ensure_topics(bootstrap, [TopicSpec(name=topic, partitions=2)])
        summary = await poller.poll(feed)  # same items fetched again: pending first, nothing doubled
        assert summary.published == n and poller.pending == []
        await poller.fetcher.aclose()
        return n

    try:
        n = asyncio.run(scenario())
        got = _consume(bootstrap, topic, n)
        assert len(got) == n and len({g.id for g in got}) == n
        assert Archive(tmp_path / "a").count() == n
    finally:
        broker.stop()
        dedup.close()


STOCKNET_STYLE = """published_at,ticker,tweet_id,lang,text
2014-01-02T14:30:00Z,AAPL,100,en,RT @x: $AAPL and $GOOG fall &amp; tumble http://t.co/x
2014-01-02T14:30:00Z,GOOG,100,en,RT @x: $AAPL and $GOOG fall &amp; tumble http://t.co/x
2014-01-02T15:00:00Z,MSFT,101,en,Microsoft beats
not-a-date,XOM,102,en,broken row
2014-01-03T09:00:00Z,XOM,103,en,
"""


def test_import_merges_repeated_ids_and_reports_bad_rows(tmp_path):
    path = tmp_path / "tweets.csv"
    path.write_text(STOCKNET_STYLE)
    mapping = parse_mapping(["title=text", "published=published_at", "id=tweet_id", "tickers=ticker", "language=lang"])
    report = import_file(path, "csv", mapping, "stocknet", Archive(tmp_path / "a"))
    assert (report.read, report.imported, report.bad) == (5, 2, 2)
    assert any("line 5" in e for e in report.errors) and any("line 6" in e for e in report.errors)
    items = list(Archive(tmp_path / "a").read())
    assert items[0].tickers == ("AAPL", "GOOG") and items[0].title.startswith("RT @x: $AAPL and $GOOG fall & tumble")
    assert items[0].published.isoformat() == "2014-01-02T14:30:00+00:00" and not items[0].published_inferred
    with pytest.raises(ImportFileError, match="title=COLUMN"):
        parse_mapping(["published=x"])


def test_a_repeat_of_an_id_after_its_batch_was_written_still_joins_its_tickers(tmp_path):
    """StockNet lists a tweet once per ticker (one file per ticker): a repeat beyond the import's batch went to
    another part, the archive read one copy, and its ticker was lost while the count said two items."""
    path = tmp_path / "tweets.csv"
    rows = ["tweet_id,published_at,ticker,text", "X1,2014-01-02T14:30:00Z,AAPL,Tech shares slide on rates"]
    rows += [f"F{i},2014-01-02T15:00:00Z,MSFT,filler {i}" for i in range(5)]
    rows += ["X1,2014-01-02T14:30:00Z,GOOG,Tech shares slide on rates"]
    path.write_text("\n".join(rows) + "\n")
    mapping = parse_mapping(["title=text", "published=published_at", "id=tweet_id", "tickers=ticker"])
    report = import_file(path, "csv", mapping, "stocknet", Archive(tmp_path / "a"), batch=3)
    items = {i.title: i for i in Archive(tmp_path / "a").read()}
    assert report.imported == len(items) == 6 and items["Tech shares slide on rates"].tickers == ("AAPL", "GOOG")


@pytest.mark.parametrize(
    ("written", "utc"),
    [
        ("Mon, 05 Jan 2015 15:30:00 PST", "2015-01-05T23:30:00+00:00"),  # after New York's close, not before it
        ("2015-07-06 09:00 CEST", "2015-07-06T07:00:00+00:00"),
        ("2015-01-05 15:30 -0800", "2015-01-05T23:30:00+00:00"),
        ("2015-01-05 15:30", "2015-01-05T15:30:00+00:00"),  # no zone: --timezone (UTC here)
    ],
)
def test_zone_names_in_dates_are_read_not_taken_for_utc(written, utc):
    from finsent.ingest.importer import parse_time

    assert parse_time(written).isoformat() == utc


@pytest.mark.parametrize("host", ["UTC", "America/Chicago", "Asia/Kolkata"])
@pytest.mark.parametrize("written", ["Mon, 05 Jan 2015 15:30:00 XYZT", "2015-01-05 15:30 IST", "2015-01-05 15:30 CST"])
def test_a_zone_name_that_is_unknown_or_ambiguous_is_the_rows_error_on_any_host(written, host, monkeypatch):
    """dateutil reads a name of the host's own zone as that zone (CST on a Chicago machine, IST in India): the same
    file imported differently from one machine to the next."""
    import time

    from finsent.ingest.importer import parse_time

    monkeypatch.setenv("TZ", host)
    time.tzset()
    try:
        with pytest.raises(ValueError, match="time zone"):
            parse_time(written)
        assert parse_time("2015-01-05 15:30 PST").isoformat() == "2015-01-05T23:30:00+00:00"
    finally:
        monkeypatch.undo()
        time.tzset()


TWO_DIGIT_YEARS = """date,ticker,id,text
1/2/68,XOM,200,Exxon shares slide
1/2/14,AAPL,201,Apple shares rise
"""


def test_import_clamps_dates_after_the_import_and_caps_tickers(tmp_path):
    """dateutil reads "1/2/68" as 2068: clamped to the import time (the import is the fetch) and flagged,
    counted in the report; one id repeated over 30 rows (one per ticker) keeps max_tickers_per_item tickers."""
    many = "".join(f"1/3/14,T{i:02d},202,Movers today\n" for i in range(30))
    path = tmp_path / "two-digit.csv"
    path.write_text(TWO_DIGIT_YEARS + many)
    mapping = parse_mapping(["title=text", "published=date", "id=id", "tickers=ticker"])
    imported_at = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    report = import_file(path, "csv", mapping, "old", Archive(tmp_path / "a"), edge=EdgeCheck(imported_at))
    assert (report.read, report.imported, report.bad, report.clamped, report.tickers_capped) == (32, 3, 0, 1, 1)
    items = {i.id: i for i in Archive(tmp_path / "a").read()}
    clamped = next(i for i in items.values() if i.title == "Exxon shares slide")
    assert clamped.published == clamped.fetched == imported_at and clamped.published_clamped is True
    assert not clamped.published_inferred and clamped.tickers == ("XOM",)
    kept = next(i for i in items.values() if i.title == "Apple shares rise")
    assert kept.published == datetime(2014, 1, 2, tzinfo=UTC) and not kept.published_clamped
    movers = next(i for i in items.values() if i.title == "Movers today")
    assert movers.tickers == tuple(f"T{i:02d}" for i in range(20))


def test_import_cli_says_how_many_items_were_clamped(tmp_path):
    path = tmp_path / "two-digit.csv"
    path.write_text(TWO_DIGIT_YEARS)
    proc = _finsent(
        _env(tmp_path),
        "ingest",
        "import",
        str(path),
        "--map",
        "title=text",
        "--map",
        "published=date",
        "--map",
        "id=id",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "imported 2 items" in proc.stdout
    assert "corrected: 1 items dated more than 300 s after the import clamped to the import time" in proc.stdout
    clamped = next(i for i in Archive(tmp_path / "archive").read() if i.published_clamped)
    assert clamped.title == "Exxon shares slide" and abs(clamped.published - datetime.now(UTC)) < timedelta(minutes=5)


def test_import_cli_with_eastern_times_then_refill_to_broker(tmp_path, broker):
    path = tmp_path / "cnbc.csv"
    path.write_text(
        'Headlines,Time,Description\n"Stocks slide","7:51  PM ET Fri, 17 July 2020","Desc"\n'
        '"Oil jumps","10:00  AM ET Mon, 20 July 2020",""\n'
    )
    env = _env(tmp_path)
    proc = _finsent(
        env,
        "ingest",
        "import",
        str(path),
        "--map",
        "title=Headlines",
        "--map",
        "published=Time",
        "--map",
        "summary=Description",
        "--source",
        "cnbc",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "imported 2 items" in proc.stdout
    items = list(Archive(tmp_path / "archive").read())
    assert items[0].published.isoformat() == "2020-07-17T23:51:00+00:00"  # 7:51 PM EDT
    topic = f"raw-{uuid.uuid4().hex[:6]}"
    ensure_topics(broker, [TopicSpec(name=topic, partitions=1)])
    env.update(FINSENT_KAFKA__BOOTSTRAP=broker, FINSENT_TOPICS__RAW__NAME=topic, FINSENT_TOPICS__RAW__PARTITIONS="1")
    proc = _finsent(env, "ingest", "refill", "--since", "2020-07-01")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refilled 2 items" in proc.stdout
    assert [i.title for i in _consume(broker, topic, 2)] == ["Stocks slide", "Oil jumps"]


def _import_cli(tmp_path: Path, path: Path, fmt: str) -> subprocess.CompletedProcess:
    return _finsent(
        _env(tmp_path),
        "ingest",
        "import",
        str(path),
        "--format",
        fmt,
        "--map",
        "title=title",
        "--map",
        "published=published",
    )


def test_import_of_a_csv_with_bad_bytes_and_a_huge_field_keeps_every_good_row(tmp_path):
    """Before: one non-UTF-8 byte (UnicodeDecodeError) or one field over the csv module's limit (_csv.Error)
    ended the import with a traceback and nothing archived."""
    path = tmp_path / "news.csv"
    path.write_bytes(
        b"title,published\n"
        b"Oil falls,2024-05-01T10:00:00Z\n"
        b"Gold \xff rises,2024-05-01T11:00:00Z\n"
        b'"' + b"x" * 200_000 + b'",2024-05-01T11:30:00Z\n'
        b"Bank shares jump,2024-05-01T12:00:00Z\n"
    )
    proc = _import_cli(tmp_path, path, "csv")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "read 4 rows, imported 2 items, 2 bad rows" in proc.stdout
    assert "line 3: not UTF-8" in proc.stderr and "line 4: field larger than" in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: 2 of 4 rows rejected")
    assert [i.title for i in Archive(tmp_path / "archive").read()] == ["Oil falls", "Bank shares jump"]


def test_import_of_jsonl_with_bad_bytes_bad_json_and_non_objects_keeps_every_good_row(tmp_path):
    path = tmp_path / "news.jsonl"
    path.write_bytes(
        b'{"title":"Oil falls","published":"2024-05-01T10:00:00Z"}\n'
        b'{"title":"Gold \xff rises","published":"2024-05-01T11:00:00Z"}\n'
        b"[1,2]\n"
        b'{"title": broken\n'
        b'{"title":"Bank shares jump","published":"2024-05-01T12:00:00Z"}\n'
    )
    proc = _import_cli(tmp_path, path, "jsonl")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "read 5 rows, imported 2 items, 3 bad rows" in proc.stdout
    for line in ("line 2: not UTF-8", "line 3: not a JSON object", "line 4: invalid JSON"):
        assert line in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: 3 of 5 rows rejected")
    assert [i.title for i in Archive(tmp_path / "archive").read()] == ["Oil falls", "Bank shares jump"]


def test_refill_skips_a_corrupt_part_names_it_refills_the_rest_and_fails_at_the_end(tmp_path, broker):
    """Before: one corrupt part file made refill exit 1 with an ArrowInvalid traceback, having sent nothing."""
    archive = Archive(tmp_path / "archive")
    at = datetime(2024, 5, 1, 10, tzinfo=UTC)
    archive.append([news_item("r1", "Oil falls", at=at)])
    archive.append([news_item("r2", "Gold rises", at=at + timedelta(hours=1))])
    bad = tmp_path / "archive" / "day=2024-05-01" / "part-zzzz-corrupt.parquet"
    bad.write_bytes(b"not parquet at all")
    topic = f"raw-{uuid.uuid4().hex[:6]}"
    ensure_topics(broker, [TopicSpec(name=topic, partitions=1)])
    env = _env(
        tmp_path,
        FINSENT_KAFKA__BOOTSTRAP=broker,
        FINSENT_TOPICS__RAW__NAME=topic,
        FINSENT_TOPICS__RAW__PARTITIONS="1",
        FINSENT_LOG_JSON="1",
    )
    proc = _finsent(env, "ingest", "refill", "--since", "2024-05-01")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "refilled 2 items" in proc.stdout
    logged = [json.loads(x) for x in proc.stderr.splitlines() if x.startswith("{")]
    assert [x["path"] for x in logged if x["msg"].startswith("archive part unreadable")] == [str(bad)]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 unreadable archive part skipped") and str(bad) in last, last
    assert sorted(i.title for i in _consume(broker, topic, 2)) == ["Gold rises", "Oil falls"]
