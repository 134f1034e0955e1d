"""Probe: would static (calibrated) int8 pass the export gate where dynamic int8 cannot? (#18; not served yet)

Dynamic int8 quantises activations with one scale per batch, so a headline's label can change with its
batch-mates (the gate's batch-invariance row refuses it). Static int8 fixes every activation scale at
calibration time, so it is batch-invariant by construction; the question is what it costs in accuracy.
This builds the recipe from the served model's fp32 ONNX graph (weights int8 per channel, symmetric;
activations uint8 from MinMax calibration on the first 400 shipped demo headlines, one text per feed, no
padding; only MatMuls with a constant weight, so attention's activation x activation products and the
Gemm heads stay fp32; ``--keep`` names MatMuls to leave fp32 as well) and measures it like ``finsent export``:
accuracy on each head, agreement with fp32, batch invariance (1,000 texts), texts/s against ONNX fp32.

    .venv/bin/python bench/probe_static_int8.py                       # keep the FFN output MatMuls fp32
    .venv/bin/python bench/probe_static_int8.py --keep '' --limit 2000  # every weighted MatMul int8
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="model directory (default: the served one)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--limit", type=int, default=0, help="texts per validation set (0: all)")
    ap.add_argument("--keep", default=r"layer\.\d+/output/dense", help="regex of MatMul names kept fp32")
    ap.add_argument("--calibration", type=int, default=400, help="shipped demo headlines used to calibrate")
    args = ap.parse_args()

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from finsent.errors import FinsentError
    from finsent.model import artifact, onnxbuild
    from finsent.model import export as gate
    from finsent.model.backends import OnnxBackend
    from finsent.model.classifier import Classifier
    from finsent.model.data import check_data_dir
    from finsent.model.text import prepare

    try:
        check_data_dir(args.data)
        directory = args.model or artifact.default_model_dir()
    except FinsentError as err:
        print(f"probe_static_int8: {err}", file=sys.stderr)
        return 2
    fp32 = onnxbuild.ensure(directory)
    _, tokenizer, meta = artifact.load(directory)
    with open(ROOT / "local" / "data" / "demo_headlines.csv", newline="") as fh:
        calibration = [prepare(row["text"]) for row in csv.DictReader(fh)][: args.calibration]

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            ids = tokenizer(calibration, truncation=True, max_length=meta.max_length)["input_ids"]
            self.feeds = iter(
                {"input_ids": np.array([x], dtype=np.int64), "attention_mask": np.ones((1, len(x)), dtype=np.int64)}
                for x in ids
            )

        def get_next(self):
            return next(self.feeds, None)

    graph = onnx.load(str(fp32))
    weights = {i.name for i in graph.graph.initializer}
    weighted = [n.name for n in graph.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    kept = [n for n in weighted if args.keep and re.search(args.keep, n)]
    print(
        f"model {meta.full_name}: {len(weighted)} weighted MatMuls, {len(weighted) - len(kept)} int8, "
        f"{len(kept)} kept fp32 ({args.keep or 'none'}); calibration {len(calibration)} demo headlines"
    )
    with tempfile.TemporaryDirectory() as tmp:
        static = Path(tmp) / "model.int8-static.onnx"
        started = time.perf_counter()
        quantize_static(
            str(fp32),
            str(static),
            Feeds(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            nodes_to_quantize=[n for n in weighted if n not in kept],
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
        print(f"quantised in {time.perf_counter() - started:.0f} s")
        topic_set, sent_set = gate._validation(args.data, args.limit)
        texts_t, texts_s = [prepare(e.text) for e in topic_set], [prepare(e.text) for e in sent_set]
        y_t, y_s = np.array([e.topic for e in topic_set]), np.array([e.sentiment for e in sent_set])
        rows: dict[str, dict] = {}
        for name, path, kind in (("onnx fp32", fp32, "onnx"), ("onnx int8 static", static, "onnx-int8")):
            clf = Classifier(directory, OnnxBackend(path, kind), meta, tokenizer, 32)
            clf.logits(texts_t[:64])  # warm-up
            started = time.perf_counter()
            pt, ps = clf.logits(texts_t)[0].argmax(1), clf.logits(texts_s)[1].argmax(1)
            seconds = time.perf_counter() - started
            rows[name] = {
                "topic_accuracy": float((pt == y_t).mean()),
                "sentiment_accuracy": float((ps == y_s).mean()),
                "texts_per_s": (len(texts_t) + len(texts_s)) / seconds,
                "batch_invariance": gate._batch_invariance(clf, texts_t[: gate.INVARIANCE_TEXTS], 32),
                "labels": np.concatenate([pt, ps]),
            }
    base, row = rows["onnx fp32"], rows["onnx int8 static"]
    row["agreement_with_fp32"] = float((base["labels"] == row["labels"]).mean())
    base["agreement_with_fp32"] = 1.0
    print(f"{len(texts_t)} topic + {len(texts_s)} sentiment validation texts")
    for name, r in rows.items():
        print(
            f"  {name:17} topic {r['topic_accuracy']:.4f}  sentiment {r['sentiment_accuracy']:.4f}  "
            f"agreement {r['agreement_with_fp32']:.4f}  invariance {r['batch_invariance']:.4f}  "
            f"{r['texts_per_s']:.0f} texts/s"
        )
    ok = gate.accepted(row, base, gate.MAX_ACCURACY_DROP, gate.MIN_AGREEMENT)
    change = {head: 100 * (row[f"{head}_accuracy"] - base[f"{head}_accuracy"]) for head in ("topic", "sentiment")}
    print(
        f"static int8: topic {change['topic']:+.2f} pt, sentiment {change['sentiment']:+.2f} pt, "
        f"{row['texts_per_s'] / base['texts_per_s']:.2f}x onnx fp32; gate: {'PASSES' if ok else 'FAILS'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
