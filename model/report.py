"""``finsent eval``: the evaluation report analysts and the model card rely on.

Test sets: the Twitter *valid* splits (never used for model selection or calibration; those use a
dev slice of train) and Financial PhraseBank as an out-of-domain check of the MIT-only model. For
each head: classification report, accuracy, macro/weighted F1, confusion matrix, calibration (ECE
and reliability diagram, before and after the temperature fitted on dev), the most confident
errors, and a table beside the published results of ``../shared/data/README.md``.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import classification_report, confusion_matrix  # noqa: E402

from finsent.model.classifier import Classifier  # noqa: E402
from finsent.model.data import Example, phrasebank, twitter_sentiment, twitter_topic  # noqa: E402
from finsent.model.metrics import expected_calibration_error, reliability_bins, scores, softmax  # noqa: E402
from finsent.model.text import prepare  # noqa: E402

log = logging.getLogger("finsent.model.report")

PUBLISHED = {
    "twitter-sentiment": [
        ("DistilBERT", 0.859, None), ("finbert-tone", 0.884, None),
        ("twitter-roberta", 0.888, None), ("twhin-bert-large", 0.890, None),
    ],
    "twitter-topic": [("bert-base", 0.901, None), ("best public fine-tune", 0.911, None)],
    "phrasebank-50-finbert-test": [("FinBERT (in-domain, trained on PhraseBank)", 0.86, 0.84)],
}


@dataclass
class SetResult:
    name: str
    head: str
    metrics: dict
    images: list[str]


def finbert_test_split(examples: list[Example], seed: int = 42, fraction: float = 0.2) -> list[Example]:
    """The FinBERT protocol's 20 % test split (fixed seed), for a like-for-like comparison."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in order[: int(len(order) * fraction)]]


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
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_reliability(before: np.ndarray, after: np.ndarray, labels: np.ndarray, title: str, path: Path, bins: int = 15) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    min_share = 5 / len(labels)  # plot only bins holding at least 5 examples
    for probs, name in ((before, "raw (T=1)"), (after, "temperature-scaled")):
        points = [(conf, acc) for share, conf, acc in reliability_bins(probs, labels, bins) if share >= min_share - 1e-12]
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


def evaluate_set(
    clf: Classifier, name: str, head: str, examples: list[Example], out_dir: Path, worst: int = 12
) -> SetResult:
    labels_vocab = clf.meta.topic_labels if head == "topic" else clf.meta.sentiment_labels
    temperature = clf.meta.temperature_topic if head == "topic" else clf.meta.temperature_sentiment
    prepared = [(ex, prepare(ex.text)) for ex in examples]
    examples = [ex for ex, text in prepared if text]
    texts = [text for _, text in prepared if text]
    y = np.array([ex.topic if head == "topic" else ex.sentiment for ex in examples])
    topic_logits, sent_logits = clf.logits(texts)
    logits = topic_logits if head == "topic" else sent_logits
    raw, calibrated = softmax(logits), softmax(logits, temperature)
    pred = calibrated.argmax(1)
    present = sorted(set(y.tolist()) | set(pred.tolist()))
    metrics = scores(y, pred)
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
        {"text": examples[i].text, "true": labels_vocab[y[i]], "predicted": labels_vocab[pred[i]],
         "confidence": round(float(calibrated[i, pred[i]]), 3)}
        for i in wrong
    ]
    cm_path = out_dir / f"{name}-confusion.png"
    _plot_confusion(confusion_matrix(y, pred, labels=range(len(labels_vocab))), list(labels_vocab), f"{name} ({head})", cm_path)
    rel_path = out_dir / f"{name}-reliability.png"
    _plot_reliability(raw, calibrated, y, f"{name}: reliability", rel_path)
    log.info("evaluated", extra={"set": name, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]})
    return SetResult(name, head, metrics, [cm_path.name, rel_path.name])


def run(clf: Classifier, data_dir: Path, out_dir: Path, limit: int = 0) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    sets: list[tuple[str, str, list[Example]]] = [
        ("twitter-sentiment", "sentiment", twitter_sentiment(data_dir, "valid")),
        ("twitter-topic", "topic", twitter_topic(data_dir, "valid")),
    ]
    try:
        pb = phrasebank(data_dir, "50Agree")
        sets += [
            ("phrasebank-50-finbert-test", "sentiment", finbert_test_split(pb)),
            ("phrasebank-50-all", "sentiment", pb),
            ("phrasebank-allagree", "sentiment", phrasebank(data_dir, "AllAgree")),
        ]
    except Exception as err:  # PhraseBank is optional (non-commercial licence; may be absent)
        log.warning("phrasebank skipped", extra={"error": str(err)})
    results = [evaluate_set(clf, name, head, ex[:limit] if limit else ex, out_dir) for name, head, ex in sets]
    summary = {r.name: {k: v for k, v in r.metrics.items() if k not in ("per_class", "worst_errors")} for r in results}
    (out_dir / "metrics.json").write_text(json.dumps({r.name: r.metrics for r in results}, indent=2, default=float))
    (out_dir / "report.md").write_text(render(clf, results))
    return summary


def log_to_mlflow(clf: Classifier, out_dir: Path, summary: dict, uri: str = "") -> str:
    """Record the report (metrics + Markdown + PNGs) as an MLflow run in the model's experiment."""
    import mlflow

    mlflow.set_tracking_uri(uri or f"sqlite:///{Path('mlruns.db').resolve()}")
    mlflow.set_experiment(clf.meta.name)
    with mlflow.start_run(run_name=f"eval-{clf.meta.version}") as run:
        mlflow.set_tags({"model": clf.version, "kind": "evaluation", "backend": clf.backend.name})
        mlflow.log_metrics({f"{name}.{k}": v for name, row in summary.items() for k, v in row.items() if isinstance(v, float)})
        mlflow.log_artifacts(str(out_dir))
        return run.info.run_id


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def render(clf: Classifier, results: list[SetResult]) -> str:
    m = clf.meta
    lines = [
        f"# Evaluation report: {m.full_name}",
        "",
        f"Base `{m.base}`, max length {m.max_length} tokens, backend `{clf.backend.name}`. Temperatures fitted on the dev "
        f"slice of train: topic {m.temperature_topic:.3f}, sentiment {m.temperature_sentiment:.3f}.",
        "Twitter *valid* splits are test sets here: model selection and calibration used a hash-selected 10 % dev slice "
        "of *train*. PhraseBank is out-of-domain for this MIT-only model (never trained on).",
        "",
        "## Summary",
        "",
        "| set | head | n | accuracy | macro-F1 | weighted-F1 | ECE raw | ECE calibrated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        x = r.metrics
        lines.append(
            f"| {r.name} | {r.head} | {x['n']} | {x['accuracy']:.3f} | {x['macro_f1']:.3f} | {x['weighted_f1']:.3f} "
            f"| {x['ece_raw']:.3f} | {x['ece_calibrated']:.3f} |"
        )
    lines += ["", "## Beside published results", "", "| set | model | accuracy | macro-F1 |", "|---|---|---|---|"]
    for r in results:
        for name, acc, f1 in PUBLISHED.get(r.name, []):
            lines.append(f"| {r.name} | {name} | {_pct(acc)} | {_pct(f1)} |")
        if r.name in PUBLISHED:
            lines.append(f"| {r.name} | **{m.full_name}** | **{r.metrics['accuracy']:.3f}** | **{r.metrics['macro_f1']:.3f}** |")
    for r in results:
        lines += ["", f"## {r.name} ({r.head})", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for label, row in r.metrics["per_class"].items():
            if isinstance(row, dict) and label not in ("macro avg", "weighted avg"):
                lines.append(f"| {label} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1-score']:.3f} | {int(row['support'])} |")
        lines += ["", *(f"![{img}]({img})" for img in r.images), "", "Most confident errors:", "",
                  "| text | true | predicted | confidence |", "|---|---|---|---|"]
        for e in r.metrics["worst_errors"]:
            text = e["text"].replace("|", "\\|").replace("\n", " ")[:140]
            lines.append(f"| {text} | {e['true']} | {e['predicted']} | {e['confidence']:.2f} |")
    return "\n".join(lines) + "\n"
