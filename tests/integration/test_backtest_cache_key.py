"""The backtest's score cache is keyed by the backend that actually scores, not by the setting ("auto"): scores an
earlier version cached under "auto" are not reused for another backend, and the key names the served backend, its
graph, the weights and (static int8) the plan: a model retrained in place or re-planned is scored again."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta

from conftest import make_settings
from factories import news_item

from finsent.backtest.run import CachedScore, ScoreCache, backtest_archive, score_key
from finsent.labels import SENTIMENT_LABELS, TOPIC_LABELS
from finsent.model import artifact, int8_static, onnxbuild

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
    assert keys == {f"{full_name}/auto", score_key(tiny_model_dir, served)}
    assert score_key(tiny_model_dir, served).startswith(f"{full_name}/{served}/")

    again = backtest_archive(settings, items, tmp_path / "out2", tiny_model_dir, batch_size=8)
    assert (again.inferred, again.cached) == (0, 3)  # the second run finds them under the same, resolved key


def _keys(settings) -> set[str]:
    db = sqlite3.connect(settings.paths.state_dir / "backtest" / "scores.sqlite")
    try:
        return {k for (k,) in db.execute("SELECT DISTINCT model FROM predictions")}
    finally:
        db.close()


def test_weights_changed_in_place_are_scored_again_not_served_from_the_cache(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file, save_file

    directory = tmp_path / "tiny" / "v1"
    shutil.copytree(tiny_model_dir, directory, ignore=shutil.ignore_patterns("onnx"))
    settings = make_settings(tmp_path, model={"backend": "onnx", "threads": 1})
    items = [news_item(f"n{i}", f"Oil prices fall {i}", at=T0 + timedelta(minutes=i)) for i in range(3)]
    first = backtest_archive(settings, items, tmp_path / "out", directory, batch_size=8)
    assert (first.inferred, first.cached) == (3, 0)

    weights = load_file(directory / "weights.safetensors")  # retrained in place: same name and version
    name = next(iter(weights))
    weights[name] = weights[name] + 0.01
    save_file(weights, directory / "weights.safetensors", metadata={"format": "pt"})
    again = backtest_archive(settings, items, tmp_path / "out2", directory, batch_size=8)
    assert (again.inferred, again.cached) == (3, 0)  # not the old weights' scores
    assert len(_keys(settings)) == 2


def test_a_new_static_int8_plan_or_recipe_makes_another_key(tmp_path, tiny_model_dir):
    directory = tmp_path / "tiny" / "v1"
    shutil.copytree(tiny_model_dir, directory, ignore=shutil.ignore_patterns("onnx"))
    dynamic = score_key(directory, "onnx-int8")  # no plan, never exported: dynamic per-channel
    assert "/onnx-int8/int8-dynamic-pc/weights:" in dynamic and "plan:" not in dynamic
    plan = int8_static.plan_path(directory)
    plan.write_text(json.dumps({"weights_sha256": onnxbuild.weights_digest(directory), "keep": []}))
    planned = score_key(directory, "onnx-int8")  # a plan now: the static recipe, keyed by the plan too
    assert "/int8-static/" in planned and f"plan:{int8_static.current_plan_digest(directory)[:16]}" in planned
    plan.write_text(json.dumps({"weights_sha256": onnxbuild.weights_digest(directory), "keep": ["MatMul_1"]}))
    assert score_key(directory, "onnx-int8") != planned  # re-planned: the old plan's scores are not reused
    assert "/onnx/fp32/weights:" in score_key(directory, "onnx") and "plan:" not in score_key(directory, "onnx")


def test_a_cache_that_is_not_a_database_is_moved_aside_and_a_reused_out_folder_keeps_nothing_of_the_last_run(
    tmp_path, tiny_model_dir, caplog
):
    """A damaged scores.sqlite stopped every backtest with a sqlite3 traceback; it only holds scores, so they are
    made again. And files of an earlier run in --out (its report, its study) stayed beside the new run's."""
    settings = make_settings(tmp_path, model={"backend": "torch", "threads": 1})
    items = [news_item(f"n{i}", f"Oil prices fall {i}", at=T0 + timedelta(minutes=i)) for i in range(3)]
    cache = settings.paths.state_dir / "backtest" / "scores.sqlite"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"not a database" * 500)
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("<p>the last run's report</p>")
    (out / "eventstudy.json").write_text("{}")
    (out / "notes.txt").write_text("the analyst's own file")
    with caplog.at_level(logging.INFO, logger="finsent"):
        report = backtest_archive(settings, items, out, tiny_model_dir, batch_size=8)
    assert report.inferred == 3
    (line,) = [r for r in caplog.records if "score cache unreadable" in r.getMessage()]
    assert line.levelname == "ERROR" and list(cache.parent.glob("scores.sqlite.corrupt-*"))
    assert not (out / "report.html").exists() and not (out / "eventstudy.json").exists()
    assert (out / "notes.txt").exists() and (out / "run.json").exists()  # only its own outputs go
    again = backtest_archive(settings, items, tmp_path / "out2", tiny_model_dir, batch_size=8)
    assert again.cached == 3  # the fresh cache works
