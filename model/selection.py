"""Choose among finished runs on their dev scores alone.

Why: a model chosen on the rows that report it overstates them (the research builds before session 36 were adopted
under "dev and every held-out goal row"). Runs are comparable only on the same dev cuts, so the cuts' settings must
agree, and a run without a news dev slice (``news_dev_fraction``) cannot be set against runs with one. Runs that
trained on different sets are scored on the union of their news dev slices, less any row one of them read
(``DevSlices``), so that a run adding a set competes with the one without it on the same rows. The command scores every
candidate again (``rescored_dev``) rather than trusting the scores each run stored: one scorer for all, whatever code
version trained them (the news dev metric changed in session 36, mid-experiment)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from finsent.errors import ConfigError
from finsent.model import artifact
from finsent.model.data import Example

# The settings that fix a run's dev slices: runs differing in one were scored on different rows. Runs on different
# training sets can still be set side by side: rescored on the union of their news dev slices (``DevSlices``).
DEV_SLICE_KEYS = ("dev_fraction", "news_dev_fraction")


@dataclass(frozen=True)
class Candidate:
    path: Path
    name: str
    dev: dict[str, float]

    @property
    def selection(self) -> float:
        return float(self.dev["selection"])


@dataclass(frozen=True)
class DevSlices:
    """The rows every candidate is scored on: the Twitter dev slice, and the news dev slices of every set any of them
    trained on, less each row one of them read in training (a run that did not name a set never left its dev slice
    out of its other sources). Why the union: a run that adds training sets must still be comparable with one that
    did not, on the same rows, and its new sets' dev slices are rows the other run never saw either. Since that
    favours the run trained on the added sets almost by construction, each candidate is also scored on the rows of
    the sets every candidate trained on (``shared_sets``) and on each set's rows alone, for the table to show."""

    data_dir: Path
    dev_fraction: float
    news_dev_fraction: float
    train_sets: tuple[str, ...]  # the union, in the order first named
    shared_sets: tuple[str, ...]  # the sets every candidate trained on
    runs: tuple[Path, ...]

    @cached_property
    def news_by_set(self) -> dict[str, list[Example]]:
        from finsent.model import corpus
        from finsent.model.data import normalised

        read: set[str] = set()
        for run in self.runs:
            read |= trained_texts(run)
        out = {}
        for name in self.train_sets:
            rows = corpus.news_dev(self.data_dir, [name], self.news_dev_fraction)
            if rows:
                out[name] = [ex for ex in rows if normalised(ex.text) not in read]
        return out

    @property
    def news(self) -> list[Example]:
        return [ex for rows in self.news_by_set.values() for ex in rows]


def _config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "train_config.json"
    if not (model_dir / "meta.json").exists():
        raise ConfigError(f"{model_dir}: not a model directory (no meta.json)")
    if not path.exists():
        raise ConfigError(f"{model_dir}: no train_config.json, so its dev slices are unknown")
    return dict(json.loads(path.read_text()))


def _labelled(set_names: list[str]) -> set[str]:
    from finsent.model import corpus

    return {n for n in set_names if n in corpus.TRAIN_SETS and not corpus.TRAIN_SETS[n].unlabelled}


def trained_texts(model_dir: Path, data_dir: Path | None = None) -> set[str]:
    """The texts (``normalised``) a model's weights have read, in any form: its run's Twitter training part and the
    rows of every set it named, less its own news dev slice (training leaves that out of every source); and all that
    the weights it started from read: a parent it continued (``init_from``, followed the same way, each run less only
    its own slice) or a pre-trained base (every row of the sets it pre-trained on, ``pretrain:*`` in ``meta.json``;
    pre-training never left a news dev slice out). A parent without a ``train_config.json`` counts every row of every
    set its ``meta.json`` names. Not counted: augmentation's rewrites, and the teachers' (``pseudo_from``,
    ``self_train_from``), which only label texts counted here."""
    from finsent.model import corpus
    from finsent.model.data import load_twitter, normalised, twitter_train_rows

    meta = artifact.load_meta(model_dir)
    if not (model_dir / "train_config.json").exists():
        if data_dir is None:
            raise ConfigError(f"{model_dir}: no train_config.json, so what it trained on is unknown")
        twitter = {normalised(ex.text) for ex in twitter_train_rows(data_dir)}
        return twitter | _every_row(meta.training_sets, data_dir)
    config = _config(model_dir)
    data_dir = Path(config["data_dir"])
    own = list(config.get("train_sets", []))
    rows = load_twitter(data_dir, config.get("dev_fraction", 0.1)).train
    for name in own:
        rows += corpus.TRAIN_SETS[name].load(data_dir)
    left_out = {normalised(ex.text) for ex in corpus.news_dev(data_dir, own, config.get("news_dev_fraction", 0.0))}
    texts = {normalised(ex.text) for ex in rows} - left_out
    if config.get("init_from"):
        return texts | trained_texts(Path(config["init_from"]), data_dir)
    return texts | _every_row([n for n in meta.training_sets if n.startswith("pretrain:")], data_dir)


def _every_row(set_names: list[str], data_dir: Path) -> set[str]:
    """Every row (``normalised``) of the named training sets (``pretrain:`` prefixes read as the set), none left out
    for a dev slice; names that are no ``corpus.TRAIN_SETS`` set (the Twitter sets' names) add nothing."""
    from finsent.model import corpus
    from finsent.model.data import normalised

    names = dict.fromkeys(n.removeprefix("pretrain:") for n in set_names)
    return {normalised(ex.text) for n in names if n in corpus.TRAIN_SETS for ex in corpus.TRAIN_SETS[n].load(data_dir)}


def dev_slices(model_dirs: list[Path]) -> DevSlices:
    """The slices ``model_dirs`` are scored on (``DevSlices``); refused when their dev cuts differ (fractions, data
    directory: each run's, resolved from where the command runs, as training resolved it)."""
    if not model_dirs:
        raise ConfigError("name at least one model directory")
    configs = {d: _config(d) for d in model_dirs}
    first = configs[model_dirs[0]]
    for d, config in configs.items():
        changed = sorted(k for k in DEV_SLICE_KEYS if config.get(k) != first.get(k))
        if Path(config.get("data_dir", "")).resolve() != Path(first.get("data_dir", "")).resolve():
            changed.append("data_dir")
        if changed:
            raise ConfigError(f"{d} was scored on other dev slices than {model_dirs[0]} ({', '.join(changed)})")
    sets = dict.fromkeys(n for config in configs.values() for n in config.get("train_sets", []))
    shared = [n for n in sets if all(n in config.get("train_sets", []) for config in configs.values())]
    return DevSlices(
        Path(first.get("data_dir", "")),
        first.get("dev_fraction", 0.1),
        first.get("news_dev_fraction", 0.0),
        tuple(sets),
        tuple(shared),
        tuple(model_dirs),
    )


def stored_dev(model_dir: Path, slices: DevSlices | None = None) -> dict[str, Any]:
    """The dev scores the run stored in its ``meta.json`` (the epoch it kept): only comparable with other runs' when
    it was scored on the same news dev slices, that is trained on the same labelled sets."""
    if slices is not None:
        own = _labelled(_config(model_dir).get("train_sets", []))
        if own != _labelled(list(slices.train_sets)):
            others = sorted(_labelled(list(slices.train_sets)) - own)
            raise ConfigError(
                f"{model_dir} did not train on {', '.join(others)}, so its stored dev score is on other rows: "
                "rescore the runs (without --stored)"
            )
    return dict(artifact.load_meta(model_dir).metrics.get("dev", {}))


def rescored_dev(model_dir: Path, slices: DevSlices | None = None) -> dict[str, Any]:
    """The model's dev scores computed now by the scorer training uses (``train.evaluate``, ``train.with_news``), on
    ``slices`` (by default its own: those its ``train_config.json`` names), read from the training data directory; with
    ``news_rows``, and, where candidates trained on different sets, ``shared_selection`` (the same mean on the rows of
    the sets all of them trained on) and ``news@<set>`` (the news selection score on one set's rows)."""
    import torch

    from finsent.model.data import check_data_dir, load_twitter
    from finsent.model.train import encode, evaluate, news_scores, pooled, with_news

    slices = slices or dev_slices([model_dir])
    config = _config(model_dir)
    check_data_dir(slices.data_dir, "training data directory", "run from the directory the runs were trained in")
    model, tokenizer, meta = artifact.load(model_dir)
    max_length, prefixes = int(config.get("max_length", meta.max_length)), meta.domain_prefixes

    cpu = torch.device("cpu")

    def scored(rows: list[Example]) -> dict[str, Any]:
        return evaluate(model, encode(rows, tokenizer, max_length, prefixes), tokenizer.pad_token_id or 0, cpu, 128)

    by_set = {name: scored(rows) for name, rows in slices.news_by_set.items() if rows}  # the model runs once per row
    result = with_news(
        scored(load_twitter(slices.data_dir, slices.dev_fraction).dev), pooled(list(by_set.values())) or None
    )
    result["news_rows"] = len(slices.news)
    if slices.shared_sets != slices.train_sets:
        for name, news in by_set.items():
            result[f"news@{name}"] = news_scores(news)["news_selection"]
        shared = [by_set[name] for name in slices.shared_sets if name in by_set]
        if shared:
            result["shared_selection"] = (
                result["twitter_selection"] + news_scores(pooled(shared))["news_selection"]
            ) / 2
    return {k: v for k, v in result.items() if not k.startswith("_")}


def choose(
    model_dirs: list[Path], score: Callable[[Path, DevSlices], dict[str, Any]] = stored_dev
) -> tuple[Candidate, list[Candidate]]:
    """(the chosen run, every run best first) by dev ``selection`` only (``score``: stored or ``rescored_dev``, on
    the runs' shared ``dev_slices``); ties go to the first named."""
    slices = dev_slices(model_dirs)
    ranked = [Candidate(d, artifact.load_meta(d).full_name, score(d, slices)) for d in model_dirs]
    missing = [c.name for c in ranked if "news_selection" not in c.dev]
    if missing and slices.train_sets:
        raise ConfigError(f"{', '.join(missing)}: no news dev score (train with news_dev_fraction > 0)")
    ranked.sort(key=lambda c: -c.selection)  # stable: ties keep the order given
    return ranked[0], ranked


def table(ranked: list[Candidate]) -> str:
    keys = (
        "selection",
        "twitter_selection",
        "news_selection",
        "shared_selection",
        "topic_accuracy",
        "sentiment_accuracy",
        "news_sentiment_accuracy",
        "news_topic_accuracy",
        "news_rows",
    )
    per_set = dict.fromkeys(k for c in ranked for k in c.dev if k.startswith("news@"))
    shown = [k for k in (*keys, *per_set) if any(k in c.dev for c in ranked)]
    rows = ["| run | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
    for c in ranked:
        cells = [_cell(c.dev[k]) if k in c.dev else "—" for k in shown]
        rows.append(f"| {c.name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _cell(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4f}"
