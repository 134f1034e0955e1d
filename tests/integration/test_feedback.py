"""Continual learning from analyst feedback on the tiny model: store, mixing, no-regression gate."""

import shutil
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import TINY_SENT_WORDS, tiny_examples

from finsent.errors import GateRefused
from finsent.model import artifact
from finsent.model.data import Example
from finsent.model.feedback import GateResult, fine_tune, to_examples
from finsent.model.feedback_store import append, read_store
from finsent.model.train import TrainConfig
from finsent.records import Feedback

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _store(path, n=12):
    for i in range(n):
        word = TINY_SENT_WORDS[i % 3]
        label = ("negative", "neutral", "positive")[i % 3]
        append(
            path, Feedback(item_id=f"i{i}", text=f"shares {word} after report {i}", sentiment=label, who="ana", at=T0)
        )
    return path


def test_store_keeps_last_correction_and_skips_bad_lines(tmp_path):
    store = tmp_path / "fb.jsonl"
    append(store, Feedback(item_id="a", text="Oil slumps", sentiment="neutral", who="ana", at=T0))
    append(
        store,
        Feedback(
            item_id="a",
            text="Oil slumps",
            sentiment="negative",
            topic="Energy | Oil",
            who="bo",
            at=T0 + timedelta(minutes=1),
        ),
    )
    with store.open("a") as fh:
        fh.write('{"broken": true}\n')
    records, bad = read_store(store)
    assert bad == 1 and len(records) == 1 and records[0].sentiment == "negative"
    (ex,) = to_examples(records)
    assert ex.sentiment == 0 and ex.topic == 6


def _cfg(tmp_path, **kw):
    return TrainConfig(
        out_dir=str(tmp_path / "models"),
        run_dir=str(tmp_path / "runs"),
        epochs=1,
        batch_size=8,
        lr=2e-3,
        head_lr=2e-3,
        mlflow=False,
        checkpoint_every=0,
        **kw,
    )


@pytest.fixture
def parent(tmp_path, tiny_model_dir):
    directory = tmp_path / "models" / "tiny" / "v1"
    shutil.copytree(tiny_model_dir, directory)
    return directory


def test_passing_gate_registers_a_child_version(tmp_path, parent):
    result = fine_tune(
        parent,
        _store(tmp_path / "fb.jsonl"),
        _cfg(tmp_path, version="v2"),
        replay=40,
        max_drop=1.0,
        dev=tiny_examples(24, seed=2),
        replay_pool=tiny_examples(80, seed=1),
        news_dev=[Example(f"Acme {w} guidance", sentiment=s) for w, s in (("raises", 2), ("cuts", 0), ("keeps", 1))]
        * 4,
    )
    assert result.registered and result.registered_dir == tmp_path / "models" / "tiny" / "v2"
    assert artifact.versions(tmp_path / "models", "tiny") == ["v1", "v2"]
    meta = artifact.load_meta(result.registered_dir)
    assert meta.parent == "tiny@v1" and meta.metrics["feedback_gate"]["passed"] is True
    assert result.feedback_examples == 12 and result.replay_examples == 40
    # The gate table: dev selection and the accuracy on the corrected items, parent against candidate.
    gate = meta.metrics["feedback_gate"]["corrected_items_accuracy"]
    assert set(gate) == set(result.corrected) and gate["sentiment"]["n"] > 0
    assert all(0 <= c["parent"] <= 1 and 0 <= c["candidate"] <= 1 for c in gate.values())
    table = result.table().splitlines()
    assert table[0].split() == ["gate", "parent", "candidate"] and table[-1].startswith("registered ")
    sentiment = next(line for line in table if line.startswith("corrected items, sentiment accuracy"))
    assert f"{gate['sentiment']['parent']:.4f}" in sentiment and f"{gate['sentiment']['candidate']:.4f}" in sentiment
    # and the news the parent was taught, when given (FinEntity's dev half by default)
    news = meta.metrics["feedback_gate"]["news_sentiment_accuracy"]
    assert news["n"] == 12 and 0 <= news["parent"] <= 1 and 0 <= news["candidate"] <= 1
    assert any(line.startswith("news (FinEntity dev), sentiment acc.") for line in table)


def test_the_gate_also_holds_the_news_the_parent_was_taught(tmp_path):
    """Replay is Twitter only, so a fine-tune could wash out the news supervision (FinEntity's dev half) while the
    Twitter dev score held: a drop beyond the margin on that news refuses the candidate, and says so."""
    held = GateResult(False, 0.5, 0.5, 0.01, tmp_path, None, 12, 40, None, {"n": 12.0, "parent": 0.9, "candidate": 0.8})
    assert not held.news_held
    with pytest.raises(GateRefused, match=r"news sentiment accuracy 0\.8000 against the parent's 0\.9000"):
        held.check()
    assert replace(held, news={"n": 12.0, "parent": 0.9, "candidate": 0.895}).news_held
    assert replace(held, news=None).news_held  # not measured (no FinEntity, or dev sets passed in)


def test_failing_gate_registers_nothing(tmp_path, parent):
    result = fine_tune(
        parent,
        _store(tmp_path / "fb.jsonl"),
        _cfg(tmp_path, version="v2"),
        replay=40,
        max_drop=-1.0,
        dev=tiny_examples(24, seed=2),
        replay_pool=tiny_examples(80, seed=1),
    )
    assert not result.registered and result.registered_dir is None
    assert artifact.versions(tmp_path / "models", "tiny") == ["v1"]
    with pytest.raises(GateRefused, match="feedback gate refused"):
        result.check()
    assert artifact.load_meta(result.candidate_dir).metrics["feedback_gate"]["passed"] is False


def test_empty_store_is_a_clear_error(tmp_path, parent):
    store = tmp_path / "fb.jsonl"
    store.write_text("not json\n")
    with pytest.raises(ValueError, match="no valid feedback"):
        fine_tune(parent, store, _cfg(tmp_path), dev=[], replay_pool=[])


def test_a_refused_gate_ends_train_feedback_with_the_table_one_error_line_and_exit_3(tmp_path, monkeypatch, capsys):
    """``finsent train --feedback``: the gate table on stdout, then ``GateRefused`` through the CLI's one mapping of
    expected failures (one line, exit 3). The command used to exit 3 by hand, with nothing on stderr."""
    from finsent import cli, logs
    from finsent.model import feedback

    refused = GateResult(False, 0.81, 0.7, 0.01, tmp_path / "candidate", None, 12, 40)
    monkeypatch.setattr(feedback, "fine_tune", lambda *args, **kwargs: refused)  # the gate's verdict, not a run
    monkeypatch.setattr(logs, "setup", lambda *args, **kwargs: None)  # leave pytest's logging alone
    run_config = Path(__file__).resolve().parents[2] / "configs" / "train-minilm.toml"
    argv = ["finsent", "train", "--no-mlflow", "--run-config", str(run_config)]
    argv += ["--feedback", str(tmp_path / "fb.jsonl"), "--model", str(tmp_path / "models" / "tiny" / "v1")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as ended:
        cli.main()
    out, err = capsys.readouterr()
    assert ended.value.code == 3, err
    assert out.splitlines()[-1] == f"refused (kept in {tmp_path / 'candidate'})"
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "feedback gate refused the candidate" in errors[0], err
    assert "0.7000" in errors[0] and "0.8100" in errors[0] and "Traceback" not in err
