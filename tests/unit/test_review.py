"""The review queue puts first what a correction is worth most on."""

from __future__ import annotations

from datetime import timedelta

from factories import T0, news_item, scored_item, surge_alert

from finsent.records import Evidence
from finsent.web.review import review_queue, uncertainty


def item(i: int, confidence: float):
    return scored_item(
        news_item(f"n{i}", f"headline {i}", at=T0 + timedelta(minutes=i)), "negative", sentiment_confidence=confidence
    )


def evidence(*ids: str) -> tuple[Evidence, ...]:
    return tuple(Evidence(item_id=i, title=i, source="s", published=T0, p_negative=0.9) for i in ids)


def test_least_certain_first_and_headlines_behind_a_firing_alert_before_all():
    items = [item(1, 0.95), item(2, 0.40), item(3, 0.60), item(4, 0.99)]
    firing = surge_alert(alert_id="a1", evidence=evidence("n4"))
    resolved_elsewhere = [
        surge_alert(alert_id="a2", evidence=evidence("n1")),
        surge_alert(alert_id="a2", state="resolved", evidence=evidence("n1")),
    ]
    queue = review_queue(items, [firing, *resolved_elsewhere], limit=10)
    assert [q["item"]["id"] for q in queue] == ["n4", "n2", "n3", "n1"]
    assert queue[0]["behind_alert"] and not any(q["behind_alert"] for q in queue[1:])  # a2 resolved: not behind
    assert queue[1]["margin"] < queue[2]["margin"] < queue[3]["margin"]
    assert len(review_queue(items, [], limit=2)) == 2


def test_margin_and_entropy():
    assert uncertainty({"negative": 0.5, "neutral": 0.5, "positive": 0.0}) == (0.0, 1.0)
    margin, entropy = uncertainty({"negative": 0.9, "neutral": 0.05, "positive": 0.05})
    assert abs(margin - 0.85) < 1e-9 and 0 < entropy < 1


def test_headlines_already_reviewed_leave_the_queue():
    items = [item(1, 0.95), item(2, 0.40), item(3, 0.60)]
    assert [q["item"]["id"] for q in review_queue(items, [], reviewed={"n2"})] == ["n3", "n1"]
