"""feedparser entry -> NewsItem on real RSS/Atom documents parsed by feedparser."""

from datetime import UTC, datetime

import feedparser
import pytest

from finsent.ingest.normalize import NormalizeError, canonical_url, normalize, normalize_checked, stable_id, strip_html

FETCHED = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)

RSS = """<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Desk wire</title><language>en-us</language>
<item><title>Apple shares &amp; bonds slide after &lt;b&gt;earnings&lt;/b&gt; miss</title>
  <link>https://News.Example.com/a/1?utm_source=x&amp;id=7&amp;fbclid=abc#top</link>
  <guid isPermaLink="false">desk-1</guid>
  <description>&lt;p&gt;Shares of &lt;a href="#"&gt;Apple&lt;/a&gt; fell 5%.&lt;/p&gt;&lt;script&gt;alert(1)&lt;/script&gt;</description>
  <pubDate>Thu, 02 May 2024 13:30:00 +0200</pubDate></item>
<item><title>No date here</title><link>https://news.example.com/a/2</link></item>
<item><title>From the future</title><guid>https://news.example.com/a/3</guid><pubDate>Fri, 01 Jan 2100 00:00:00 GMT</pubDate></item>
<item><title>Epoch zero</title><pubDate>Thu, 01 Jan 1970 00:00:00 GMT</pubDate></item>
<item><description>Only a summary here. Second sentence.</description></item>
<item><link>https://news.example.com/empty</link></item>
</channel></rss>"""

RSS_ONE = """<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Desk wire</title>
<item><title>One</title><guid isPermaLink="false">one-1</guid><pubDate>{pub}</pubDate></item>
</channel></rss>"""

ATOM = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Atom desk</title>
<entry><title type="html">Fed &lt;i&gt;holds&lt;/i&gt; rates</title><id>tag:example.com,2024:1</id>
<link href="https://example.com/fed?ref=home"/><updated>2024-05-02T10:00:00Z</updated>
<summary>NASDAQ:MSFT unaffected</summary></entry></feed>"""


def _entries(doc):
    parsed = feedparser.parse(doc)
    return parsed, parsed.entries


def test_rss_item_normalised():
    parsed, entries = _entries(RSS)
    item = normalize(entries[0], source="desk", fetched=FETCHED, feed_language=parsed.feed.get("language"))
    assert item.title == "Apple shares & bonds slide after earnings miss"
    assert item.summary == "Shares of Apple fell 5%."
    assert item.url == "https://news.example.com/a/1?id=7"
    assert item.published == datetime(2024, 5, 2, 11, 30, tzinfo=UTC) and not item.published_inferred
    assert item.tickers == ("AAPL",) and item.language == "en-us"
    assert item.id == normalize(entries[0], source="desk", fetched=FETCHED).id  # stable


def test_missing_and_implausibly_old_dates_fall_back_to_fetch_time_flagged_inferred():
    _, entries = _entries(RSS)
    for entry in (entries[1], entries[3]):
        item = normalize(entry, source="desk", fetched=FETCHED)
        assert item.published == FETCHED and item.published_inferred, entry.get("title")
        assert not item.published_clamped


def test_a_future_date_is_clamped_to_the_fetch_time_and_flagged_clamped():
    _, entries = _entries(RSS)
    item, fixes = normalize_checked(entries[2], source="desk", fetched=FETCHED)  # dated 2100
    assert item.published == item.fetched == FETCHED
    assert item.published_clamped is True and not item.published_inferred  # the feed gave a date: a wrong one
    assert fixes == ["clamped"]


def test_future_tolerance_is_the_settings_value():
    doc = RSS_ONE.format(pub="Thu, 02 May 2024 12:04:00 GMT")  # 4 min ahead of the fetch: clock skew, kept
    item, fixes = normalize_checked(feedparser.parse(doc).entries[0], source="desk", fetched=FETCHED)
    assert item.published == datetime(2024, 5, 2, 12, 4, tzinfo=UTC) and fixes == [] and not item.published_clamped
    item, fixes = normalize_checked(feedparser.parse(doc).entries[0], source="desk", fetched=FETCHED,
                                    future_tolerance_s=60)
    assert item.published == FETCHED and fixes == ["clamped"]


def test_three_hundred_tickers_are_capped_at_max_tickers_per_item():
    symbols = [f"Q{chr(65 + i // 26)}{chr(65 + i % 26)}" for i in range(300)]  # QAA QAB ... QLN
    assert len(set(symbols)) == 300
    cashtags = " ".join(f"${s}" for s in symbols)
    doc = RSS_ONE.format(pub="Thu, 02 May 2024 11:00:00 GMT").replace(
        "<title>One</title>", f"<title>Movers</title><description>{cashtags}</description>")
    entry = feedparser.parse(doc).entries[0]
    assert normalize_checked(entry, source="desk", fetched=FETCHED, max_tickers=300)[0].tickers == tuple(symbols)
    item, fixes = normalize_checked(entry, source="desk", fetched=FETCHED)
    assert item.tickers == tuple(symbols[:20]) and fixes == ["tickers_capped"]  # settings.windows.max_tickers_per_item
    item, fixes = normalize_checked(entry, source="desk", fetched=FETCHED, max_tickers=5)
    assert item.tickers == tuple(symbols[:5]) and fixes == ["tickers_capped"]


def test_summary_only_entry_gets_a_title_and_empty_entry_is_refused():
    _, entries = _entries(RSS)
    assert normalize(entries[4], source="desk", fetched=FETCHED).title == "Only a summary here."
    with pytest.raises(NormalizeError):
        normalize(entries[5], source="desk", fetched=FETCHED)


def test_atom_entry_and_default_tickers():
    _, entries = _entries(ATOM)
    item = normalize(entries[0], source="atom", fetched=FETCHED, default_tickers=("SPY",), tags=("us",))
    assert item.title == "Fed holds rates" and item.url == "https://example.com/fed"
    assert item.tickers == ("MSFT", "SPY") and item.tags == ("us",)
    assert item.published == datetime(2024, 5, 2, 10, 0, tzinfo=UTC)


def test_ids_prefer_guid_then_link_then_title():
    assert stable_id("a", "g1", None, "t") != stable_id("b", "g1", None, "t")  # opaque guids are per source
    assert stable_id("a", "https://x.com/p?utm_source=1", None, "t") == stable_id("b", "https://x.com/p", None, "u")
    assert stable_id("a", None, "https://x.com/p", "t") == stable_id("a", None, "https://x.com/p", "other")
    assert stable_id("a", None, None, "Hello, World!") == stable_id("a", None, None, "hello world")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("HTTPS://Example.COM:443/x?b=2&a=1&utm_medium=e#frag", "https://example.com/x?a=1&b=2"),
        ("javascript:alert(1)", None),
        ("ftp://example.com/x", None),
        ("", None),
    ],
)
def test_canonical_url(url, expected):
    assert canonical_url(url) == expected


def test_strip_html_drops_scripts_and_unescapes():
    assert strip_html("<p>A&amp;B</p><script>x()</script><br>C") == "A&B C"
