"""Choose among finished runs on their dev scores alone.

Why: a model chosen on the rows that report it overstates them (the research builds before session 36 were adopted
under "dev and every held-out goal row"). Runs are comparable only on the same dev slices, so the slices' settings
must agree, and a run without a news dev slice (``news_dev_fraction``) cannot be set against runs with one. The
command scores every candidate again (``rescored_dev``) rather than trusting the scores each run stored: one
scorer for all, whatever code version trained them (the news dev metric changed in session 36, mid-experiment).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finsent.errors import ConfigError
from finsent.model import artifact

# The settings that fix a run's dev slices: runs differing in one were scored on different rows.
DEV_SLICE_KEYS = ("dev_fraction", "news_dev_fraction", "train_sets")


@dataclass(frozen=True)
class Candidate:
    path: Path
    name: str
    dev: dict[str, float]

    @property
    def selection(self) -> float:
        return float(self.dev["selection"])


def stored_dev(model_dir: Path) -> dict[str, Any]:
    """The dev scores the run stored in its ``meta.json`` (the epoch it kept)."""
    return dict(artifact.load_meta(model_dir).metrics.get("dev", {}))


def rescored_dev(model_dir: Path) -> dict[str, Any]:
    """The model's dev scores computed now, on the dev slices its ``train_config.json`` names (read from its
    ``data_dir``), by the scorer training uses (``train.evaluate_dev``)."""
    import torch

    from finsent.model import corpus
    from finsent.model.data import check_data_dir, load_twitter
    from finsent.model.train import encode, evaluate_dev

    config = json.loads((model_dir / "train_config.json").read_text())
    data_dir = Path(config["data_dir"])
    check_data_dir(data_dir, "training data directory", "run from the directory the runs were trained in")
    model, tokenizer, meta = artifact.load(model_dir)
    max_length, prefixes = int(config.get("max_length", meta.max_length)), meta.domain_prefixes
    dev = encode(load_twitter(data_dir, config.get("dev_fraction", 0.1)).dev, tokenizer, max_length, prefixes)
    news = corpus.news_dev(data_dir, config.get("train_sets", []), config.get("news_dev_fraction", 0.0))
    news_data = encode(news, tokenizer, max_length, prefixes) if news else None
    result = evaluate_dev(model, dev, news_data, tokenizer.pad_token_id or 0, torch.device("cpu"), 128)
    return {k: v for k, v in result.items() if not k.startswith("_")}


def candidate(model_dir: Path, score: Callable[[Path], dict[str, Any]] = stored_dev) -> Candidate:
    return Candidate(model_dir, artifact.load_meta(model_dir).full_name, score(model_dir))


def _slices(model_dir: Path) -> dict[str, object]:
    path = model_dir / "train_config.json"
    if not (model_dir / "meta.json").exists():
        raise ConfigError(f"{model_dir}: not a model directory (no meta.json)")
    if not path.exists():
        raise ConfigError(f"{model_dir}: no train_config.json, so its dev slices are unknown")
    config = json.loads(path.read_text())
    return {k: config.get(k) for k in DEV_SLICE_KEYS}


def choose(
    model_dirs: list[Path], score: Callable[[Path], dict[str, Any]] = stored_dev
) -> tuple[Candidate, list[Candidate]]:
    """(the chosen run, every run best first) by dev ``selection`` only (``score``: stored or ``rescored_dev``);
    ties go to the first named."""
    if not model_dirs:
        raise ConfigError("name at least one model directory")
    slices = {d: _slices(d) for d in model_dirs}
    first = slices[model_dirs[0]]
    for d, s in slices.items():
        if s != first:
            changed = sorted(k for k in DEV_SLICE_KEYS if s[k] != first[k])
            raise ConfigError(f"{d} was scored on other dev slices than {model_dirs[0]} ({', '.join(changed)})")
    ranked = [candidate(d, score) for d in model_dirs]
    missing = [c.name for c in ranked if "news_selection" not in c.dev]
    if missing and first["train_sets"]:
        raise ConfigError(f"{', '.join(missing)}: no news dev score (train with news_dev_fraction > 0)")
    ranked.sort(key=lambda c: -c.selection)  # stable: ties keep the order given
    return ranked[0], ranked


def table(ranked: list[Candidate]) -> str:
    keys = (
        "selection",
        "twitter_selection",
        "news_selection",
        "topic_accuracy",
        "sentiment_accuracy",
        "news_sentiment_accuracy",
        "news_topic_accuracy",
    )
    shown = [k for k in keys if any(k in c.dev for c in ranked)]
    rows = ["| run | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
    for c in ranked:
        cells = [f"{c.dev[k]:.4f}" if k in c.dev else "—" for k in shown]
        rows.append(f"| {c.name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
