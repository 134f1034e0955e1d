"""feedparser entry -> NewsItem on real RSS/Atom documents parsed by feedparser."""

from datetime import UTC, datetime

import feedparser
import pytest

from finsent.ingest.normalize import (
    MAX_URL,
    NormalizeError,
    canonical_url,
    clean_text,
    normalize,
    normalize_checked,
    stable_id,
    strip_html,
)

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
    item, fixes = normalize_checked(
        feedparser.parse(doc).entries[0], source="desk", fetched=FETCHED, future_tolerance_s=60
    )
    assert item.published == FETCHED and fixes == ["clamped"]


def test_three_hundred_tickers_are_capped_at_max_tickers_per_item():
    symbols = [f"Q{chr(65 + i // 26)}{chr(65 + i % 26)}" for i in range(300)]  # QAA QAB ... QLN
    assert len(set(symbols)) == 300
    cashtags = " ".join(f"${s}" for s in symbols)
    doc = RSS_ONE.format(pub="Thu, 02 May 2024 11:00:00 GMT").replace(
        "<title>One</title>", f"<title>Movers</title><description>{cashtags}</description>"
    )
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
        ("http://example.com:99999/x", None),  # urlsplit's port raises: the link goes, not the entry
        ("https://example.com/\u202egnp.exe\x00", "https://example.com/%E2%80%AEgnp.exe%00"),
    ],
)
def test_canonical_url(url, expected):
    assert canonical_url(url) == expected


def test_strip_html_drops_scripts_and_unescapes():
    assert strip_html("<p>A&amp;B</p><script>x()</script><br>C") == "A&B C"


def test_strip_html_unescapes_exactly_once():
    assert strip_html("<b>Q3</b> &amp;lt;script&amp;gt; &amp;amp; more") == "Q3 &lt;script&gt; &amp; more"
    assert strip_html("AT&amp;T &copy; 2024") == "AT&T \u00a9 2024"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Nul\x00 byte and \x1b[1;31mANSI red\x1b[0m and \x1b]0;title\x07 OSC", "Nul byte and ANSI red and OSC"),
        ("C1\u0081 \u009d controls \x7f DEL", "C1 controls DEL"),
        (
            "Bank \u202egnp.exe\u202c \u2066iso\u2069 \u200bzero\u200dwidth\ufeff \u00adsoft",
            "Bank gnp.exe iso zerowidth soft",
        ),
        ("tag\U000e0041\U000e0042 characters", "tag characters"),
        ("line\nbreaks\r\nand\ttabs \u2028 too", "line breaks and tabs too"),
        ("lone \ud800 surrogate", "lone \ufffd surrogate"),
        ("\u200b\u200c\u202e\u2066\ufeff", ""),
        ("Apple <AAPL.O> and the <blink> tag stay", "Apple <AAPL.O> and the <blink> tag stay"),
        ("<script>alert(1)</script> and <SCRIPT src=x> <scr<script>ipt>x</script>", "alert(1) and x"),
        ("<scr\x00ipt>hidden by a NUL</scr\u200bipt>", "hidden by a NUL"),
    ],
)
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean
    assert clean_text(clean) == clean  # idempotent


def test_deeply_nested_script_tags_lose_their_brackets():
    nested = "x"
    for _ in range(10):
        nested = f"<scr{nested}ipt>"
    nested = nested.replace("x", "<script>")
    assert "<script" not in clean_text(nested).lower()


def _one(title_xml: str, extra: str = "") -> object:
    return feedparser.parse(
        RSS_ONE.format(pub="Thu, 02 May 2024 11:00:00 GMT").replace(
            "<title>One</title>", f"<title>{title_xml}</title>{extra}"
        )
    ).entries[0]


def test_title_html_only_when_feedparser_says_html():
    entry = _one("Apple &lt;AAPL.O&gt; shares rise")
    assert entry.title_detail.type == "text/plain"
    item = normalize(entry, source="desk", fetched=FETCHED)
    assert item.title == "Apple <AAPL.O> shares rise" and item.tickers == ("AAPL",)
    entry = _one("Shares &lt;b&gt;jump&lt;/b&gt;")
    assert entry.title_detail.type == "text/html"
    assert normalize(entry, source="desk", fetched=FETCHED).title == "Shares jump"


def test_empty_after_cleaning_is_empty():
    with pytest.raises(NormalizeError):
        normalize(_one("\u200b\u202e&#x200d;"), source="desk", fetched=FETCHED)
    entry = _one("\u200b\u2066", "<description>The summary speaks. More here.</description>")
    assert normalize(entry, source="desk", fetched=FETCHED).title == "The summary speaks."


def test_an_overlong_link_is_dropped_not_the_item():
    link = "https://news.example.com/a?q=" + "x" * MAX_URL
    entry = _one("Long link", f"<link>{link}</link>")
    item, fixes = normalize_checked(entry, source="desk", fetched=FETCHED)
    assert item.title == "Long link" and item.url is None and fixes == ["link_dropped"]
    short, _ = normalize_checked(
        _one("Long link", "<link>https://news.example.com/a</link>"), source="desk", fetched=FETCHED
    )
    assert short.url == "https://news.example.com/a"
    bad_port, fixes = normalize_checked(
        _one("Bad port", "<link>http://news.example.com:99999/a</link>"), source="desk", fetched=FETCHED
    )
    assert bad_port.title == "Bad port" and bad_port.url is None  # was a ValueError: the entry dropped


@pytest.mark.parametrize(
    ("lang", "expected"), [("en-US", "en-us"), ("pt_BR", "pt_br"), ("en\x1b[31m", None), ("<b>en</b>", None)]
)
def test_language_is_a_language_tag_or_nothing(lang, expected):
    entry = {"title": "Headline", "language": lang}
    assert normalize(entry, source="desk", fetched=FETCHED).language == expected


DEFAULT_IGNORABLE_ONLY = {
    "variation selectors": "\ufe0f\ufe0e\ufe0f",
    "combining grapheme joiner": "\u034f\u034f",
    "hangul fillers": "\u3164\u115f\u1160\uffa0",
    "khmer inherent vowels": "\u17b4\u17b5",
    "mongolian free variation selectors": "\u180b\u180c\u180d\u180f",
    "supplementary variation selectors": "\U000e0100\U000e01ef",
    "reserved default ignorables": "\u2065\ufff0\U000e0000\U000e0fff",
    "braille blank": "\u2800\u2800",
    "braille blank and spaces": "\u2800 \u3000 \u2800",
}


@pytest.mark.parametrize("title", DEFAULT_IGNORABLE_ONLY.values(), ids=DEFAULT_IGNORABLE_ONLY.keys())
def test_a_title_of_nothing_visible_is_empty(title):
    """Default_Ignorable code points outside Cc/Cf, and the braille blank, passed as titles before."""
    with pytest.raises(NormalizeError):
        normalize(_one(title), source="desk", fetched=FETCHED)
    entry = _one(title, "<description>The summary speaks. More here.</description>")
    assert normalize(entry, source="desk", fetched=FETCHED).title == "The summary speaks."


def test_every_default_ignorable_code_point_is_removed_and_visible_text_stays():
    regex = pytest.importorskip("regex")  # its Unicode tables: DerivedCoreProperties' Default_Ignorable_Code_Point
    ignorable = regex.compile(r"\p{Default_Ignorable_Code_Point}")
    points = [chr(c) for c in range(0x110000) if ignorable.match(chr(c))]
    assert len(points) > 4000
    assert clean_text("Oil" + "".join(points) + " falls") == "Oil falls"
    assert (
        clean_text("\u2764\ufe0f Oil rallies \U0001f468\u200d\U0001f4bb") == "\u2764 Oil rallies \U0001f468\U0001f4bb"
    )
    assert (
        clean_text("\uc0bc\uc131\uc804\uc790 \uc8fc\uac00 \uc0c1\uc2b9")
        == "\uc0bc\uc131\uc804\uc790 \uc8fc\uac00 \uc0c1\uc2b9"
    )
    assert clean_text("\u2800Braille\u2800blank") == "\u2800Braille\u2800blank"  # kept in text; alone it is empty
