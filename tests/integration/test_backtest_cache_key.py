"""The backtest's score cache is keyed by the backend that actually scores, not by the setting ("auto"): scores an
earlier version cached under "auto" are not reused for another backend, and the key names the served backend."""

from __future__ import annotations

import logging
import sqlite3
from datetime import UTC, datetime, timedelta

from conftest import make_settings
from factories import news_item

from finsent.backtest.run import CachedScore, ScoreCache, backtest_archive
from finsent.labels import SENTIMENT_LABELS, TOPIC_LABELS
from finsent.model import artifact

T0 = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)


def test_scores_are_cached_under_the_served_backend_and_auto_entries_are_not_reused(tmp_path, tiny_model_dir, caplog):
    settings = make_settings(tmp_path, model={"backend": "auto", "threads": 1})
    items = [news_item(f"n{i}", f"Oil prices fall {i}", at=T0 + timedelta(minutes=i)) for i in range(3)]
    full_name = artifact.load_meta(tiny_model_dir).full_name
    stale = ScoreCache(settings.paths.state_dir / "backtest" / "scores.sqlite")  # what the old key wrote
    even = CachedScore(
        TOPIC_LABELS[0],
        {t: 1 / len(TOPIC_LABELS) for t in TOPIC_LABELS},
        "neutral",
        {s: 1 / len(SENTIMENT_LABELS) for s in SENTIMENT_LABELS},
        full_name,
    )
    stale.put_many(f"{full_name}/auto", {it.id: even for it in items})
    stale.close()

    with caplog.at_level(logging.INFO, logger="finsent"):
        report = backtest_archive(settings, items, tmp_path / "out", tiny_model_dir, batch_size=8)
    served = next(r.backend for r in caplog.records if r.getMessage() == "classifier loaded")
    assert served != "auto" and (report.inferred, report.cached) == (3, 0)  # "auto" scores were not taken for them
    db = sqlite3.connect(settings.paths.state_dir / "backtest" / "scores.sqlite")
    keys = {k for (k,) in db.execute("SELECT DISTINCT model FROM predictions")}
    db.close()
    assert keys == {f"{full_name}/auto", f"{full_name}/{served}"}

    again = backtest_archive(settings, items, tmp_path / "out2", tiny_model_dir, batch_size=8)
    assert (again.inferred, again.cached) == (0, 3)  # the second run finds them under the same, resolved key
