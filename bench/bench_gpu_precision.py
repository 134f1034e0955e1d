"""What the CUDA path's precision costs: its labels against fp32 torch on the CPU, and its speed, in one run.

    python bench/bench_gpu_precision.py [--out bench/results/gpu-precision.json]

Texts: the shipped Twitter validation sample and the demo headlines (no ../shared needed). Rows: the served
form (fp16 weights, traced forward), the same eager, bf16 eager, and fp32 eager on the GPU; each as the share
of texts whose topic / sentiment label equals fp32 torch's on the CPU, the largest sentiment-probability
difference, and texts/s of one ``predict`` over all texts in forwards of ``model.gpu_batch_size`` (after one
warm-up pass). bf16 is measured as weights, not as the bf16 autocast the CUDA path used before session 24. Needs
a CUDA device (the ``device`` tool's lent GPU: see deploy/SCALING.md).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch
from benchkit import command_of, write_results

from finsent.model import Classifier
from finsent.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def texts() -> list[str]:
    found = []
    for path in (
        ROOT / "tests" / "fixtures" / "twitter_valid_sample.csv",
        ROOT / "local" / "data" / "demo_headlines.csv",
    ):
        with path.open() as fh:
            found += [row["text"] for row in csv.DictReader(fh)]
    return found


def measure(label: str, clf: Classifier, items: list[str], want: list) -> dict:
    got = clf.predict(items)
    row = {
        "form": label,
        "topic_agreement": sum(a.topic == b.topic for a, b in zip(got, want, strict=True)) / len(items),
        "sentiment_agreement": sum(a.sentiment == b.sentiment for a, b in zip(got, want, strict=True)) / len(items),
        "max_sentiment_prob_diff": max(
            abs(a.sentiment_probs[k] - b.sentiment_probs[k])
            for a, b in zip(got, want, strict=True)
            for k in a.sentiment_probs
        ),
    }
    started = time.perf_counter()
    clf.predict(items)
    row["texts_per_s"] = len(items) / (time.perf_counter() - started)
    print(
        f"{label}: agreement with fp32 on the CPU, topic {row['topic_agreement']:.4f}, sentiment "
        f"{row['sentiment_agreement']:.4f}; max sentiment probability difference {row['max_sentiment_prob_diff']:.4f}; "
        f"{row['texts_per_s']:.0f} texts/s",
        flush=True,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu-precision.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu_precision: no CUDA device here")
    items = texts()
    want = Classifier.load(backend="torch", device="cpu", trace=False, batch_size=64).predict(items)
    rows = []
    forward = Settings().model.gpu_batch_size
    served = Classifier.load(backend="torch", device="cuda", gpu_batch_size=forward)
    rows.append(measure("fp16, traced (served)", served, items, want))
    cuda = torch.device("cuda")
    for label, dtype in (
        ("fp16, eager", torch.float16),
        ("bf16, eager", torch.bfloat16),
        ("fp32, eager", torch.float32),
    ):
        # From the weights as stored (a CPU load is not cast), then moved and cast as the row says.
        clf = Classifier.load(backend="torch", device="cpu", trace=False, batch_size=forward)
        clf.backend.model = clf.backend.forward = clf.backend.model.to(cuda, dtype)
        clf.backend.device = cuda
        rows.append(measure(label, clf, items, want))
    write_results({"texts": len(items), "rows": rows}, command_of("bench/bench_gpu_precision.py", ap, args), args.out)


if __name__ == "__main__":
    main()
