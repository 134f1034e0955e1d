"""The review queue: which recent headlines an analyst's correction is worth most on.

Ranked by the model's uncertainty on sentiment (the margin between its two likeliest calibrated classes,
smallest first; entropy reported beside it), with the headlines behind a currently firing alert first:
those are the ones a wrong label turns into a wrong alert. A pure function of the views, so the ranking is
tested without a server.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from typing import Any

from finsent.records import ScoredItem, SurgeAlert


def firing_evidence(alerts: Iterable[SurgeAlert]) -> set[str]:
    """Item ids in the evidence of alerts that fire now (a firing transition with no resolution after it)."""
    alerts = list(alerts)
    resolved = {a.alert_id for a in alerts if a.state == "resolved"}
    return {e.item_id for a in alerts if a.state == "firing" and a.alert_id not in resolved for e in a.evidence}


def uncertainty(probs: dict[str, float]) -> tuple[float, float]:
    """(margin between the two likeliest classes, entropy in bits)."""
    ranked = sorted(probs.values(), reverse=True)
    margin = ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0)
    entropy = -sum(p * math.log2(p) for p in ranked if p > 0)
    return margin, entropy


def review_queue(
    items: Iterable[ScoredItem],
    alerts: Iterable[SurgeAlert],
    limit: int = 50,
    reviewed: Collection[str] = frozenset(),
) -> list[dict[str, Any]]:
    """The ``limit`` headlines to review first: behind a firing alert first, then by smallest margin. Items in
    ``reviewed`` (already corrected or confirmed) are left out: an analyst's time goes to the next one. So are
    flagged items (no classifiable text, e.g. a title that was only a URL): their uniform fallback probabilities
    have the smallest margin of all, so they led the queue, and there is nothing in them to correct."""
    behind = firing_evidence(alerts)
    ranked = []
    for s in items:
        if s.item.id in reviewed or s.flag is not None:
            continue
        margin, entropy = uncertainty(s.sentiment_probs)
        ranked.append((s.item.id not in behind, margin, -entropy, s.item.id, s))
    ranked.sort(key=lambda r: r[:4])
    return [
        {**s.to_dict(), "margin": round(margin, 4), "entropy": round(-neg_entropy, 4), "behind_alert": not not_behind}
        for not_behind, margin, neg_entropy, _, s in ranked[:limit]
    ]
