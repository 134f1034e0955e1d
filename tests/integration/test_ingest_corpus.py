"""The hand-made hostile feed corpus (tests/fixtures/hostile-feeds/) through ``finsent ingest --once``, the
real CLI in a child process, by scripts/feed_corpus.py: every feed accounted for, every title clean."""

import importlib.util
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "fixtures" / "hostile-feeds"


def _script():
    spec = importlib.util.spec_from_file_location("feed_corpus", ROOT / "scripts" / "feed_corpus.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


# file -> (outcome, error kind, items written): the corpus is a regression suite, not only a smoke test
EXPECTED = {
    "atom-html-titles.atom": ("ok", "", 4),
    "bidi-overrides.rss": ("ok", "", 3),  # one title is nothing but invisible characters, without a summary
    "billion-laughs-after-64k.rss": ("error", "entity_declared", 0),
    "billion-laughs-utf16.xml": ("error", "entity_declared", 0),
    "billion-laughs.rss": ("error", "entity_declared", 0),
    "control-chars.rss": ("ok", "", 4),
    "double-escaped.rss": ("ok", "", 6),
    "empty-channel.rss": ("ok", "", 0),
    "empty.xml": ("error", "malformed", 0),
    "html-page.html": ("error", "not_a_feed", 0),
    "latin1-mislabelled.rss": ("ok", "", 1),
    "local-file-path.rss": ("error", "malformed", 0),  # the body "/etc/passwd" is not a file name to open
    "lone-surrogates.rss": ("ok", "", 4),
    "long-links.rss": ("ok", "", 2),
    "malformed.rss": ("ok", "", 2),
    "not-xml.bin": ("error", "malformed", 0),
    "ric-brackets.rss": ("ok", "", 4),
    "utf16be-nobom.xml": ("ok", "", 2),
    "utf16le-bom.xml": ("ok", "", 2),
    "utf32le-bom.xml": ("ok", "", 2),
    "xxe.rss": ("error", "entity_declared", 0),
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return _script().run_corpus(CORPUS, tmp_path_factory.mktemp("corpus"))


def test_the_run_exits_0_without_a_traceback(report):
    assert report.returncode == 0, report.stderr[-3000:]
    assert "Traceback" not in report.stderr and "Traceback" not in report.stdout


def test_every_feed_is_accounted_for(report):
    assert sorted(f.file for f in report.feeds.values()) == sorted(EXPECTED)  # a new file needs an expectation
    got = {f.file: (f.outcome, f.error, f.written) for f in report.feeds.values()}
    assert got == EXPECTED
    for f in report.feeds.values():
        assert f.entries == f.new + f.duplicate + f.invalid and f.written == f.sent, f


def test_every_emitted_title_is_clean(report):
    titles = [item["title"] for item in report.items]
    assert len(titles) == sum(n for _, _, n in EXPECTED.values())
    for title in titles:
        assert title and title == title.strip()
        assert not [c for c in title if unicodedata.category(c) in ("Cc", "Cf", "Cs")], repr(title)
        assert "<script" not in title.lower(), title
    assert report.problems == []


def test_what_the_titles_say(report):
    titles = {item["title"] for item in report.items}
    assert {
        "Apple <AAPL.O> shares rise after results",
        "History of the <blink> tag",  # plain text keeps brackets
        "&lt;script&gt;alert(1)&lt;/script&gt; double-escaped",
        "AT&amp;T and S&P 500",  # unescaped once
        "Fed holds rates &lt;script&gt;",
        "Invoice gnp.exe attached to bank results",
        "Lone \ufffd high surrogate",
        "Caf\u00e9 chain profit \u2191 12%",
        "Soci\u00e9t\u00e9 G\u00e9n\u00e9rale shares fall",
        "Headline with a 6000-character link",
    } <= titles
    by_title = {item["title"]: item for item in report.items}
    assert by_title["Apple <AAPL.O> shares rise after results"]["tickers"] == ["AAPL"]
    assert "BRK-A" in by_title["Berkshire <BRKa.N> and Vodafone <VOD.L> move"]["tickers"]  # VOD.L: not a US symbol
    assert by_title["Headline with a 6000-character link"].get("url") is None
    assert by_title["Headline with an ordinary link"]["url"] == "https://news.example.com/story?id=2"


def test_the_script_prints_the_accounting(tmp_path, capsys):
    assert _script().main([str(CORPUS), "--keep", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in EXPECTED) and "no problems" in out
