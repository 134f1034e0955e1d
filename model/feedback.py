"""Continual learning from analyst corrections, behind a no-regression gate.

Analysts' corrections (``Feedback`` records, appended to a JSON-lines store by the API) are few and
skewed towards the model's mistakes; training on them alone would make the model forget. So the
fine-tune mixes them, repeated ``feedback_weight`` times, with a replay sample of the original
training data, starts from the version in service, and is registered as a new version only if its
dev macro-F1 has not dropped by more than ``max_drop`` against that version's (same dev slice).

The gate table also shows the accuracy on the corrected items themselves, parent against candidate: whether
the corrections took. Those items are in the fine-tune's training mix, so this is not a held-out score; the
dev macro-F1 is what guards generalisation.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from finsent.errors import ConfigError, GateRefused
from finsent.labels import SENTIMENT_INDEX, TOPIC_INDEX
from finsent.model import artifact
from finsent.model.data import IGNORE, Example, load_twitter
from finsent.model.feedback_store import read_store
from finsent.model.train import TrainConfig, encode, evaluate, pick_device, train
from finsent.records import Feedback

log = logging.getLogger("finsent.model.feedback")


def to_examples(records: list[Feedback]) -> list[Example]:
    return [
        Example(
            fb.text,
            topic=TOPIC_INDEX[fb.topic] if fb.topic else IGNORE,
            sentiment=SENTIMENT_INDEX[fb.sentiment] if fb.sentiment else IGNORE,
        )
        for fb in records
    ]


@dataclass
class GateResult:
    registered: bool
    parent_score: float
    candidate_score: float
    max_drop: float
    candidate_dir: Path
    registered_dir: Path | None
    feedback_examples: int
    replay_examples: int
    # accuracy on the corrected items per head ("topic", "sentiment"): {"n", "parent", "candidate"}
    corrected: dict[str, dict[str, float]] | None = None

    def table(self) -> str:
        """The gate as a small table, what ``finsent train --feedback`` prints."""
        rows = [
            ("dev selection (macro-F1)", self.parent_score, self.candidate_score, f"max drop {self.max_drop}"),
            *(
                (f"corrected items, {head} accuracy", c["parent"], c["candidate"], f"n={int(c['n'])}, trained on")
                for head, c in (self.corrected or {}).items()
            ),
        ]
        lines = [f"{'gate':<36} {'parent':>8} {'candidate':>10}"]
        lines += [f"{name:<36} {p:>8.4f} {c:>10.4f}   {note}" for name, p, c, note in rows]
        verdict = f"registered {self.registered_dir}" if self.registered else f"refused (kept in {self.candidate_dir})"
        return "\n".join([*lines, verdict])

    def check(self) -> GateResult:
        """This result when the candidate was registered; ``GateRefused`` (exit 3) naming the scores when not."""
        if not self.registered:
            raise GateRefused(
                f"the feedback gate refused the candidate: dev macro-F1 {self.candidate_score:.4f} against the "
                f"parent's {self.parent_score:.4f} drops more than {self.max_drop}; not registered "
                f"(kept in {self.candidate_dir})"
            )
        return self


def corrected_accuracy(metrics: dict) -> dict[str, tuple[int, float]]:
    """(count, accuracy) per head that the corrected items carry a label for, from ``evaluate``'s output."""
    return {
        head: (len(metrics[f"_{head}_labels"]), metrics[f"{head}_accuracy"])
        for head in ("topic", "sentiment")
        if f"{head}_accuracy" in metrics
    }


def _feedback_records(store: Path) -> tuple[list[Feedback], int]:
    """The store's corrections and its count of bad lines, or the one-line ConfigError (exit 2) of a store that cannot be fine-tuned on:
    missing, unreadable, empty or without one valid line (these once ended the command with a traceback)."""
    try:
        records, bad = read_store(store)
    except FileNotFoundError:
        raise ConfigError(
            f"no feedback store at {store}; --feedback takes the JSON-lines file the API appends corrections to "
            "(paths.feedback_store, by default .state/feedback/feedback.jsonl)"
        ) from None
    except OSError as err:
        raise ConfigError(f"cannot read the feedback store {store}: {err.strerror or err}") from None
    if not records:
        what = f"{bad} bad lines and no valid one" if bad else "no corrections (it is empty)"
        raise ConfigError(f"{store} holds no valid feedback: {what}; nothing to fine-tune on")
    return records, bad


def fine_tune(
    parent_dir: Path,
    store: Path,
    cfg: TrainConfig,
    replay: int = 2000,
    feedback_weight: int = 4,
    max_drop: float = 0.01,
    dev: list[Example] | None = None,
    replay_pool: list[Example] | None = None,
) -> GateResult:
    """Fine-tune ``parent_dir`` on feedback + replay; register under ``cfg.out_dir`` only if the gate passes."""
    records, bad = _feedback_records(store)
    feedback = to_examples(records)
    if dev is None or replay_pool is None:
        splits = load_twitter(Path(cfg.data_dir), cfg.dev_fraction)
        dev = splits.dev if dev is None else dev
        replay_pool = splits.train if replay_pool is None else replay_pool
    rng = random.Random(cfg.seed)
    replayed = rng.sample(replay_pool, min(replay, len(replay_pool)))
    mixed = feedback * feedback_weight + replayed
    rng.shuffle(mixed)

    parent_model, tokenizer, parent_meta = artifact.load(parent_dir)
    device = pick_device(cfg.device)
    dev_data = encode(dev, tokenizer, parent_meta.max_length, parent_meta.domain_prefixes)
    feedback_data = encode(feedback, tokenizer, parent_meta.max_length, parent_meta.domain_prefixes)
    pad = tokenizer.pad_token_id or 0
    parent_model = parent_model.to(device)
    parent_score = evaluate(parent_model, dev_data, pad, device, cfg.eval_batch_size)["selection"]
    parent_corrected = corrected_accuracy(evaluate(parent_model, feedback_data, pad, device, cfg.eval_batch_size))

    version = cfg.version or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    staging = Path(cfg.run_dir) / "feedback-candidates"
    run_cfg = replace(
        cfg,
        version=version,
        init_from=str(parent_dir),
        name=parent_meta.name,
        out_dir=str(staging),
        max_length=parent_meta.max_length,
    )
    candidate_dir = train(run_cfg, examples=mixed, dev=dev, progress=False)
    assert candidate_dir is not None
    candidate_meta = artifact.load_meta(candidate_dir)
    candidate_score = candidate_meta.metrics["dev"]["selection"]
    candidate_model = artifact.load(candidate_dir)[0].to(device)
    candidate_corrected = corrected_accuracy(evaluate(candidate_model, feedback_data, pad, device, cfg.eval_batch_size))
    corrected = {
        head: {"n": n, "parent": acc, "candidate": candidate_corrected[head][1]}
        for head, (n, acc) in parent_corrected.items()
    }
    passed = candidate_score >= parent_score - max_drop
    registered = None
    gate = {
        "parent": parent_meta.full_name,
        "parent_dev_selection": parent_score,
        "candidate_dev_selection": candidate_score,
        "max_drop": max_drop,
        "passed": passed,
        "feedback_examples": len(feedback),
        "replay_examples": len(replayed),
        "feedback_bad_lines": bad,
        "corrected_items_accuracy": corrected,  # on the corrected items (trained on: not held out)
    }
    candidate_meta.metrics["feedback_gate"] = gate
    (candidate_dir / "meta.json").write_text(json.dumps(asdict(candidate_meta), indent=2) + "\n")
    if passed:
        registered = Path(cfg.out_dir) / parent_meta.name / version
        shutil.copytree(candidate_dir, registered)
    log.info("feedback gate", extra={**gate, "registered": str(registered) if registered else None})
    return GateResult(
        passed,
        parent_score,
        candidate_score,
        max_drop,
        candidate_dir,
        registered,
        len(feedback),
        len(replayed),
        corrected,
    )
