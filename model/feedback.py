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

from finsent.errors import ConfigError, GateRefused, MissingData
from finsent.labels import SENTIMENT_INDEX, TOPIC_INDEX
from finsent.model import artifact
from finsent.model.data import IGNORE, Example, finentity, load_twitter
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
    # sentiment accuracy on news the parent was taught (FinEntity's dev half): {"n", "parent", "candidate"}; None
    # when not measured (a data directory without it, or dev sets passed in)
    news: dict[str, float] | None = None

    @property
    def news_held(self) -> bool:
        return news_held(self.news, self.max_drop)

    def table(self) -> str:
        """The gate as a small table, what ``finsent train --feedback`` prints."""
        rows = [
            ("dev selection (macro-F1)", self.parent_score, self.candidate_score, f"max drop {self.max_drop}"),
            *(
                [("news (FinEntity dev), sentiment acc.", self.news["parent"], self.news["candidate"], "max drop too")]
                if self.news
                else []
            ),
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
            if self.candidate_score < self.parent_score - self.max_drop:
                why = f"dev macro-F1 {self.candidate_score:.4f} against the parent's {self.parent_score:.4f}"
            else:
                news = self.news or {}
                why = f"news sentiment accuracy {news.get('candidate', 0):.4f} against the parent's {news.get('parent', 0):.4f}"
            raise GateRefused(
                f"the feedback gate refused the candidate: {why} drops more than {self.max_drop}; not registered "
                f"(kept in {self.candidate_dir})"
            )
        return self


def news_held(news: dict[str, float] | None, max_drop: float) -> bool:
    """The news half of the gate: not measured, or the candidate within ``max_drop`` of the parent."""
    return news is None or news["candidate"] >= news["parent"] - max_drop


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
    news_dev: list[Example] | None = None,
) -> GateResult:
    """Fine-tune ``parent_dir`` on feedback + replay; register under ``cfg.out_dir`` only if the gate passes.

    The gate: dev macro-F1 (Twitter's dev slice) and, when the parent was taught news (FinEntity's dev half in its
    training sets), sentiment accuracy on that news, each within ``max_drop`` of the parent's. Replay draws from
    Twitter train only, so a fine-tune could wash out what the news supervision taught while the Twitter score held."""
    records, bad = _feedback_records(store)
    feedback = to_examples(records)
    parent_meta = artifact.load_meta(parent_dir)
    if dev is None or replay_pool is None:
        splits = load_twitter(Path(cfg.data_dir), cfg.dev_fraction)
        dev = splits.dev if dev is None else dev
        replay_pool = splits.train if replay_pool is None else replay_pool
        if news_dev is None and "finentity-dev" in parent_meta.training_sets:
            try:
                news_dev = finentity(Path(cfg.data_dir), "dev")
            except MissingData as err:
                log.warning("news gate not measured", extra={"error": str(err)})
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
    news_data = encode(news_dev, tokenizer, parent_meta.max_length, parent_meta.domain_prefixes) if news_dev else None
    news_parent = (
        evaluate(parent_model, news_data, pad, device, cfg.eval_batch_size)["sentiment_accuracy"] if news_data else None
    )
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
    news = None
    if news_data is not None and news_parent is not None:
        news_candidate = evaluate(candidate_model, news_data, pad, device, cfg.eval_batch_size)["sentiment_accuracy"]
        news = {"n": float(len(news_data.ids)), "parent": news_parent, "candidate": news_candidate}
    passed = candidate_score >= parent_score - max_drop and news_held(news, max_drop)
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
        "news_sentiment_accuracy": news,  # FinEntity dev, when the parent trained on it (None: not measured)
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
        news,
    )
