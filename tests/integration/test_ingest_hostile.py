"""Every hostile feed case against a real local HTTP server: the poll survives, the error is counted
and logged with the feed name, and a good feed polled alongside keeps flowing."""

import asyncio
import itertools
import json
import logging
import threading
import time
from pathlib import Path

import pytest

from finsent.ingest.dedup import Deduper
from finsent.ingest.feeds import FeedConfig
from finsent.ingest.fetch import Fetcher, FetchLimits, retry_after_seconds
from finsent.ingest.metrics import IngestMetrics
from finsent.ingest.poller import Poller
from finsent.ingest.sinks import JsonlSink
from finsent.local.feeds import FeedServer


@pytest.fixture(scope="module")
def feeds_server():
    server = FeedServer(burst_at=3600).start()
    yield server
    server.stop()


def _poll(server: FeedServer, case: str, tmp_path: Path, limits=FetchLimits(total_s=3, read_s=2)):
    feeds = [
        FeedConfig(name="hostile", url=f"{server.url}/hostile/{case}"),
        FeedConfig(name="good", url=f"{server.url}/feeds/wire-markets"),
    ]
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
    "redirect-bad": "bad_redirect",  # Location "http://[bad/feed": urlsplit raised ValueError out of the poll
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
    _bad, _, _, _, poller = _poll(feeds_server, "429", tmp_path)
    assert poller.state["hostile"].next_due - time.monotonic() >= 115  # Retry-After: 120


def test_errors_back_off_exponentially(feeds_server, tmp_path):
    feed = FeedConfig(name="f", url=f"{feeds_server.url}/hostile/500", interval=10)
    poller = Poller([feed], Fetcher(allow_private=True), Deduper(), JsonlSink(tmp_path / "o.jsonl"))
    delays = []
    for _ in range(3):
        asyncio.run(poller.poll(feed))
        delays.append(poller.state["f"].next_due - time.monotonic())
    assert (
        delays[0] == pytest.approx(20, abs=1)
        and delays[1] == pytest.approx(40, abs=1)
        and delays[2] == pytest.approx(80, abs=1)
    )


def test_malformed_but_readable_xml_still_yields_entries(feeds_server, tmp_path):
    bad, *_ = _poll(feeds_server, "malformed", tmp_path)
    assert bad.outcome == "ok" and bad.new == 1


@pytest.mark.parametrize(
    ("case", "title"), [("latin1", "Société Générale shares fall"), ("no-charset", "Nestlé profit rises")]
)
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
    assert any(
        r.getMessage() == "feed entries corrected at the edge" and r.feed == "hostile" and r.items_clamped == 1
        for r in caplog.records
    )


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
    assert retry_after_seconds("²") is None and retry_after_seconds("9" * 400) == 1e9  # finite: no "Infinity" in a log


@pytest.mark.parametrize("retry_after", ["9" * 400, "99999999999", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_a_retry_after_beyond_the_backoff_cap_is_capped_not_obeyed_for_ever(tmp_path, caplog, retry_after):
    """A 503 with "Retry-After: 999…9" (inf as a float) scheduled the next poll at inf: that feed was never polled
    again in the process, and the log line said "retry_in_s": Infinity, which is not JSON."""
    from http.server import BaseHTTPRequestHandler

    from finsent.local.feeds import LoopbackServer

    class Busy(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):
            pass

        def do_GET(self):
            self.send_response(503)
            self.send_header("Retry-After", retry_after)
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = LoopbackServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    feed = FeedConfig(name="busy", url=f"http://127.0.0.1:{httpd.server_address[1]}/feed")
    poller = Poller([feed], Fetcher(allow_private=True), Deduper(), JsonlSink(tmp_path / "o.jsonl"))
    poller.backoff_max_s = 900.0

    async def once():
        summary = await poller.poll(feed)
        await poller.fetcher.aclose()
        return summary

    try:
        assert asyncio.run(once()).outcome == "error"
    finally:
        httpd.shutdown()
    wait = poller.state["busy"].next_due - time.monotonic()
    assert 800 < wait <= 900  # the cap, not for ever (and more than the feed's own backoff: the server asked)
    (line,) = [r for r in caplog.records if getattr(r, "retry_in_s", None) is not None]
    assert json.loads(json.dumps(line.retry_in_s, allow_nan=False)) == 900.0


def test_a_feed_failing_from_the_start_has_the_series_its_alerts_watch(tmp_path):
    """FeedStale watched a last-success time that a feed failing from the start never had; FeedErrors counted errors
    in 15 minutes, which the backoff keeps below its threshold. Both series exist from the start now."""
    from http.server import BaseHTTPRequestHandler

    from finsent.local.feeds import LoopbackServer

    class Down(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):
            pass

        def do_GET(self):
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = LoopbackServer(("127.0.0.1", 0), Down)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    feed = FeedConfig(name="down", url=f"http://127.0.0.1:{httpd.server_address[1]}/feed")
    metrics = IngestMetrics()
    before = time.time()
    poller = Poller([feed], Fetcher(allow_private=True), Deduper(), JsonlSink(tmp_path / "o.jsonl"), metrics=metrics)
    sample = metrics.registry.get_sample_value
    assert before <= sample("finsent_feed_last_success_timestamp_seconds", {"feed": "down"}) <= time.time()
    assert sample("finsent_feed_consecutive_failures", {"feed": "down"}) == 0

    async def twice():
        for _ in range(2):
            await poller.poll(feed)
        await poller.fetcher.aclose()

    try:
        asyncio.run(twice())
    finally:
        httpd.shutdown()
    assert sample("finsent_feed_consecutive_failures", {"feed": "down"}) == 2


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
    [
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/feed",
        "http://[::ffff:127.0.0.1]/feed",
        "http://192.168.0.1:8080/rss",
        "http://localhost/rss",
        "http://[::1]/rss",
    ],
)
def test_private_targets_refused_on_every_hop(url):
    """The same check runs on the first URL and on every redirect Location before it is fetched."""
    from finsent.ingest.fetch import _check_host

    refused = asyncio.run(_check_host(url, allow_private=False))
    assert refused is not None and refused[0] == "ssrf"
    assert asyncio.run(_check_host(url, allow_private=True)) is None


# ---------------------------------------------------------------------------------------------- bad input


def _titles(written: list[dict], source: str = "hostile") -> list[str]:
    return [w["title"] for w in written if w["source"] == source]


def test_lone_surrogate_reference_is_replaced_and_the_feed_still_read(feeds_server, tmp_path):
    """&#xD800; made feedparser raise UnicodeEncodeError, which ended the whole run with a traceback."""
    bad, good, _, written, _ = _poll(feeds_server, "surrogate", tmp_path)
    assert (bad.outcome, bad.new) == ("ok", 3), bad.detail
    assert _titles(written) == [
        "Lone \ufffd surrogate in a headline",
        "Out of range \ufffd reference",
        "Oil prices climb",
    ]
    assert good.outcome == "ok" and good.new > 0


@pytest.fixture
def surrogate_raises(monkeypatch):
    """feedparser as it was: a lone surrogate reference raises (any exception will do: none may escape)."""
    import feedparser

    real = feedparser.parse

    def parse(data, *args, **kwargs):
        if b"surrogate" in (data.getvalue() if hasattr(data, "getvalue") else data):
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return real(data, *args, **kwargs)

    monkeypatch.setattr(feedparser, "parse", parse)


def test_an_exception_while_parsing_is_that_feeds_parse_error(feeds_server, tmp_path, caplog, surrogate_raises):
    caplog.set_level(logging.WARNING, logger="finsent.ingest")
    started = time.monotonic()
    bad, good, metrics, written, poller = _poll(feeds_server, "surrogate", tmp_path)
    assert (bad.outcome, bad.error) == ("error", "parse_error") and "UnicodeEncodeError" in bad.detail
    assert _metric(metrics, "finsent_feed_errors_total", {"feed": "hostile", "kind": "parse_error"}) == 1
    assert any(
        getattr(r, "feed", None) == "hostile" and getattr(r, "kind", None) == "parse_error" for r in caplog.records
    )
    assert poller.state["hostile"].next_due - started >= 2 * 300 - 1  # backed off: 2 x interval, not "due now"
    assert good.outcome == "ok" and good.new > 0 and {w["source"] for w in written} == {"good"}


def test_an_exception_while_normalising_is_that_feeds_normalize_error(feeds_server, tmp_path, monkeypatch):
    from finsent.ingest import poller as poller_module

    real = poller_module.normalize_checked

    def normalize_checked(entry, **kw):
        if kw["source"] == "hostile":
            raise TypeError("a bug that only this feed's entries reach")
        return real(entry, **kw)

    monkeypatch.setattr(poller_module, "normalize_checked", normalize_checked)
    bad, good, metrics, written, poller = _poll(feeds_server, "10", tmp_path)
    assert (bad.outcome, bad.error) == ("error", "normalize_error") and "TypeError" in bad.detail
    assert _metric(metrics, "finsent_feed_errors_total", {"feed": "hostile", "kind": "normalize_error"}) == 1
    assert poller.state["hostile"].failures == 1
    assert good.outcome == "ok" and good.new > 0 and {w["source"] for w in written} == {"good"}


class _SinkFailingFor(JsonlSink):
    """A sink with a bug one feed's items reach: ``send`` raises (not one of the sinks' own error paths)."""

    def __init__(self, path: Path, feed: str):
        super().__init__(path)
        self.feed = feed

    async def send(self, items):
        if any(i.source == self.feed for i in items):
            raise RuntimeError(f"sink bug on {self.feed}")
        return await super().send(items)


def _run_forever(poller: Poller, seconds: float, before=None):
    """``before`` (a coroutine function of the poller) runs first, on the same event loop: the fetcher's
    HTTP client belongs to one loop."""

    async def main():
        first = await before(poller) if before else None
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        await poller.run_forever(stop)
        await poller.fetcher.aclose()
        return first

    return asyncio.run(main())


def test_a_crashing_poll_is_counted_backed_off_and_polled_again(feeds_server, tmp_path, caplog):
    """Before: the task died, next_due never moved, and the feed was polled ~twice a second (traceback each
    time) while --once ended with exit 1 and no summary."""
    caplog.set_level(logging.ERROR, logger="finsent.ingest")
    feeds = [
        FeedConfig(name="boom", url=f"{feeds_server.url}/hostile/dates", interval=1),
        FeedConfig(name="good", url=f"{feeds_server.url}/hostile/5", interval=1),
    ]
    metrics = IngestMetrics()
    poller = Poller(
        feeds, Fetcher(allow_private=True), Deduper(), _SinkFailingFor(tmp_path / "o.jsonl", "boom"), metrics=metrics
    )
    hits_before = {}

    async def once_then_all_due(poller):
        summaries = {s.feed: s for s in await poller.run_once()}  # --once: a summary for every feed, no exception
        hits_before.update({p: feeds_server.hits.get(p, 0) for p in ("/hostile/dates", "/hostile/5")})
        poller.state["boom"].next_due = poller.state["good"].next_due = 0.0  # both due now; boom has failed once
        return summaries

    once = _run_forever(poller, 3.5, before=once_then_all_due)
    assert (once["boom"].outcome, once["boom"].error) == ("error", "internal_error") and "sink bug" in once[
        "boom"
    ].detail
    assert once["good"].outcome == "ok" and once["good"].new == 5
    assert any(r.getMessage() == "feed poll crashed" and r.feed == "boom" and r.exc_info for r in caplog.records)
    boom_hits = feeds_server.hits["/hostile/dates"] - hits_before["/hostile/dates"]
    good_hits = feeds_server.hits["/hostile/5"] - hits_before["/hostile/5"]
    assert boom_hits == 1, boom_hits  # then backed off 4 s (2nd failure), not re-polled every loop round
    assert good_hits >= 2
    assert _metric(metrics, "finsent_ingest_poll_crashes_total", {"feed": "boom"}) == 2
    assert _metric(metrics, "finsent_feed_errors_total", {"feed": "boom", "kind": "internal_error"}) == 2
    assert _metric(metrics, "finsent_ingest_poll_crashes_total", {"feed": "good"}) == 0


def test_a_poll_task_that_dies_anyway_is_reaped_counted_and_backed_off(feeds_server, tmp_path, monkeypatch):
    feeds = [
        FeedConfig(name="dies", url=f"{feeds_server.url}/hostile/3", interval=1),
        FeedConfig(name="good", url=f"{feeds_server.url}/hostile/5", interval=1),
    ]
    metrics = IngestMetrics()
    poller = Poller(feeds, Fetcher(allow_private=True), Deduper(), JsonlSink(tmp_path / "o.jsonl"), metrics=metrics)
    real = poller._poll
    calls = []

    async def _poll(feed):
        if feed.name == "dies":
            calls.append(time.monotonic())
            raise asyncio.CancelledError  # not an Exception: passes poll()'s own guard, the task ends cancelled
        return await real(feed)

    monkeypatch.setattr(poller, "_poll", _poll)
    _run_forever(poller, 2.5)
    assert len(calls) == 1  # reaped and backed off 2 s, not restarted on the next round
    assert _metric(metrics, "finsent_ingest_poll_crashes_total", {"feed": "dies"}) >= 1
    assert poller.state["dies"].failures >= 1
    assert _metric(metrics, "finsent_feed_fetches_total", {"feed": "good", "outcome": "ok"}) >= 2


def test_control_and_invisible_characters_are_removed(feeds_server, tmp_path):
    bad, _, _, written, _ = _poll(feeds_server, "controls", tmp_path)
    assert bad.new == 3
    assert _titles(written) == ["Nul and red escape bell", "C1 control\u203a2J here", "Line breaks and tabs"]
    bad, _, _, written, _ = _poll(feeds_server, "bidi", tmp_path / "bidi")
    # the third title is nothing but zero-width/bidi characters and has no summary: empty, so invalid;
    # the fourth is as empty but has a summary, which gives the title as for any empty title
    assert (bad.entries, bad.new, bad.invalid) == (4, 3, 1)
    assert _titles(written) == [
        "Bank gnp.exe results",
        "Zerowidth join and isolate",
        "Invisible title, visible summary.",
    ]


def test_entities_are_unescaped_exactly_once(feeds_server, tmp_path):
    _, _, _, written, _ = _poll(feeds_server, "escaped", tmp_path)
    assert _titles(written) == [
        "&lt;script&gt;alert(1)&lt;/script&gt; double-escaped",  # XML &amp;lt; -> the text "&lt;", no second round
        "alert(2) escaped once",  # the text "<script>…</script>": executable tags never pass, even as plain text
        "Earnings beat & raise",  # RSS title with markup: HTML, its entities unescaped once
    ]
    _, _, _, written, _ = _poll(feeds_server, "atom-html", tmp_path / "atom")
    assert _titles(written) == ["Fed holds &lt;script&gt; rates", "Apple <AAPL.O> &lt;b&gt; text"]


def test_plain_text_titles_keep_their_angle_brackets_and_rics_name_tickers(feeds_server, tmp_path):
    _, _, _, written, _ = _poll(feeds_server, "ric", tmp_path)
    got = {w["title"]: w["tickers"] for w in written if w["source"] == "hostile"}
    assert got == {
        "Apple <AAPL.O> shares rise": ["AAPL"],
        "History of the <blink> tag": [],
        "Results from <RIVN.O> and <BRKa.N> due": ["RIVN", "BRK-A"],
    }


def test_an_overlong_link_drops_the_link_not_the_headline(feeds_server, tmp_path):
    bad, _, metrics, written, _ = _poll(feeds_server, "long-link", tmp_path)
    assert (bad.new, bad.invalid) == (2, 0)
    urls = {w["title"]: w.get("url") for w in written if w["source"] == "hostile"}
    assert urls == {"Headline with a very long link": None, "Headline with a normal link": "http://127.0.0.1/story/2"}
    assert bad.corrected == {"link_dropped": 1}
    assert _metric(metrics, "finsent_ingest_items_corrected_total", {"feed": "hostile", "fix": "link_dropped"}) == 1


@pytest.mark.parametrize("case", ["laughs-utf16", "xxe-utf32", "laughs-late"])
def test_entity_declarations_are_refused_in_any_encoding_and_anywhere(feeds_server, tmp_path, case):
    bad, good, _metrics, written, _ = _poll(feeds_server, case, tmp_path)
    assert (bad.outcome, bad.error) == ("error", "entity_declared"), bad.detail
    assert good.outcome == "ok" and {w["source"] for w in written} == {"good"}


@pytest.mark.parametrize("case", ["utf16le-bom", "utf16be-bom", "utf32le-bom", "utf16le-nobom", "utf16be-nobom"])
def test_utf16_and_utf32_feeds_are_read_even_as_text_xml_without_charset(feeds_server, tmp_path, case):
    bad, _, _, written, _ = _poll(feeds_server, case, tmp_path)
    assert (bad.outcome, bad.new) == ("ok", 2), bad.detail
    assert _titles(written) == ["Oil shares rise", "Caf\u00e9 chain profit \u2191"]


def test_a_huge_feed_is_parsed_off_the_event_loop(feeds_server, tmp_path):
    """feedparser needs seconds for the ~6.5 MiB feed; on the event loop that stalled every other feed's timer."""
    fast_path = "/hostile/4"
    feeds = [
        FeedConfig(name="big", url=f"{feeds_server.url}/hostile/big-slow", interval=1),
        FeedConfig(name="fast", url=f"{feeds_server.url}{fast_path}", interval=1),
    ]
    metrics = IngestMetrics()
    poller = Poller(feeds, Fetcher(allow_private=True), Deduper(), JsonlSink(tmp_path / "o.jsonl"), metrics=metrics)
    feeds_server.big_slow()  # built before the clock starts

    def parsed() -> float:
        return _metric(metrics, "finsent_feed_fetches_total", {"feed": "big", "outcome": "ok"})

    async def main():
        stop = asyncio.Event()

        async def until_big_parsed():
            deadline = time.monotonic() + 90
            while not parsed() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.5)
            stop.set()

        watcher = asyncio.create_task(until_big_parsed())
        await poller.run_forever(stop)
        await watcher
        await poller.fetcher.aclose()

    started = time.monotonic()
    asyncio.run(main())
    took = time.monotonic() - started
    assert parsed() >= 1, took
    hits = [t for t in feeds_server.hit_times[fast_path] if t >= started]
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(hits)]
    # the premise: on the event loop, one parse would have stalled the fast feed this long, longer than its
    # normal gap (interval 1 s + up to 0.5 s of loop tick)
    parse_s = _metric(metrics, "finsent_feed_parse_seconds_sum", {"feed": "big"}) / _metric(
        metrics, "finsent_feed_parse_seconds_count", {"feed": "big"}
    )
    assert parse_s > 2.0, f"the big feed parsed in {parse_s:.1f}s: too fast to show a stall here, make it bigger"
    # a parse on the loop leaves a gap of at least parse_s between two fast polls; measured against this run's
    # own parse time, so a slow or loaded host (longer gaps, longer parse) does not decide it
    assert len(hits) >= 3 and max(gaps) < parse_s, (gaps, parse_s)


def test_a_body_that_is_a_file_name_is_not_read_from_disk(feeds_server, tmp_path):
    """feedparser.parse(bytes) tried the bytes as a local path first: a feed answering "/etc/passwd" (or
    "/dev/zero", which never ends) was read from the ingesting machine."""
    local = tmp_path / "local-secret.rss"
    local.write_text(
        '<?xml version="1.0"?><rss version="2.0"><channel><title>x</title>'
        "<item><title>Read from the ingest host's own disk</title><guid>secret-1</guid></item></channel></rss>"
    )
    feeds_server.extra["local-path"] = (str(local).encode(), "application/rss+xml")
    bad, _good, _, written, _ = _poll(feeds_server, "local-path", tmp_path / "out")
    assert (bad.outcome, bad.error) == ("error", "malformed") and bad.entries == 0
    assert {w["source"] for w in written} == {"good"}


@pytest.mark.parametrize(
    "ip, blocked",
    [
        ("100.100.100.200", True),
        ("100.64.0.1", True),
        ("10.1.2.3", True),
        ("169.254.169.254", True),
        ("127.0.0.1", True),
        ("::ffff:100.64.0.1", True),
        ("2002:a9fe:a9fe::1", True),
        ("64:ff9b::a9fe:a9fe", True),  # NAT64 of 169.254.169.254 (Python calls it global)
        ("64:ff9b::7f00:1", True),
        ("64:ff9b:1::808:808", True),  # local-use NAT64
        ("::127.0.0.1", True),  # deprecated IPv4-compatible (Python calls it global)
        ("::8.8.8.8", True),
        ("64:ff9b::808:808", False),  # NAT64 of a public address: a feed an IPv6-only host reaches that way
        ("fd00::1", True),
        ("198.18.0.1", True),
        ("224.0.0.1", True),
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
    ],
)
def test_feeds_on_addresses_that_are_not_globally_routable_are_refused(ip, blocked):
    from finsent.ingest.fetch import _blocked

    assert _blocked(ip) is blocked
