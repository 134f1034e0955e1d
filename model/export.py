"""``finsent export``: measure every CPU backend and int8 recipe against fp32, gate them, record the winner.

Speed without accuracy is worthless to a risk desk, so a faster backend is only *recommended* (and so
picked by ``backend=auto`` on CPU) when, on the Twitter validation texts, its accuracy is within
``MAX_ACCURACY_DROP`` (0.3 pt) of torch fp32 on *each* head, its labels agree with fp32 on at least
``MIN_AGREEMENT`` (98 %) of the texts, and they do not depend on the batch a text is scored in
(``MIN_BATCH_INVARIANCE``: live, replay and backtest batch the same headline differently). Every candidate, accepted or not, stays in the table written to
``export.json`` beside the model, together with the SHA-256 of the weights it was measured on: the
graphs themselves are rebuilt on any machine from that recipe (``finsent.model.onnxbuild``), and a
choice measured on other weights is not trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from finsent import errors
from finsent.model import artifact, int8_static, onnxbuild
from finsent.model.backends import EXPORT_MANIFEST, GATE_VERSION, OnnxBackend, TorchBackend
from finsent.model.classifier import Classifier
from finsent.model.data import Example, check_data_dir, twitter_sentiment, twitter_topic
from finsent.model.text import prepare

log = logging.getLogger("finsent.model.export")

MAX_ACCURACY_DROP = 0.003
MIN_AGREEMENT = 0.98
MIN_BATCH_INVARIANCE = 0.999  # fp32 is exactly invariant up to float ties; dynamic int8 measured 0.968
INVARIANCE_TEXTS = 1000


def _candidates(directory: Path) -> list[tuple[str, str]]:
    """(table row name, how to build it): torch fp32/int8, ONNX fp32 and every int8 recipe."""
    return [
        ("torch", "torch"),
        ("torch-int8", "torch-int8"),
        ("onnx", onnxbuild.FP32),
        *((f"onnx-int8:{recipe}", recipe) for recipe in onnxbuild.RECIPES),
    ]


def _backend(directory: Path, row: str, how: str, threads: int):
    if how in ("torch", "torch-int8"):  # built directly: a candidate is measured, not served (no gate warning)
        return TorchBackend(artifact.load(directory)[0], torch.device("cpu"), int8=how == "torch-int8")
    return OnnxBackend(onnxbuild.ensure(directory, how), "onnx" if how == onnxbuild.FP32 else "onnx-int8", threads)


def _validation(data_dir: Path, limit: int) -> tuple[list[Example], list[Example]]:
    topic, sent = twitter_topic(data_dir, "valid"), twitter_sentiment(data_dir, "valid")
    return (topic[:limit], sent[:limit]) if limit else (topic, sent)


def _batch_invariance(clf: Classifier, texts: list[str], batch_size: int) -> float:
    """Share of texts whose labels (both heads) do not change when their batch-mates do: batches of
    ``batch_size`` in order against batches of 7 in reverse order. Dynamic int8 quantises activations with
    one scale per *batch*, so a headline's score would depend on the headlines scored beside it, and a
    backtest could never reproduce live (the parity test caught exactly that)."""
    if not texts:
        return 1.0
    batch_size, clf.batch_size = clf.batch_size, batch_size
    try:
        t1, s1 = clf.logits(texts)
        clf.batch_size = 7
        t2, s2 = (a[::-1] for a in clf.logits(texts[::-1]))
    finally:
        clf.batch_size = batch_size
    same = (t1.argmax(1) == t2.argmax(1)) & (s1.argmax(1) == s2.argmax(1))
    return float(same.mean())


def refusals(row: dict, base: dict, max_accuracy_drop: float, min_agreement: float) -> list[str]:
    """Each criterion of the gate ``row`` fails, in words (empty: accepted). One definition for the verdict and
    for ``finsent export``'s table, which says per refused row which criterion it failed."""
    failed = []
    for head in ("topic", "sentiment"):
        drop = base[f"{head}_accuracy"] - row[f"{head}_accuracy"]
        if drop > max_accuracy_drop + 1e-12:
            failed.append(f"{head} accuracy {drop * 100:.2f} pt below fp32 (max {max_accuracy_drop * 100:.2f})")
    if row["agreement_with_fp32"] < min_agreement:
        failed.append(f"agreement {row['agreement_with_fp32']:.4f} < {min_agreement}")
    for head in ("topic", "sentiment"):  # per head too: pooled, the larger topic set could carry a weak sentiment head
        agreement = row.get(f"agreement_{head}")  # absent in tables measured before it was recorded
        if agreement is not None and agreement < min_agreement:
            failed.append(f"{head} agreement {agreement:.4f} < {min_agreement}")
    invariance = row.get("batch_invariance", 0.0)
    if invariance < MIN_BATCH_INVARIANCE:
        failed.append(f"batch invariance {invariance:.4f} < {MIN_BATCH_INVARIANCE}")
    return failed


def accepted(row: dict, base: dict, max_accuracy_drop: float, min_agreement: float) -> bool:
    """The gate: within ``max_accuracy_drop`` of fp32 on *each* head, agreeing with fp32 on enough texts, and
    batch-invariant (a text's labels do not depend on what it is batched with)."""
    return not refusals(row, base, max_accuracy_drop, min_agreement)


def parity(
    directory: Path,
    data_dir: Path,
    limit: int = 0,
    batch_size: int = 32,
    max_accuracy_drop: float = MAX_ACCURACY_DROP,
    min_agreement: float = MIN_AGREEMENT,
    threads: int = 0,
) -> dict:
    topic_set, sent_set = _validation(data_dir, limit)
    texts_t = [prepare(e.text) for e in topic_set]
    texts_s = [prepare(e.text) for e in sent_set]
    y_t = np.array([e.topic for e in topic_set])
    y_s = np.array([e.sentiment for e in sent_set])
    _, tokenizer, meta = artifact.load(directory)
    results: dict[str, dict] = {}
    reference: dict[str, np.ndarray] = {}
    for row_name, how in _candidates(directory):
        try:
            backend = _backend(directory, row_name, how, threads)
        except (FileNotFoundError, ValueError, ImportError, errors.GraphError) as err:
            log.warning("backend skipped", extra={"backend": row_name, "error": str(err)})
            continue
        clf = Classifier(directory, backend, meta, tokenizer, batch_size)
        clf.logits(texts_t[: batch_size * 2])  # warm-up: first calls pay for allocation and graph set-up
        started = time.perf_counter()
        pt = clf.logits(texts_t)[0].argmax(1)
        ps = clf.logits(texts_s)[1].argmax(1)
        seconds = time.perf_counter() - started
        row = {
            "topic_accuracy": float((pt == y_t).mean()),
            "sentiment_accuracy": float((ps == y_s).mean()),
            "texts_per_s": (len(texts_t) + len(texts_s)) / seconds,
            "batch_invariance": _batch_invariance(clf, texts_t[:INVARIANCE_TEXTS], batch_size),
        }
        if row_name == "torch":
            reference = {"topic": pt, "sentiment": ps}
        row["agreement_with_fp32"] = float(
            np.concatenate([pt == reference["topic"], ps == reference["sentiment"]]).mean()
        )
        row["agreement_topic"] = float((pt == reference["topic"]).mean())
        row["agreement_sentiment"] = float((ps == reference["sentiment"]).mean())
        results[row_name] = row
        log.info("backend measured", extra={"backend": row_name, **row})
    base = results["torch"]
    for row in results.values():
        row["speedup_vs_fp32"] = row["texts_per_s"] / base["texts_per_s"]
        row["accepted"] = accepted(row, base, max_accuracy_drop, min_agreement)
    int8 = [n for n, r in results.items() if n.startswith("onnx-int8:") and r["accepted"]]
    best_int8 = max(int8, key=lambda n: results[n]["texts_per_s"]) if int8 else None
    served = {n: r for n, r in results.items() if not n.startswith("onnx-int8:")}
    if best_int8:
        served["onnx-int8"] = results[best_int8]
    winner = max((n for n, r in served.items() if r["accepted"]), key=lambda n: served[n]["texts_per_s"])
    return {
        "model": meta.full_name,
        "weights_sha256": onnxbuild.weights_digest(directory),
        "toolchain": onnxbuild.toolchain(),  # the gate's verdicts hold for these library versions
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "texts": len(texts_t) + len(texts_s),
        "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        "max_accuracy_drop": max_accuracy_drop,
        "min_agreement": min_agreement,
        "min_batch_invariance": MIN_BATCH_INVARIANCE,
        "gate": GATE_VERSION,
        "backends": results,
        "int8_recipe": best_int8.split(":", 1)[1] if best_int8 else None,
        "int8_plan_sha256": int8_static.current_plan_digest(directory),  # the static plan the gate measured
        "recommended": winner,
    }


def plan_texts(data_dir: Path) -> tuple[list[str], list[str]]:
    """Calibration and selection text for static int8: Twitter *training* texts (never validation), in a
    fixed order (by a hash of the text), so the plan is reproducible from ``../shared``."""
    train = twitter_topic(data_dir, "train") + twitter_sentiment(data_dir, "train")
    texts = sorted({prepare(e.text) for e in train}, key=lambda t: hashlib.sha256(t.encode()).hexdigest())
    calibration = texts[: min(int8_static.CALIBRATION_TEXTS, len(texts) // 5)]  # small sets: a fifth
    return calibration, texts[len(calibration) : len(calibration) + int8_static.SELECTION_TEXTS]


def plan_static(
    directory: Path, data_dir: Path, threads: int = 0, target_agreement: float = int8_static.TARGET_AGREEMENT
) -> int8_static.Plan:
    """Measure and write the model's static int8 plan (``int8-static.json``)."""
    check_data_dir(data_dir)
    calibration, selection = plan_texts(data_dir)
    fp32 = onnxbuild.ensure(directory)
    plan = int8_static.build_plan(
        directory,
        fp32,
        onnxbuild.weights_digest(directory),
        calibration,
        selection,
        "twitter-topic + twitter-sentiment train, ordered by SHA-256 of the text",
        threads,
        target_agreement,
    )
    int8_static.write_plan(directory, plan)
    return plan


def run(directory: Path, data_dir: Path, limit: int = 0, batch_size: int = 32, plan: bool = False) -> dict:
    check_data_dir(data_dir)
    if plan:
        plan_static(directory, data_dir)
    report = parity(directory, data_dir, limit, batch_size)
    (directory / EXPORT_MANIFEST).write_text(json.dumps(report, indent=2) + "\n")
    return report
