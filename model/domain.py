"""Per-domain rules: the optional *news bias* stored next to a model, and *domain tags* learnt in training.

**Domain tags.** Twitter's annotators and the news sets' disagree on a convention: a tweet from a news
account saying "X announces a buyback" is labelled neutral, the same words in a news headline set
positive. One head trained on both settles between them and pays on both (the research variant lost
Twitter sentiment as it gained news). A model trained with ``TrainConfig.domain_prefixes`` saw each text
behind a short word naming its domain (``ModelMeta.domain_prefixes``, e.g. ``{"twitter": "tweet |",
"news": "headline |"}``), so it can keep both conventions; serving must add the same word
(``tag``), and, since finsent ingests news, ``domain=None`` reads as ``"news"`` (``SERVED_DOMAIN``). A model
without prefixes sees its text unchanged for every domain.

The shipped model learnt its class priors from tweets (65 % neutral); news headlines are worded
more clearly and the model calls many polar ones neutral. A cheap correction that needs no training
is a per-class offset added to the calibrated sentiment logits, fitted on news data::

    p = softmax(sentiment_logits / T_sentiment + b)        b[neutral] = 0

``b`` is fitted by minimising the NLL on FinEntity's **dev** half only (ODC-BY, allowed for the
default model; ``finsent.model.data.finentity_split``), never on any evaluation set's held-out part.
It is stored as ``news_bias.json`` in the model directory and applied by
``Classifier.predict(texts, domain="news")`` only; the default (``domain=None``) is unchanged.

Fit it, and compare it with the default rule on every news set and on Twitter sentiment (written to
``reports/<name>@<version>/news-bias-candidate.md``); ``--store`` also writes it next to the model::

    python -m finsent.model.domain [--model models/finsent-minilm/<version>] [--data-dir DIR] [--store]

Measured for finsent-minilm@20261122-main (see that report): fitted on FinEntity dev, the offsets move
*towards* neutral (FinEntity is 58 % neutral, more than the model predicts there) and lower the news
score, so no rule is stored for it and the default stays plain argmax.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

NEWS_BIAS_FILE = "news_bias.json"
DOMAINS = (None, "twitter", "news")  # None and "twitter" are the default decision rule
SERVED_DOMAIN = "news"  # the tag a tagged model's text gets when the caller names no domain: finsent ingests news

log = logging.getLogger("finsent.model.domain")


def check_domain(domain: str | None) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; known: None, 'twitter', 'news'")


def check_prefixes(prefixes: dict[str, str]) -> None:
    """A tagged model names a prefix for every domain: a missing one would feed that domain untagged text."""
    if prefixes and set(prefixes) != {"twitter", "news"}:
        raise ValueError(f"domain_prefixes must name exactly 'twitter' and 'news', got {sorted(prefixes)}")
    for domain, prefix in prefixes.items():
        if not prefix.strip() or prefix != prefix.strip():
            raise ValueError(f"domain prefix for {domain!r} must be non-empty words without outer spaces: {prefix!r}")


def tag(prefixes: dict[str, str], domain: str | None, prepared: str) -> str:
    """The text as a model with ``prefixes`` was trained to read it (training and serving both call this)."""
    if not prefixes:
        return prepared
    check_domain(domain)
    return f"{prefixes[domain or SERVED_DOMAIN]} {prepared}"


def load_news_bias(directory: Path, full_name: str, sentiment_labels: list[str]) -> np.ndarray | None:
    """The stored offsets in ``sentiment_labels`` order, or None when the model has none.

    A file fitted for another model (e.g. carried into a fine-tuned copy) is ignored with a warning:
    offsets only make sense for the logits they were fitted on.
    """
    path = Path(directory) / NEWS_BIAS_FILE
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    if raw.get("model") != full_name:
        log.warning(
            "news bias ignored: fitted for another model",
            extra={"path": str(path), "fitted_for": raw.get("model"), "model": full_name},
        )
        return None
    offsets = raw["sentiment_offsets"]
    if sorted(offsets) != sorted(sentiment_labels):
        raise ValueError(f"{path}: offsets for {sorted(offsets)}, model has {sentiment_labels}")
    return np.array([float(offsets[label]) for label in sentiment_labels], dtype=np.float32)


def fit_news_bias(clf, data_dir: Path, logits_fn=None) -> dict:
    """Fit the offsets on FinEntity dev for ``clf``; returns the JSON document (not yet written)."""
    from finsent.model.data import NEU, finentity
    from finsent.model.quality import fit_offsets, sentiment_scores
    from finsent.model.text import prepare

    examples = [(prepare(ex.text), ex.sentiment) for ex in finentity(data_dir, "dev")]
    examples = [(t, y) for t, y in examples if t]
    y = np.array([label for _, label in examples])
    _, logits = (logits_fn or clf.logits)([t for t, _ in examples], "news")
    temperature = clf.meta.temperature_sentiment
    offsets = fit_offsets(logits, y, temperature, reference=NEU)
    labels = list(clf.meta.sentiment_labels)
    before = sentiment_scores(y, (logits / temperature).argmax(1), (0, 1, 2))
    after = sentiment_scores(y, (logits / temperature + offsets).argmax(1), (0, 1, 2))
    return {
        "domain": "news",
        "model": clf.version,
        "sentiment_offsets": {label: round(float(b), 4) for label, b in zip(labels, offsets)},
        "rule": "p = softmax(sentiment_logits / temperature_sentiment + offsets); argmax is the label",
        "fitted_on": {
            "set": "finentity dev half (finsent.model.data.finentity_split, label_consensus, mixed dropped)",
            "n": len(y),
            "licence": "ODC-BY 1.0",
            "objective": "negative log-likelihood, offsets only (temperature kept), L2 1e-3, neutral fixed at 0",
        },
        "dev_before": {k: before[k] for k in ("accuracy", "macro_f1", "neutral_rate")},
        "dev_after": {k: after[k] for k in ("accuracy", "macro_f1", "neutral_rate")},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _scored_sets(clf, data_dir: Path, logits_fn) -> list[tuple[str, np.ndarray, np.ndarray, tuple[int, ...]]]:
    """(name, calibrated sentiment logits, gold, classes) for every news set, Twitter sentiment and FinEntity dev."""
    from finsent.model.data import NEWS_SETS, domain_of, finentity, twitter_sentiment
    from finsent.model.text import prepare

    sets = [(ns.name, ns.load(data_dir), ns.labels) for ns in NEWS_SETS]
    sets += [
        ("twitter-sentiment", twitter_sentiment(data_dir, "valid"), (0, 1, 2)),
        ("finentity-dev (fit set)", finentity(data_dir, "dev"), (0, 1, 2)),
    ]
    out = []
    for name, examples, labels in sets:
        pairs = [(prepare(ex.text), ex.sentiment) for ex in examples]
        pairs = [(t, y) for t, y in pairs if t]
        if not pairs:  # a held-out slice of a small set can be empty: nothing to score (the report skips it too)
            continue
        _, logits = logits_fn([t for t, _ in pairs], domain_of(examples))
        out.append((name, logits / clf.meta.temperature_sentiment, np.array([y for _, y in pairs]), labels))
    return out


def compare(clf, data_dir: Path, offsets: np.ndarray, logits_fn=None, bound_grid: np.ndarray | None = None) -> dict:
    """Default rule vs ``offsets`` on every news set and Twitter sentiment, from the same logits.

    With ``bound_grid``, also the best offsets (negative, positive over the grid; neutral 0) for the
    news score chosen *on the news test sets themselves*: an upper bound for this rule family, for
    scale only — never a candidate, since it is fitted on the held-out data it is scored on.
    """
    from finsent.model.data import NEWS_SETS
    from finsent.model.report import LogitCache, _sentiment_metrics

    sets = _scored_sets(clf, data_dir, logits_fn or LogitCache(clf))
    news_names = {ns.name for ns in NEWS_SETS if ns.scored}  # the report's 7: the held-out slices would count twice
    rows: list[dict[str, Any]] = [
        {
            "set": name,
            "n": len(y),
            "default": _sentiment_metrics(z, y, labels),
            "rule": _sentiment_metrics(z + offsets, y, labels),
        }
        for name, z, y, labels in sets
    ]
    result: dict[str, Any] = {"rows": rows}
    for key in ("default", "rule"):
        result[f"news_score_{key}"] = float(np.mean([r[key]["accuracy"] for r in rows if r["set"] in news_names]))
    if bound_grid is not None:
        news = [(z, y) for name, z, y, _ in sets if name in news_names]
        best = (-1.0, np.zeros(3))
        for b_neg in bound_grid:
            for b_pos in bound_grid:
                b = np.array([b_neg, 0.0, b_pos])
                score = float(np.mean([((z + b).argmax(1) == y).mean() for z, y in news]))
                if score > best[0] + 1e-12:
                    best = (score, b)
        twitter = next((z, y) for name, z, y, _ in sets if name == "twitter-sentiment")
        result["upper_bound"] = {
            "offsets": best[1].tolist(),
            "news_score": best[0],
            "twitter_sentiment_accuracy": float(((twitter[0] + best[1]).argmax(1) == twitter[1]).mean()),
        }
    return result


def render_comparison(doc: dict, comparison: dict) -> str:
    offsets = ", ".join(f"{k} {v:+.3f}" for k, v in doc["sentiment_offsets"].items())
    lines = [
        f"# News decision rule: candidate for {doc['model']}",
        "",
        f"Per-class offsets added to the calibrated sentiment logits (`softmax(logits / T + b)`): {offsets}. Fitted on "
        f"{doc['fitted_on']['set']}, n = {doc['fitted_on']['n']}, {doc['fitted_on']['licence']}; objective: "
        f"{doc['fitted_on']['objective']}. Reproduce: `python -m finsent.model.domain`.",
        "",
        "| set | n | accuracy default → rule | macro-F1 default → rule | neutral rate default → rule | acc. neg/pos only |",
        "|---|---|---|---|---|---|",
    ]
    for r in comparison["rows"]:
        a, b = r["default"], r["rule"]
        restricted = (
            f"{a['accuracy_restricted']:.3f} → {b['accuracy_restricted']:.3f}" if "accuracy_restricted" in a else "—"
        )
        lines.append(
            f"| {r['set']} | {r['n']} | {a['accuracy']:.3f} → {b['accuracy']:.3f} | {a['macro_f1']:.3f} → "
            f"{b['macro_f1']:.3f} | {a['neutral_rate']:.3f} → {b['neutral_rate']:.3f} | {restricted} |"
        )
    lines.append(
        f"| **news score** | | **{comparison['news_score_default']:.3f} → {comparison['news_score_rule']:.3f}** | | | |"
    )
    bound = comparison.get("upper_bound")
    if bound:
        b = bound["offsets"]
        lines += [
            "",
            f"Upper bound of this rule family, for scale only (offsets grid-searched on the news *test* sets "
            f"themselves, so not a candidate): negative {b[0]:+.1f}, positive {b[2]:+.1f} → news score "
            f"{bound['news_score']:.3f}, Twitter sentiment accuracy {bound['twitter_sentiment_accuracy']:.3f}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m finsent.model.domain",
        description="Fit the news decision rule on FinEntity dev, compare it with the default on every news set and "
        "Twitter sentiment; with --store, write news_bias.json into the model directory.",
    )
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped one)")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="default: the settings' paths.data_dir (../shared/data)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where the comparison goes (default: reports/<name>@<version>/news-bias-candidate.md)",
    )
    parser.add_argument("--store", action="store_true", help="write news_bias.json next to the model (opt-in rule)")
    args = parser.parse_args(argv)

    from finsent.errors import DataError
    from finsent.model.classifier import Classifier
    from finsent.model.data import check_data_dir
    from finsent.settings import load

    args.data_dir = args.data_dir or load().paths.data_dir
    try:
        check_data_dir(args.data_dir)
        clf = Classifier.load(args.model, backend="torch", device="cpu")
        from finsent.model.report import LogitCache

        logits = LogitCache(clf)
        doc = fit_news_bias(clf, args.data_dir, logits)
        offsets = np.array([doc["sentiment_offsets"][k] for k in clf.meta.sentiment_labels])
        comparison = compare(clf, args.data_dir, offsets, logits, bound_grid=np.round(np.arange(-1.0, 3.01, 0.1), 2))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    doc["comparison"] = {k: v for k, v in comparison.items() if k != "rows"}
    out = args.out or Path("reports") / clf.version / "news-bias-candidate.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_comparison(doc, comparison))
    out.with_suffix(".json").write_text(json.dumps({**doc, "rows": comparison["rows"]}, indent=2) + "\n")
    print(render_comparison(doc, comparison), end="")
    print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)
    if args.store:
        stored = {k: v for k, v in doc.items() if k != "comparison"}
        (clf.directory / NEWS_BIAS_FILE).write_text(json.dumps(stored, indent=2) + "\n")
        print(f"stored {clf.directory / NEWS_BIAS_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
