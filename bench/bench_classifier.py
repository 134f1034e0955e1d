"""Classifier throughput per backend and batch size, with speed-up ratios vs torch fp32, in one run.

    .venv/bin/python bench/bench_classifier.py [--model DIR] [--texts N] [--out bench/results/classifier-cpu.json]

Texts are the Twitter topic validation headlines (real lengths; ../shared/data) or, without that
directory, the shipped test sample. ONNX backends are measured when ``finsent export`` has been run
for the model. Every figure printed is measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from finsent.model import Classifier, artifact
from finsent.model.backends import BACKENDS
from finsent.model.data import twitter_topic

ROOT = Path(__file__).resolve().parents[1]


def load_texts(n: int) -> list[str]:
    data = ROOT.parent / "shared" / "data"
    if (data / "twitter-topic" / "valid.csv").exists():
        texts = [e.text for e in twitter_topic(data, "valid")]
    else:
        import csv

        with (ROOT / "tests" / "fixtures" / "twitter_valid_sample.csv").open() as fh:
            texts = [r["text"] for r in csv.DictReader(fh)]
    return (texts * (n // len(texts) + 1))[:n]


def measure(clf: Classifier, texts: list[str], min_seconds: float = 3.0) -> float:
    clf.predict(texts[: clf.batch_size * 2])  # warm-up
    done, started = 0, time.perf_counter()
    while True:
        clf.predict(texts)
        done += len(texts)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return done / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--batch-sizes", default="1,32,128")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "classifier-cpu.json")
    args = ap.parse_args()
    directory = args.model or artifact.default_model_dir()
    texts = load_texts(args.texts)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    backends = ["torch"] if args.device != "cpu" else list(BACKENDS)
    rows = []
    for backend in backends:
        for bs in batch_sizes:
            try:
                clf = Classifier.load(directory, backend=backend, device=args.device, batch_size=bs)
            except FileNotFoundError as err:
                print(f"skip {backend}: {err}")
                break
            sample = texts[: max(bs * 4, 64)] if bs == 1 else texts
            rows.append({"backend": clf.backend.name, "batch_size": bs, "texts_per_s": measure(clf, sample)})
            print(f"{clf.backend.name:<11} batch {bs:>4}: {rows[-1]['texts_per_s']:8.1f} texts/s", flush=True)
    base = {r["batch_size"]: r["texts_per_s"] for r in rows if r["backend"] in ("torch", "torch-cuda")}
    for r in rows:
        r["speedup_vs_torch_fp32"] = r["texts_per_s"] / base[r["batch_size"]]
    print(f"\n{'backend':<11} {'batch':>5} {'texts/s':>9} {'vs fp32':>8}")
    for r in rows:
        print(f"{r['backend']:<11} {r['batch_size']:>5} {r['texts_per_s']:>9.1f} {r['speedup_vs_torch_fp32']:>7.2f}x")
    meta = artifact.load_meta(directory)
    doc = {
        "model": meta.full_name,
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "texts": len(texts),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "results": rows,
        "command": "python bench/bench_classifier.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("model", "out") and v is not None
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
