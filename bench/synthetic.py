"""The synthetic observation stream the windowing benchmarks feed the pure core (one definition for both)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from finsent.labels import TOPIC_LABELS
from finsent.records import Evidence
from finsent.stream.windows import Observation, keys_for


def observations(n: int, late_share: float = 0.0, seed: int = 7) -> list[Observation]:
    """``n`` observations in arrival order; ``late_share`` of them arrive 1–30 min after their event time."""
    rng = random.Random(seed)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    pool = [
        Evidence(item_id=f"e{i}", title=f"headline {i}", source="s", published=t0, p_negative=rng.random())
        for i in range(1000)
    ]
    tickers = [f"T{i:03d}" for i in range(200)]
    sentiments = ("negative", "neutral", "positive")
    arrivals = []
    for i in range(n):
        at = t0 + timedelta(seconds=i * 0.05)
        topic = TOPIC_LABELS[rng.randrange(len(TOPIC_LABELS))]
        tk = (tickers[rng.randrange(200)],) if rng.random() < 0.3 else ()
        s = sentiments[rng.randrange(3)]
        delay = rng.uniform(60, 1800) if rng.random() < late_share else rng.uniform(0, 5)
        arrivals.append(
            (
                at.timestamp() + delay,
                Observation(
                    f"i{i}",
                    at,
                    keys_for(topic, tk),
                    s,
                    {"negative": -0.8, "neutral": 0.0, "positive": 0.8}[s],
                    pool[i % 1000],
                ),
            )
        )
    arrivals.sort(key=lambda a: a[0])
    return [o for _, o in arrivals]
