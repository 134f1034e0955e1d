"""Choose among finished runs on their dev scores alone.

Why: a model chosen on the rows that report it overstates them (the research builds before session 36 were adopted
under "dev and every held-out goal row"). A run's ``meta.json`` holds the dev scores of the epoch it kept; runs are
comparable only when they were scored on the same dev slices, so the slices' settings must agree, and a run
without a news dev slice (``news_dev_fraction``) cannot be set against runs with one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

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


def candidate(model_dir: Path) -> Candidate:
    meta = artifact.load_meta(model_dir)
    return Candidate(model_dir, meta.full_name, dict(meta.metrics.get("dev", {})))


def _slices(model_dir: Path) -> dict[str, object]:
    path = model_dir / "train_config.json"
    if not (model_dir / "meta.json").exists():
        raise ConfigError(f"{model_dir}: not a model directory (no meta.json)")
    if not path.exists():
        raise ConfigError(f"{model_dir}: no train_config.json, so its dev slices are unknown")
    config = json.loads(path.read_text())
    return {k: config.get(k) for k in DEV_SLICE_KEYS}


def choose(model_dirs: list[Path]) -> tuple[Candidate, list[Candidate]]:
    """(the chosen run, every run best first) by dev ``selection`` only; ties go to the first named."""
    if not model_dirs:
        raise ConfigError("name at least one model directory")
    slices = {d: _slices(d) for d in model_dirs}
    first = slices[model_dirs[0]]
    for d, s in slices.items():
        if s != first:
            changed = sorted(k for k in DEV_SLICE_KEYS if s[k] != first[k])
            raise ConfigError(f"{d} was scored on other dev slices than {model_dirs[0]} ({', '.join(changed)})")
    ranked = [candidate(d) for d in model_dirs]
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
