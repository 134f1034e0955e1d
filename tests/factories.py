"""Record builders for tests: one place that knows how to make a valid NewsItem, ScoredItem, WindowStat,
SurgeAlert.

Tests keep their own short helpers (``item(i, seconds)``) for their own defaults; those call these, so a
change to a record's schema is fixed here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from finsent.labels import SENTIMENT_LABELS, TOPIC_LABELS
from finsent.records import Evidence, NewsItem, ScoredItem, SurgeAlert, WindowStat

T0 = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)


def news_item(
    id: str = "n1",
    title: str = "Stocks steady",
    *,
    at: datetime = T0,
    fetched: datetime | None = None,
    source: str = "wire",
    **fields,
) -> NewsItem:
    """A NewsItem published (and by default fetched) at ``at`` (or ``published=``); other fields as keywords."""
    published = fields.pop("published", at)
    return NewsItem(id=id, title=title, source=source, published=published, fetched=fetched or at, **fields)


def probabilities(labels: Sequence[str], chosen: str, confidence: float | None) -> dict[str, float]:
    """``chosen`` gets ``confidence``, the others share the rest evenly; ``None``: uniform."""
    if confidence is None:
        return {label: 1 / len(labels) for label in labels}
    rest = round(1 - confidence, 10) / (len(labels) - 1)  # round: 1 - 0.9 is 0.09999999999999998
    return {label: (confidence if label == chosen else rest) for label in labels}


def scored_item(
    item: NewsItem,
    sentiment: str = "neutral",
    topic: str = "Energy | Oil",
    *,
    sentiment_confidence: float | None = 0.9,
    topic_confidence: float | None = 0.9,
    model: str = "m@1",
    scored_at: datetime | None = None,
    latency_s: float = 0.0,
    **fields,
) -> ScoredItem:
    """A ScoredItem for ``item`` whose probabilities agree with its labels (see ``probabilities``)."""
    return ScoredItem(
        item=item,
        topic=topic,
        topic_probs=probabilities(TOPIC_LABELS, topic, topic_confidence),
        sentiment=sentiment,
        sentiment_probs=probabilities(SENTIMENT_LABELS, sentiment, sentiment_confidence),
        model=model,
        scored_at=scored_at or item.published,
        latency_s=latency_s,
        **fields,
    )


def window_stat(
    key: str = "all",
    *,
    at: datetime = T0,
    width_s: int = 300,
    count: int = 10,
    negative: int = 0,
    positive: int = 0,
    **fields,
) -> WindowStat:
    """A WindowStat of ``key`` over ``width_s`` seconds from ``at``: ``count`` headlines, ``negative`` and
    ``positive`` of them as given and the rest neutral; ``mean_score`` follows from them unless given."""
    mean_score = fields.pop("mean_score", (positive - negative) / count if count else 0.0)
    return WindowStat(
        key=key,
        start=at,
        end=at + timedelta(seconds=width_s),
        count=count,
        negative=negative,
        neutral=count - negative - positive,
        positive=positive,
        mean_score=mean_score,
        **fields,
    )


def surge_alert(
    key: str = "topic:Macro", *, state: str = "firing", at: datetime = T0, count: int = 20, negative: int = 15, **fields
) -> SurgeAlert:
    """A SurgeAlert over the 5-minute window starting at ``at``, with one evidence headline."""
    evidence = (Evidence(item_id="n1", title="Fed hikes rates", source="test", published=at, p_negative=0.7),)
    end = at + timedelta(minutes=5)
    base = {
        "alert_id": "a1",
        "key": key,
        "state": state,
        "severity": "warning",
        "window_start": at,
        "window_end": end,
        "count": count,
        "negative": negative,
        "negative_share": negative / count,
        "zscore": 4.2,
        "baseline_mean": 0.2,
        "baseline_std": 0.1,
        "raised_at": end,
        "evidence": evidence,
    }
    return SurgeAlert(**{**base, **fields})
