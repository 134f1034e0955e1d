"""The backtest's score cache (real SQLite in a temporary folder): a rerun must see exactly what the model said."""

from __future__ import annotations

import random
import sqlite3

import pytest

from finsent.backtest.run import ScoreCache
from finsent.records import Prediction

TOPICS = ("Earnings", "Macro", "Stock Movement")
SENTIMENTS = ("negative", "neutral", "positive")


def prediction(rng: random.Random, flag: str | None = None) -> Prediction:
    def probs(labels: tuple[str, ...]) -> dict[str, float]:
        raw = [rng.random() for _ in labels]
        return {label: v / sum(raw) for label, v in zip(labels, raw)}  # floats with all 53 bits in use

    topic_probs, sentiment_probs = probs(TOPICS), probs(SENTIMENTS)
    return Prediction(
        max(topic_probs, key=topic_probs.__getitem__),
        topic_probs,
        max(sentiment_probs, key=sentiment_probs.__getitem__),  # type: ignore[arg-type]
        sentiment_probs,
        "finsent-minilm@test",
        flag,
    )


def test_cached_predictions_come_back_bit_for_bit_per_model_and_only_for_what_was_put(tmp_path):
    rng = random.Random(7)
    scores = {f"id{i}": prediction(rng, "empty" if i == 3 else None) for i in range(1200)}  # > one 500-id query
    cache = ScoreCache(tmp_path / "scores.sqlite")
    cache.put_many("m@1/onnx", scores)
    cache.put_many("m@1/torch", {"id0": prediction(rng)})
    cache.close()

    reopened = ScoreCache(tmp_path / "scores.sqlite")  # the labels come from disk, not from the writer's memory
    got = reopened.get_many("m@1/onnx", [*scores, "never-scored"])
    assert got == scores  # every float, label, flag and model name as put; dict order included
    assert all(list(got[k].topic_probs) == list(TOPICS) for k in got)
    assert reopened.get_many("m@1/torch", ["id0", "id1"]).keys() == {"id0"}
    assert reopened.get_many("m@1/torch", ["id0"])["id0"] != scores["id0"]  # per model key, not shared
    assert reopened.get_many("other", ["id0"]) == {}


def test_a_prediction_with_other_labels_than_the_models_cached_ones_is_refused(tmp_path):
    rng = random.Random(8)
    cache = ScoreCache(tmp_path / "scores.sqlite")
    cache.put_many("m", {"a": prediction(rng)})
    odd = prediction(rng)
    reordered = Prediction(
        odd.topic, dict(reversed(odd.topic_probs.items())), odd.sentiment, odd.sentiment_probs, odd.model
    )
    with pytest.raises(ValueError, match="labels"):
        cache.put_many("m", {"b": reordered})
    assert cache.get_many("m", ["a", "b"]).keys() == {"a"}  # nothing of the refused batch was written


def test_a_cache_of_the_old_json_layout_is_not_misread(tmp_path):
    path = tmp_path / "scores.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE scores (model TEXT NOT NULL, item_id TEXT NOT NULL, score TEXT NOT NULL)")
    old.execute("INSERT INTO scores VALUES ('m', 'a', '{\"topic\": \"Macro\"}')")
    old.commit()
    old.close()
    cache = ScoreCache(path)
    assert cache.get_many("m", ["a"]) == {}  # scored again rather than read in another layout
