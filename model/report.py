"""``finsent eval``: the evaluation report analysts and the model card rely on.

Test sets: the Twitter *valid* splits (never used for model selection or calibration; those use a
dev slice of train), Financial PhraseBank's FinBERT test split for the published comparison, and
always the **news-domain sets** of ``finsent.model.data.NEWS_SETS`` (S&P 500 pos/neg, SEntFiN by
headline and by entity, FinEntity's test half, SENTiVENT headlines, PhraseBank 50 % and all-agree).
For each set: classification report, accuracy, macro/weighted F1, confusion matrix, calibration
(ECE and reliability diagram, before and after the temperature fitted on dev), the most confident
errors; sentiment sets also get the neutral rate (share of predictions that are neutral). The
**news score** is the mean accuracy over the news sets (binary sets scored on the 3-way prediction,
so a neutral prediction is wrong; a set the model trained on part of is replaced by the rows that part left
out, ``NewsSet.heldout``); it is reported beside the Twitter scores and logged to MLflow as ``news.score``. When the model stores a news decision rule (``news_bias.json``), every news set and
Twitter sentiment are also scored with it (``news_bias/<set>.*``), from the same logits.

The data directory must exist (else ``MissingData``, one line in the CLI). A news set whose file is
absent is skipped with a warning and the news score is then reported as incomplete (not logged).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import classification_report, confusion_matrix

from finsent.model.classifier import Classifier
from finsent.model.data import (
    NEWS_SETS,
    Example,
    MissingData,
    NewsSet,
    check_data_dir,
    domain_of,
    phrasebank_finbert_test,
    reuters_heldout,
    sentifm_topics_heldout,
    sentivent_topics_heldout,
    twitter_sentiment,
    twitter_topic,
)
from finsent.model.quality import (
    expected_calibration_error,
    reliability_bins,
    restricted_accuracy,
    scores,
    sentiment_scores,
    softmax,
)
from finsent.model.text import prepare

log = logging.getLogger("finsent.model.report")

PUBLISHED: dict[str, list[tuple[str, float, float | None]]] = {
    "twitter-sentiment": [
        ("DistilBERT", 0.859, None),
        ("finbert-tone", 0.884, None),
        ("twitter-roberta", 0.888, None),
        ("twhin-bert-large", 0.890, None),
    ],
    "twitter-topic": [("bert-base", 0.901, None), ("best public fine-tune", 0.911, None)],
    "phrasebank-50-finbert-test": [("FinBERT (in-domain, trained on PhraseBank)", 0.86, 0.84)],
}


NEWS = "news"  # summary key of the news score
QUOTED_RESTRICTED = 5  # most confident errors quoted from a news set with an NC / unknown licence (a handful)
BIAS = "news_bias/"  # summary-key prefix of the results under the stored news decision rule


@dataclass
class SetResult:
    name: str
    head: str
    metrics: dict
    images: list[str]
    labels: tuple[int, ...] = ()  # sentiment classes of the set's gold labels (sentiment sets)


class LogitCache:
    """``Classifier.logits`` computed once per distinct prepared text (the news sets overlap a lot)."""

    def __init__(self, clf: Classifier):
        self.clf = clf
        self.store: dict[tuple[str | None, str], tuple[np.ndarray, np.ndarray]] = {}  # by (domain, text)

    def __call__(self, texts: list[str], domain: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        keys = [(domain, t) for t in texts]  # a domain-tagged model reads the same text differently per domain
        todo = list(dict.fromkeys(k for k in keys if k not in self.store))
        if todo:
            topic, sent = self.clf.logits([t for _, t in todo], domain)
            self.store.update((k, (topic[i], sent[i])) for i, k in enumerate(todo))
        if not texts:
            return np.zeros((0, len(self.clf.meta.topic_labels))), np.zeros((0, len(self.clf.meta.sentiment_labels)))
        return np.stack([self.store[k][0] for k in keys]), np.stack([self.store[k][1] for k in keys])


def _plot_confusion(cm: np.ndarray, labels: list[str], title: str, path: Path) -> None:
    size = max(5, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_reliability(
    before: np.ndarray, after: np.ndarray, labels: np.ndarray, title: str, path: Path, bins: int = 15
) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    min_share = 5 / len(labels)  # plot only bins holding at least 5 examples
    for probs, name in ((before, "raw (T=1)"), (after, "temperature-scaled")):
        points = [
            (conf, acc) for share, conf, acc in reliability_bins(probs, labels, bins) if share >= min_share - 1e-12
        ]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.plot(xs, ys, marker="o", label=f"{name}, ECE {expected_calibration_error(probs, labels):.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sentiment_metrics(probs: np.ndarray, y: np.ndarray, labels: tuple[int, ...]) -> dict:
    out = sentiment_scores(y, probs.argmax(1), labels, n_classes=probs.shape[1])
    if len(labels) < probs.shape[1]:  # binary set: also the argmax over its own classes only
        out["accuracy_restricted"] = restricted_accuracy(probs, y, labels)
    return out


def evaluate_set(
    clf: Classifier,
    name: str,
    head: str,
    examples: list[Example],
    out_dir: Path,
    worst: int = 12,
    labels: tuple[int, ...] | None = None,
    logits_fn=None,
    news_bias: np.ndarray | None = None,
) -> SetResult:
    """Score one set. Sentiment sets: ``labels`` are the classes its gold labels use (default all);
    ``news_bias`` (offsets) adds ``metrics["news_bias"]``, the same logits under the news decision rule."""
    labels_vocab = clf.meta.topic_labels if head == "topic" else clf.meta.sentiment_labels
    temperature = clf.meta.temperature_topic if head == "topic" else clf.meta.temperature_sentiment
    prepared = [(ex, prepare(ex.text)) for ex in examples]
    examples = [ex for ex, text in prepared if text]
    texts = [text for _, text in prepared if text]
    y = np.array([ex.topic if head == "topic" else ex.sentiment for ex in examples])
    topic_logits, sent_logits = (logits_fn or clf.logits)(texts, domain_of(examples))
    logits = topic_logits if head == "topic" else sent_logits
    raw, calibrated = softmax(logits), softmax(logits, temperature)
    pred = calibrated.argmax(1)
    present = sorted(set(y.tolist()) | set(pred.tolist()))
    metrics: dict[str, Any] = scores(y, pred)  # and below: the sentiment scores, per class, the worst errors
    if head == "sentiment":
        labels = tuple(labels or range(len(labels_vocab)))
        metrics.update(_sentiment_metrics(calibrated, y, labels))
        if news_bias is not None:
            metrics["news_bias"] = _sentiment_metrics(softmax(logits / temperature + news_bias), y, labels)
    metrics.update(
        n=len(y),
        ece_raw=expected_calibration_error(raw, y),
        ece_calibrated=expected_calibration_error(calibrated, y),
        temperature=temperature,
        per_class=classification_report(
            y, pred, labels=present, target_names=[labels_vocab[i] for i in present], output_dict=True, zero_division=0
        ),
    )
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-calibrated[wrong, pred[wrong]])][:worst]
    metrics["worst_errors"] = [
        {
            "text": examples[i].text,
            "true": labels_vocab[y[i]],
            "predicted": labels_vocab[pred[i]],
            "confidence": round(float(calibrated[i, pred[i]]), 3),
        }
        for i in wrong
    ]
    cm_path = out_dir / f"{name}-confusion.png"
    _plot_confusion(
        confusion_matrix(y, pred, labels=range(len(labels_vocab))), list(labels_vocab), f"{name} ({head})", cm_path
    )
    rel_path = out_dir / f"{name}-reliability.png"
    _plot_reliability(raw, calibrated, y, f"{name}: reliability", rel_path)
    log.info("evaluated", extra={"set": name, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]})
    return SetResult(name, head, metrics, [cm_path.name, rel_path.name], tuple(labels or ()))


def sample(examples: list[Example], limit: int) -> list[Example]:
    """At most ``limit`` rows spread evenly over the set (0: all). The first N would do for a quick look if the files
    were shuffled; several are sorted by label, so the first N were often one class and their macro-F1 meaningless."""
    if not limit or len(examples) <= limit:
        return examples
    return [examples[i * len(examples) // limit] for i in range(limit)]


def held_out_stand_ins(training_sets: list[str]) -> dict[str, str]:
    """{scored news set: the result that replaces it in the news score} for a model that trained on part of it
    (``meta.training_sets``): the rows its training part left out. Without this the research variant's news score
    averaged whole sets it had trained four fifths of (0.893 for the adopted build), beside Twitter test scores."""
    trained = set(training_sets)
    return {ns.name: ns.heldout for ns in NEWS_SETS if ns.scored and ns.trained_on in trained}


@dataclass
class NewsSummary:
    """The news score: mean accuracy over the news sets (each set a model trained on replaced by its held-out part,
    ``stand_ins``), None while any set is missing."""

    sets: list[str]  # the results averaged, stand-ins in their sets' places
    stand_ins: dict[str, str]  # scored set -> the held-out result in its place
    missing: dict[str, str]  # set name -> missing path
    score: float | None
    score_news_bias: float | None
    offsets: dict[str, float] | None

    def as_dict(self) -> dict:
        return {
            "score": self.score,
            "score_news_bias": self.score_news_bias,
            "sets": self.sets,
            "held_out_stand_ins": self.stand_ins,
            "missing": self.missing,
            "news_bias_offsets": self.offsets,
        }


def run(clf: Classifier, data_dir: Path, out_dir: Path, limit: int = 0) -> dict:
    check_data_dir(data_dir)
    sets: list[tuple[str, str, list[Example]]] = [
        ("twitter-sentiment", "sentiment", twitter_sentiment(data_dir, "valid")),
        ("twitter-topic", "topic", twitter_topic(data_dir, "valid")),
    ]
    try:
        sets.append(("phrasebank-50-finbert-test", "sentiment", phrasebank_finbert_test(data_dir)))
    except MissingData as err:
        log.warning("phrasebank FinBERT test split skipped", extra={"error": str(err)})
    # topic on news: Reuters-21578 titles whose codes map to one topic, SENTiVENT and SentiFM sentences whose event
    # types do; each on its held-out 20 % (the research variant trains on the rest), both variants alike
    for name, load in (
        ("reuters-topics-heldout", reuters_heldout),
        ("sentivent-topics-heldout", sentivent_topics_heldout),
        ("sentifm-topics-heldout", sentifm_topics_heldout),
    ):
        try:
            sets.append((name, "topic", load(data_dir)))
        except MissingData as err:
            log.warning("topic-on-news set skipped", extra={"set": name, "error": str(err)})
    news_sets: list[tuple[NewsSet, list[Example]]] = []
    missing: dict[str, str] = {}
    for news_set in NEWS_SETS:
        try:
            news_sets.append((news_set, news_set.load(data_dir)))
        except MissingData as err:
            missing[news_set.name] = str(err.path)
            log.warning(
                "news set missing: the news score will be incomplete",
                extra={"set": news_set.name, "path": str(err.path)},
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    logits = LogitCache(clf)
    bias = clf.news_bias
    results = [
        evaluate_set(
            clf,
            name,
            head,
            sample(ex, limit),
            out_dir,
            logits_fn=logits,
            # PhraseBank's FinBERT test split stands in for PhraseBank 50 % in the news score of a model trained on the
            # rest (``NewsSet.heldout``), so it is scored under both decision rules too
            news_bias=bias if name in ("twitter-sentiment", "phrasebank-50-finbert-test") else None,
        )
        for name, head, ex in sets
        if ex
    ]
    news_results = [
        evaluate_set(
            clf,
            ns.name,
            "sentiment",
            sample(ex, limit),
            out_dir,
            labels=ns.labels,
            logits_fn=logits,
            news_bias=bias,
            worst=12 if ns.commercial else QUOTED_RESTRICTED,
        )
        for ns, ex in news_sets
        if ex  # a held-out slice of a tiny set can be empty: nothing to report
    ]
    stand_ins = held_out_stand_ins(clf.meta.training_sets)
    by_name = {r.name: r for r in results + news_results}
    scored = [stand_ins.get(ns.name, ns.name) for ns in NEWS_SETS if ns.scored]
    in_score = [by_name[name] for name in scored if name in by_name]
    complete = not missing and len(in_score) == len(scored)
    news = NewsSummary(
        sets=[r.name for r in in_score],
        stand_ins=stand_ins,
        missing=missing,
        score=float(np.mean([r.metrics["accuracy"] for r in in_score])) if complete else None,
        score_news_bias=(
            float(np.mean([r.metrics["news_bias"]["accuracy"] for r in in_score]))
            if complete and bias is not None
            else None
        ),
        offsets=None if bias is None else {k: float(v) for k, v in zip(clf.meta.sentiment_labels, bias)},
    )
    everything = results + news_results
    drop = ("per_class", "worst_errors", "confusion", "news_bias")
    summary: dict[str, dict] = {r.name: {k: v for k, v in r.metrics.items() if k not in drop} for r in everything}
    for r in everything:
        if "news_bias" in r.metrics:
            summary[BIAS + r.name] = {k: v for k, v in r.metrics["news_bias"].items() if k != "confusion"}
    summary[NEWS] = {
        "score": news.score,
        "sets": float(len(in_score)),
        "stand_ins": float(len(stand_ins)),
        "limit": float(limit),
    }
    if news.score_news_bias is not None:
        summary[BIAS + NEWS] = {"score": news.score_news_bias}
    (out_dir / "metrics.json").write_text(
        json.dumps(
            {**{r.name: r.metrics for r in everything}, NEWS: news.as_dict(), "limit": limit}, indent=2, default=float
        )
    )
    candidate = (out_dir / "news-bias-candidate.md").exists()  # written by ``python -m finsent.model.domain``
    (out_dir / "report.md").write_text(render(clf, results, news_results, news, candidate, limit))
    return summary


def summary_lines(summary: dict) -> list[str]:
    """What ``finsent eval`` prints: one line per set, then the news score(s)."""
    lines = []
    for name, row in summary.items():
        if "ece_calibrated" not in row:
            continue
        neutral = f" neutral={row['neutral_rate']:.3f}" if "neutral_rate" in row else ""
        lines.append(
            f"{name:<28} n={row['n']:<5} accuracy={row['accuracy']:.3f} macro_f1={row['macro_f1']:.3f} "
            f"ece={row['ece_calibrated']:.3f}{neutral}"
        )
    news = summary.get(NEWS, {})
    if news.get("limit"):
        lines.append(f"partial report: at most {int(news['limit'])} rows of each set (--limit)")
    if news.get("score") is None:
        lines.append("news score: incomplete (news sets missing under the data directory; see the warnings)")
    else:
        lines.append(
            f"news score (mean accuracy over {int(news['sets'])} news sets"
            + (f", held-out parts for the {int(news['stand_ins'])} it trained on" if news.get("stand_ins") else "")
            + f"): {news['score']:.3f}"
        )
    if BIAS + NEWS in summary:
        lines.append(
            f"news score with the stored news decision rule (news_bias.json): {summary[BIAS + NEWS]['score']:.3f}"
        )
    return lines


MLFLOW_POINTER = "mlflow.json"  # in a report directory: the MLflow runs of the evaluation and of the model's training


def log_to_mlflow(clf: Classifier, out_dir: Path, summary: dict, uri: str = "") -> str:
    """Record the report (metrics + Markdown + PNGs) as an MLflow run in the model's experiment, and leave
    ``mlflow.json`` in the report naming that run and the model's training run. Why: the tracking database is local
    (``./mlruns.db``, not in the repository), so a clone's only record of which runs made a committed report is the
    report itself."""
    import mlflow

    uri = uri or f"sqlite:///{Path('mlruns.db').resolve()}"
    run_id = _log_run(mlflow, clf, out_dir, summary, uri)
    pointer = {
        "evaluation_run": run_id,
        "training_run": clf.meta.metrics.get("mlflow_run"),  # recorded by training since session 35
        "experiment": clf.meta.name,
        "tracking_store": "./mlruns.db" if uri.endswith("/mlruns.db") else uri,
    }
    (out_dir / MLFLOW_POINTER).write_text(json.dumps(pointer, indent=2) + "\n")
    return run_id


def _log_run(mlflow: Any, clf: Classifier, out_dir: Path, summary: dict, uri: str) -> str:
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(clf.meta.name)
    with mlflow.start_run(run_name=f"eval-{clf.meta.version}") as run:
        mlflow.set_tags(
            {
                "model": clf.version,
                "kind": "evaluation",
                "backend": clf.backend.name,
                "news_bias": "stored" if clf.news_bias is not None else "none",
            }
        )
        mlflow.log_metrics(
            {
                f"{name}.{k}": v
                for name, row in summary.items()
                for k, v in row.items()
                if isinstance(v, float) and not isinstance(v, bool)
            }
        )
        mlflow.log_artifacts(str(out_dir))
        return run.info.run_id


def _trained_news_sentence(training_sets: list[str]) -> str:
    """What the report says about the news sets, from what the model's ``meta.json`` says it trained on."""
    stand_ins = held_out_stand_ins(training_sets)
    if not stand_ins:
        return "The news sets are out-of-domain for this model (it trained on none of them)."
    trained = sorted({ns.trained_on for ns in NEWS_SETS if ns.name in stand_ins})
    return (
        f"This model trained on the training parts of {', '.join(trained)} (`meta.json`): its figures on "
        f"{', '.join(stand_ins)} include text it learned; the rows those parts left out "
        f"({', '.join(stand_ins.values())}) are the fair ones and stand in for them in the news score."
    )


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def _confusion_lines(r: SetResult, vocab: list[str]) -> list[str]:
    cm = r.metrics["confusion"]
    rows = r.labels or tuple(range(len(vocab)))
    lines = ["| true \\ predicted | " + " | ".join(vocab) + " |", "|---|" + "---|" * len(vocab)]
    lines += [f"| {vocab[i]} | " + " | ".join(str(c) for c in cm[i]) + " |" for i in rows]
    return lines


def _news_lines(
    clf: Classifier, results: list[SetResult], news_results: list[SetResult], news: NewsSummary, candidate: bool = False
) -> list[str]:
    by_name = {r.name: r.metrics for r in results}
    twitter = " / ".join(
        f"{name} {by_name[name]['accuracy']:.3f}" for name in ("twitter-sentiment", "twitter-topic") if name in by_name
    )
    licences = {ns.name: ns.licence for ns in NEWS_SETS}
    descriptions = {ns.name: ns.description for ns in NEWS_SETS}
    score = "incomplete" if news.score is None else f"**{news.score:.3f}**"
    lines = [
        "## News",
        "",
        f"**News score** (mean accuracy over {len(news.sets)} news sets: {', '.join(news.sets)}): {score}; "
        f"beside Twitter accuracy {twitter}. The `-heldout` rows are the rows of a set that no model trains on "
        "(`data.is_heldout`): for a model that trained on the rest they are the only fair figures on that set, and "
        "the news score takes them in the whole set's place"
        + (
            " (here: " + ", ".join(f"{a} → {b}" for a, b in news.stand_ins.items()) + ")."
            if news.stand_ins
            else " (none here: this model trained on no news set's rows)."
        ),
        "",
        "Binary sets (no neutral class) are scored on the 3-way prediction — a neutral prediction is wrong — and "
        "that is the headline number; *acc. neg/pos only* is the argmax over negative and positive alone, for reference. "
        "Macro-F1 averages over the set's own classes. *Neutral rate* is the share of predictions that are neutral; "
        "*gold neutral* the share of true labels that are. SEntFiN by entity gives every entity its headline's "
        "prediction (the model is entity-blind). FinEntity: the held-out test half (its dev half may be used for "
        "fitting, e.g. the news decision rule). Sets with an NC or unknown licence quote only their "
        f"{QUOTED_RESTRICTED} most confident errors below.",
        "",
    ]
    if news.missing:
        lines += [
            "**Missing sets** (news score not computed): "
            + ", ".join(f"{name} (`{path}`)" for name, path in news.missing.items()),
            "",
        ]
    lines += [
        "| set | licence | n | gold neutral | accuracy | macro-F1 | neutral rate | acc. neg/pos only |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in news_results:
        x = r.metrics
        restricted = _pct(x.get("accuracy_restricted"))
        lines.append(
            f"| {r.name} | {licences[r.name]} | {x['n']} | {x['gold_neutral_share']:.3f} | {x['accuracy']:.3f} | "
            f"{x['macro_f1']:.3f} | {x['neutral_rate']:.3f} | {restricted} |"
        )
    lines += ["", *(f"- `{r.name}`: {descriptions[r.name]}." for r in news_results), ""]
    lines += [
        "Confusion matrices: for each true class, how many were predicted negative / neutral / positive "
        "(— : the set has no such class).",
        "",
        "| set | " + " | ".join(f"true {label}" for label in clf.meta.sentiment_labels) + " |",
        "|---|---|---|---|",
    ]
    for r in news_results:
        cm = r.metrics["confusion"]
        cells = [" / ".join(map(str, cm[i])) if i in r.labels else "—" for i in range(3)]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    lines += ["", "## News decision rule (`news_bias.json`)", ""]
    if news.offsets is None:
        lines += ['This model stores no news decision rule; `predict(texts, domain="news")` equals the default.']
        if candidate:
            lines += [
                "A candidate rule was measured and not stored: see [news-bias-candidate.md](news-bias-candidate.md) "
                "(`python -m finsent.model.domain`)."
            ]
        return [*lines, ""]
    offsets = ", ".join(f"{k} {v:+.3f}" for k, v in news.offsets.items())
    lines += [
        f'Per-class offsets added to the calibrated sentiment logits for `domain="news"`: {offsets}, fitted on '
        "FinEntity's dev half only (`python -m finsent.model.domain`). The default rule (`domain=None`, used by the "
        "stream) is unchanged. Same logits, both rules:",
        "",
        "| set | accuracy default → news rule | macro-F1 default → news rule | neutral rate default → news rule |",
        "|---|---|---|---|",
    ]
    for r in [*(r for r in results if "news_bias" in r.metrics), *news_results]:
        a, b = r.metrics, r.metrics["news_bias"]
        lines.append(
            f"| {r.name} | {a['accuracy']:.3f} → {b['accuracy']:.3f} | {a['macro_f1']:.3f} → {b['macro_f1']:.3f} "
            f"| {a['neutral_rate']:.3f} → {b['neutral_rate']:.3f} |"
        )
    if news.score is not None and news.score_news_bias is not None:
        lines.append(f"| **news score** | **{news.score:.3f} → {news.score_news_bias:.3f}** | | |")
    return [*lines, ""]


def render(
    clf: Classifier,
    results: list[SetResult],
    news_results: list[SetResult] | None = None,
    news: NewsSummary | None = None,
    candidate: bool = False,
    limit: int = 0,
) -> str:
    m = clf.meta
    news_results = news_results or []
    lines = [
        f"# Evaluation report: {m.full_name}",
        "",
        *(
            [
                f"**Partial report** (`--limit {limit}`): at most {limit} evenly spread rows of each set; not comparable "
                "with a full report.",
                "",
            ]
            if limit
            else []
        ),
        f"Base `{m.base}`, max length {m.max_length} tokens, backend `{clf.backend.name}`. Temperatures fitted on the dev "
        f"slice of train: topic {m.temperature_topic:.3f}, sentiment {m.temperature_sentiment:.3f}.",
        "Twitter *valid* splits are test sets here: model selection and calibration used a hash-selected 10 % dev slice "
        f"of *train*. {_trained_news_sentence(m.training_sets)}",
        *(
            [
                "",
                f"Trained with domain tags {m.domain_prefixes} (`finsent.model.domain`): the Twitter sets are read behind "
                "the `twitter` tag, every other set (and anything served, by default) behind the `news` tag.",
            ]
            if m.domain_prefixes
            else []
        ),
        "",
        "## Summary",
        "",
        "| set | head | n | accuracy | macro-F1 | weighted-F1 | ECE raw | ECE calibrated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results + news_results:
        x = r.metrics
        lines.append(
            f"| {r.name} | {r.head} | {x['n']} | {x['accuracy']:.3f} | {x['macro_f1']:.3f} | {x['weighted_f1']:.3f} "
            f"| {x['ece_raw']:.3f} | {x['ece_calibrated']:.3f} |"
        )
    if news is not None:
        score = "incomplete (see News)" if news.score is None else f"**{news.score:.3f}**"
        twitter = ", ".join(f"{r.name} {r.metrics['accuracy']:.3f}" for r in results if r.name.startswith("twitter-"))
        lines += [
            "",
            f"**News score** (mean accuracy over the {len(news.sets)} news sets not marked held-out): {score} — "
            f"Twitter: {twitter}.",
        ]
        lines += ["", *_news_lines(clf, results, news_results, news, candidate)]
    lines += ["", "## Beside published results", "", "| set | model | accuracy | macro-F1 |", "|---|---|---|---|"]
    for r in results:
        for name, acc, f1 in PUBLISHED.get(r.name, []):
            lines.append(f"| {r.name} | {name} | {_pct(acc)} | {_pct(f1)} |")
        if r.name in PUBLISHED:
            lines.append(
                f"| {r.name} | **{m.full_name}** | **{r.metrics['accuracy']:.3f}** | **{r.metrics['macro_f1']:.3f}** |"
            )
    for r in results + news_results:
        lines += [
            "",
            f"## {r.name} ({r.head})",
            "",
            "| class | precision | recall | F1 | support |",
            "|---|---|---|---|---|",
        ]
        for label, row in r.metrics["per_class"].items():
            if isinstance(row, dict) and label not in ("macro avg", "weighted avg"):
                lines.append(
                    f"| {label} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1-score']:.3f} | {int(row['support'])} |"
                )
        if "confusion" in r.metrics:
            lines += [
                "",
                f"Neutral rate {r.metrics['neutral_rate']:.3f} (gold {r.metrics['gold_neutral_share']:.3f}). "
                "Confusion (rows true, columns predicted):",
                "",
                *_confusion_lines(r, list(m.sentiment_labels)),
            ]
        lines += [
            "",
            *(f"![{img}]({img})" for img in r.images),
            "",
            "Most confident errors:",
            "",
            "| text | true | predicted | confidence |",
            "|---|---|---|---|",
        ]
        for e in r.metrics["worst_errors"]:
            text = e["text"].replace("|", "\\|").replace("\n", " ")[:140]
            lines.append(f"| {text} | {e['true']} | {e['predicted']} | {e['confidence']:.2f} |")
    return "\n".join(lines) + "\n"
