"""Domain tags (``finsent.model.domain.tag``): the one function training and serving read a text through."""

import pytest

from finsent.model.data import Example, domain_of
from finsent.model.domain import check_prefixes, tag

PREFIXES = {"twitter": "tweet |", "news": "headline |"}


def test_a_tagged_model_reads_each_domain_behind_its_word_and_news_when_none_is_named():
    assert tag(PREFIXES, "twitter", "X beats estimates") == "tweet | X beats estimates"
    assert tag(PREFIXES, "news", "X beats estimates") == "headline | X beats estimates"
    assert tag(PREFIXES, None, "X beats estimates") == "headline | X beats estimates"


def test_an_untagged_model_reads_text_unchanged_in_every_domain():
    for domain in (None, "twitter", "news"):
        assert tag({}, domain, "X beats estimates") == "X beats estimates"


def test_unknown_domains_and_incomplete_or_padded_prefixes_are_refused():
    with pytest.raises(ValueError, match="unknown domain"):
        tag(PREFIXES, "reddit", "x")
    with pytest.raises(ValueError, match="exactly"):
        check_prefixes({"news": "headline |"})
    with pytest.raises(ValueError, match="outer spaces"):
        check_prefixes({"twitter": "tweet | ", "news": "headline |"})
    with pytest.raises(ValueError, match="non-empty"):
        check_prefixes({"twitter": " ", "news": "headline |"})
    check_prefixes(PREFIXES)
    check_prefixes({})


def test_a_set_has_one_domain():
    assert domain_of([Example("a", domain="twitter"), Example("b", domain="twitter")]) == "twitter"
    assert domain_of([Example("a")]) == "news"  # every set but Twitter's is news
    with pytest.raises(ValueError, match="mixes domains"):
        domain_of([Example("a", domain="twitter"), Example("b")])
