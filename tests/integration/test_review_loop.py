"""The analyst's correction loop through the real web app (starlette's test client runs it in-process; no broker:
corrections are stored, not published): a headline corrected twice keeps both corrections, the review queue holds
only headlines worth correcting, and a store that cannot be written or read says so instead of a bare 500."""

from datetime import timedelta
from pathlib import Path

import pytest
from conftest import make_settings
from factories import T0, news_item, scored_item
from starlette.testclient import TestClient

from finsent.model.feedback_store import read_store
from finsent.settings import Settings
from finsent.web.api import build_api
from finsent.web.views import StreamViews


class NoModel:  # the loop under test never classifies
    version = "none@test"


def views() -> StreamViews:
    v = StreamViews()
    v.add_item(scored_item(news_item("sure", "Oil major warns of loss", at=T0), "negative", sentiment_confidence=0.95))
    v.add_item(
        scored_item(
            news_item("unsure", "Oil output steady", at=T0 + timedelta(minutes=1)), "negative", sentiment_confidence=0.4
        )
    )
    # a title that was only a URL: flagged, uniform probabilities (the smallest margin of all)
    v.add_item(
        scored_item(
            news_item("url", "https://t.co/xyz", at=T0 + timedelta(minutes=2)),
            "neutral",
            "General News | Opinion",
            sentiment_confidence=None,
            topic_confidence=None,
            flag="empty",
        )
    )
    return v


def client(settings: Settings) -> TestClient:
    return TestClient(
        build_api(settings, NoModel, views(), follow_topics=False),
        base_url="http://127.0.0.1",
        raise_server_exceptions=False,
    )


@pytest.mark.parametrize("first", ["topic", "sentiment"])
def test_two_corrections_of_one_headline_both_reach_the_store_the_stats_and_the_queue(tmp_path, first):
    """The row's button corrects topic only, the review queue sentiment only: the second used to erase the first."""
    settings = make_settings(tmp_path, kafka={"bootstrap": "127.0.0.1:1"})
    bodies = {"topic": {"topic": "Earnings"}, "sentiment": {"sentiment": "positive"}}
    order = [first, "sentiment" if first == "topic" else "topic"]
    with client(settings) as c:
        for who, head in zip(("alice", "bob"), order, strict=True):
            r = c.post("/feedback", json={"item_id": "unsure", "who": who, **bodies[head]})
            assert r.status_code == 201, r.text
        (fb,), bad = read_store(settings.paths.feedback_store)
        assert (fb.topic, fb.sentiment, fb.who, bad) == ("Earnings", "positive", "bob", 0)
        assert (fb.model_topic, fb.model_sentiment) == ("Energy | Oil", "negative")
        stats = c.get("/feedback/stats").json()
        assert stats["topic"]["corrections"] == stats["sentiment"]["corrections"] == 1
        assert "unsure" not in [q["item"]["id"] for q in c.get("/review").json()["items"]]  # sentiment is corrected


def test_a_newer_correction_of_a_head_wins_and_an_older_record_of_the_other_head_stays(tmp_path):
    settings = make_settings(tmp_path, kafka={"bootstrap": "127.0.0.1:1"})
    with client(settings) as c:
        for body in ({"sentiment": "positive"}, {"topic": "Earnings"}, {"sentiment": "neutral"}):
            assert c.post("/feedback", json={"item_id": "sure", "who": "a", **body}).status_code == 201
    (fb,), _ = read_store(settings.paths.feedback_store)
    assert (fb.topic, fb.sentiment) == ("Earnings", "neutral")


def test_the_review_queue_leaves_out_headlines_with_nothing_to_correct(tmp_path):
    settings = make_settings(tmp_path, kafka={"bootstrap": "127.0.0.1:1"})
    with client(settings) as c:
        assert [q["item"]["id"] for q in c.get("/review").json()["items"]] == ["unsure", "sure"]
        r = c.post("/feedback", json={"item_id": "url", "sentiment": "negative", "who": "a"})
        assert r.status_code == 422 and "not classified (empty)" in r.json()["detail"]
    assert not settings.paths.feedback_store.exists()  # a URL is not taught to the model as a headline


def test_a_store_that_cannot_be_written_or_read_is_a_clear_503_not_a_bare_500(tmp_path):
    """/dev/full fails every write with ENOSPC, as a full disk does."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    settings = make_settings(tmp_path, kafka={"bootstrap": "127.0.0.1:1"})
    store = settings.paths.feedback_store
    store.parent.mkdir(parents=True, exist_ok=True)
    store.symlink_to("/dev/full")
    with client(settings) as c:
        r = c.post("/feedback", json={"item_id": "sure", "sentiment": "positive", "who": "a"})
        assert r.status_code == 503 and "correction not saved" in r.json()["detail"]
        assert "No space left on device" in r.json()["detail"]
        store.unlink()
        store.mkdir()  # a folder where the store should be: nothing can be read
        for path in ("/review", "/feedback/stats"):
            r = c.get(path)
            assert r.status_code == 503 and "cannot be read" in r.json()["detail"], (path, r.text)


def test_invisible_names_are_nobody_and_an_unreadable_store_is_a_documented_answer(tmp_path, caplog):
    """A zero-width space or a NUL passed as a name (blanks were refused already); the 503 of /review and
    /feedback/stats was not in the OpenAPI schema; a correction the broker did not take was said nowhere."""
    import logging

    settings = make_settings(tmp_path, kafka={"bootstrap": "127.0.0.1:1"})
    with client(settings) as c, caplog.at_level(logging.WARNING, logger="finsent"):
        for who in ("\u200b", "\x00", " \u200b\u200d "):
            r = c.post("/feedback", json={"item_id": "sure", "sentiment": "positive", "who": who})
            assert r.status_code == 422, (who, r.text)
        paths = c.get("/openapi.json").json()["paths"]
        assert "503" in paths["/review"]["get"]["responses"] and "503" in paths["/feedback/stats"]["get"]["responses"]
        r = c.post("/feedback", json={"item_id": "sure", "sentiment": "positive", "who": "ana"})
        assert r.json() == {"stored": True, "published": False}
    assert any("not sent to the feedback topic" in rec.getMessage() for rec in caplog.records)
