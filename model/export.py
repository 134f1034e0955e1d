"""``finsent export``: ONNX fp32 + dynamic-int8 graphs, a parity check, and the CPU backend to use.

Speed without accuracy is worthless to a risk desk, so a faster backend is only *recommended* (and so
picked by ``backend=auto`` on CPU) when, on the validation texts, its accuracy is within
``max_accuracy_drop`` of torch fp32 on both heads and its labels agree with fp32 on at least
``min_agreement`` of the texts. The measured figures are written to ``export.json`` beside the model.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from finsent.model import artifact
from finsent.model.backends import BACKENDS, EXPORT_MANIFEST, make_backend, onnx_paths
from finsent.model.classifier import Classifier
from finsent.model.data import Example, twitter_sentiment, twitter_topic
from finsent.model.text import prepare

log = logging.getLogger("finsent.model.export")


class _Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask)


def export_onnx(directory: Path) -> dict[str, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, tokenizer, _ = artifact.load(directory)
    paths = onnx_paths(directory)
    paths["onnx"].parent.mkdir(exist_ok=True)
    sample = tokenizer(["finsent export sample headline"], return_tensors="pt")
    torch.onnx.export(
        _Logits(model).eval(),
        (sample["input_ids"], sample["attention_mask"]),
        str(paths["onnx"]),
        input_names=["input_ids", "attention_mask"],
        output_names=["topic_logits", "sentiment_logits"],
        dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                      "topic_logits": {0: "batch"}, "sentiment_logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    quantize_dynamic(str(paths["onnx"]), str(paths["onnx-int8"]), weight_type=QuantType.QInt8)
    return paths


def _validation(data_dir: Path, limit: int) -> tuple[list[Example], list[Example]]:
    topic, sent = twitter_topic(data_dir, "valid"), twitter_sentiment(data_dir, "valid")
    return (topic[:limit], sent[:limit]) if limit else (topic, sent)


def parity(
    directory: Path, data_dir: Path, limit: int = 0, batch_size: int = 32, max_accuracy_drop: float = 0.005,
    min_agreement: float = 0.97,
) -> dict:
    topic_set, sent_set = _validation(data_dir, limit)
    texts_t = [prepare(e.text) for e in topic_set]
    texts_s = [prepare(e.text) for e in sent_set]
    y_t = np.array([e.topic for e in topic_set])
    y_s = np.array([e.sentiment for e in sent_set])
    _, tokenizer, meta = artifact.load(directory)
    results: dict[str, dict] = {}
    reference: dict[str, np.ndarray] = {}
    for name in BACKENDS:
        try:
            backend = make_backend(name, artifact.load(directory)[0], directory, "cpu")
        except (FileNotFoundError, ValueError) as err:
            log.warning("backend skipped", extra={"backend": name, "error": str(err)})
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
        }
        if name == "torch":
            reference = {"topic": pt, "sentiment": ps}
        row["agreement_with_fp32"] = float(np.concatenate([pt == reference["topic"], ps == reference["sentiment"]]).mean())
        results[name] = row
        log.info("backend measured", extra={"backend": name, **row})
    base = results["torch"]
    for name, row in results.items():
        row["speedup_vs_fp32"] = row["texts_per_s"] / base["texts_per_s"]
        row["accepted"] = (
            base["topic_accuracy"] - row["topic_accuracy"] <= max_accuracy_drop
            and base["sentiment_accuracy"] - row["sentiment_accuracy"] <= max_accuracy_drop
            and row["agreement_with_fp32"] >= min_agreement
        )
    winner = max((n for n, r in results.items() if r["accepted"]), key=lambda n: results[n]["texts_per_s"])
    return {
        "model": meta.full_name,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "texts": len(texts_t) + len(texts_s),
        "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        "max_accuracy_drop": max_accuracy_drop,
        "min_agreement": min_agreement,
        "backends": results,
        "recommended": winner,
    }


def run(directory: Path, data_dir: Path, limit: int = 0, batch_size: int = 32) -> dict:
    export_onnx(directory)
    report = parity(directory, data_dir, limit, batch_size)
    (directory / EXPORT_MANIFEST).write_text(json.dumps(report, indent=2) + "\n")
    return report
