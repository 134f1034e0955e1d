"""Every hostile feed case against a real local HTTP server: the poll survives, the error is counted
and logged with the feed name, and a good feed polled alongside keeps flowing."""

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest

from finsent.ingest.dedup import Deduper
from finsent.ingest.feeds import FeedConfig
from finsent.ingest.fetch import Fetcher, FetchLimits, retry_after_seconds
from finsent.ingest.localfeeds import FeedServer
from finsent.ingest.metrics import IngestMetrics
from finsent.ingest.poller import Poller
from finsent.ingest.sinks import JsonlSink


@pytest.fixture(scope="module")
def feeds_server():
    server = FeedServer(burst_at=3600).start()
    yield server
    server.stop()


def _poll(server: FeedServer, case: str, tmp_path: Path, limits=FetchLimits(total_s=3, read_s=2)):
    feeds = [FeedConfig(name="hostile", url=f"{server.url}/hostile/{case}"),
             FeedConfig(name="good", url=f"{server.url}/feeds/wire-markets")]
    metrics = IngestMetrics()
    out = tmp_path / "out.jsonl"
    poller = Poller(feeds, Fetcher(limits, allow_private=True), Deduper(), JsonlSink(out), metrics=metrics)
    summaries = {s.feed: s for s in asyncio.run(poller.run_once())}
    written = [json.loads(line) for line in out.read_text().splitlines()]
    return summaries["hostile"], summaries["good"], metrics, written, poller


def _metric(metrics: IngestMetrics, name: str, labels: dict) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


ERRORS = {
    "garbage": "malformed",
    "laughs": "entity_declared",
    "xxe": "entity_declared",
    "html": "not_a_feed",
    "404": "http_404",
    "410": "http_410",
    "429": "http_429",
    "500": "http_500",
    "redirect-loop-a": "redirect_loop",
    "redirect-chain": "too_many_redirects",
    "redirect-ftp": "bad_scheme",
    "huge": "too_large",
    "slow": "timeout",
}


@pytest.mark.parametrize(("case", "kind"), sorted(ERRORS.items()))
def test_failing_feed_is_counted_and_good_feed_flows(feeds_server, tmp_path, caplog, case, kind):
    caplog.set_level(logging.WARNING, logger="finsent.ingest")
    bad, good, metrics, written, _ = _poll(feeds_server, case, tmp_path)
    assert (bad.outcome, bad.error) == ("error", kind), bad.detail
    assert _metric(metrics, "finsent_feed_errors_total", {"feed": "hostile", "kind": kind}) == 1
    assert any(r.feed == "hostile" and r.kind == kind for r in caplog.records if hasattr(r, "feed"))
    assert good.outcome == "ok" and good.new > 0
    assert {w["source"] for w in written} == {"good"} and len(written) == good.new


def test_slow_body_is_cut_at_the_total_deadline(feeds_server, tmp_path):
    started = time.monotonic()
    bad, *_ = _poll(feeds_server, "slow", tmp_path, FetchLimits(total_s=2, read_s=5))
    assert bad.error == "timeout" and time.monotonic() - started < 10


def test_429_retry_after_is_honoured(feeds_server, tmp_path):
    bad, _, _, _, poller = _poll(feeds_server, "429", tmp_path)
    assert poller.state["hostile"].next_due - time.monotonic() >= 115  # Retry-After: 120


def test_errors_back_off_exponentially(feeds_server, tmp_path):
    feed = FeedConfig(name="f", url=f"{feeds_server.url}/hostile/500", interval=10)
    poller = Poller([feed], Fetcher(allow_private=True), Deduper(), JsonlSink(tmp_path / "o.jsonl"))
    delays = []
    for _ in range(3):
        asyncio.run(poller.poll(feed))
        delays.append(poller.state["f"].next_due - time.monotonic())
    assert delays[0] == pytest.approx(20, abs=1) and delays[1] == pytest.approx(40, abs=1) and delays[2] == pytest.approx(80, abs=1)


def test_malformed_but_readable_xml_still_yields_entries(feeds_server, tmp_path):
    bad, *_ = _poll(feeds_server, "malformed", tmp_path)
    assert bad.outcome == "ok" and bad.new == 1


@pytest.mark.parametrize(("case", "title"), [("latin1", "Société Générale shares fall"), ("no-charset", "Nestlé profit rises")])
def test_wrong_or_missing_charset_decoded(feeds_server, tmp_path, case, title):
    bad, _, _, written, _ = _poll(feeds_server, case, tmp_path)
    assert bad.new == 1
    assert [w["title"] for w in written if w["source"] == "hostile"] == [title]


def test_entries_without_title_link_or_date(feeds_server, tmp_path):
    bad, *_ = _poll(feeds_server, "no-fields", tmp_path)
    assert (bad.entries, bad.new, bad.invalid) == (3, 2, 1)


def test_future_and_1970_dates_use_fetch_time_flagged(feeds_server, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="finsent.ingest"):
        bad, _, metrics, written, _ = _poll(feeds_server, "dates", tmp_path)
    flagged = {w["title"]: w for w in written if w["source"] == "hostile"}
    assert len(flagged) == 3 and all(w["published"] == w["fetched"] for w in flagged.values())
    future = flagged.pop("From the far future")  # a date the feed gave, too far ahead: clamped, not inferred
    assert future["published_clamped"] is True and not future["published_inferred"]
    assert all(w["published_inferred"] and not w.get("published_clamped") for w in flagged.values())
    assert bad.corrected == {"clamped": 1}
    assert _metric(metrics, "finsent_ingest_items_corrected_total", {"feed": "hostile", "fix": "clamped"}) == 1
    assert _metric(metrics, "finsent_ingest_items_corrected_total", {"feed": "good", "fix": "clamped"}) == 0
    assert any(r.getMessage() == "feed entries corrected at the edge" and r.feed == "hostile" and r.items_clamped == 1
               for r in caplog.records)


def test_an_entry_with_300_tickers_keeps_max_tickers_per_item(feeds_server, tmp_path):
    bad, _, metrics, written, _ = _poll(feeds_server, "ticker-spam", tmp_path)
    (spam,) = [w for w in written if w["source"] == "hostile"]
    assert spam["tickers"] == [f"AAA{chr(65 + i)}" for i in range(20)]  # the first 20 named, in order
    assert bad.corrected == {"tickers_capped": 1}
    assert _metric(metrics, "finsent_ingest_items_corrected_total", {"feed": "hostile", "fix": "tickers_capped"}) == 1


def test_duplicate_guids_with_different_content(feeds_server, tmp_path):
    bad, *_ = _poll(feeds_server, "dup-guids", tmp_path)
    assert (bad.new, bad.duplicate) == (1, 1)  # same guid = same item id: the first version wins, the second is counted


def test_gzip_and_followed_redirect(feeds_server, tmp_path):
    bad, *_ = _poll(feeds_server, "gzip", tmp_path)
    assert bad.outcome == "ok" and bad.entries == 5
    bad, *_ = _poll(feeds_server, "redirect-ok", tmp_path)
    assert bad.outcome == "ok" and bad.entries == 10


def test_ten_thousand_entries(feeds_server, tmp_path):
    started = time.monotonic()
    bad, *_ = _poll(feeds_server, "10000", tmp_path)
    assert bad.entries == 10000 and bad.new + bad.duplicate + bad.invalid == 10000 and bad.new >= 2400
    assert time.monotonic() - started < 60


def test_loopback_refused_unless_allowed(feeds_server):
    result = asyncio.run(Fetcher(allow_private=False).fetch(f"{feeds_server.url}/feeds/wire-markets"))
    assert result.error == "ssrf" and "127.0.0.1" in result.detail


def test_retry_after_http_date():
    from datetime import UTC, datetime

    now = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("Mon, 01 Jan 2024 12:02:00 GMT", now) == 120
    assert retry_after_seconds("30") == 30 and retry_after_seconds("soon") is None


def test_conditional_get_returns_not_modified(tmp_path):
    frozen = FeedServer(rate_per_s=0.0005, burst_at=3600).start()  # nothing new appears between polls
    feed = FeedConfig(name="wm", url=f"{frozen.url}/feeds/wire-markets")
    poller = Poller([feed], Fetcher(allow_private=True), Deduper(), JsonlSink(tmp_path / "o.jsonl"))

    async def twice():
        first = await poller.poll(feed)
        second = await poller.poll(feed)
        await poller.fetcher.aclose()
        return first, second

    first, second = asyncio.run(twice())
    frozen.stop()
    assert first.outcome == "ok" and first.new > 0 and poller.state["wm"].validators.etag
    assert second.outcome == "not_modified" and second.entries == 0
    assert frozen.hits["/feeds/wire-markets"] == 2


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/latest/meta-data", "http://10.1.2.3/feed", "http://[::ffff:127.0.0.1]/feed",
     "http://192.168.0.1:8080/rss", "http://localhost/rss", "http://[::1]/rss"],
)
def test_private_targets_refused_on_every_hop(url):
    """The same check runs on the first URL and on every redirect Location before it is fetched."""
    from finsent.ingest.fetch import _check_host

    refused = asyncio.run(_check_host(url, allow_private=False))
    assert refused is not None and refused[0] == "ssrf"
    assert asyncio.run(_check_host(url, allow_private=True)) is None
