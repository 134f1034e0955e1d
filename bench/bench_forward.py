"""Texts per forward pass (``model.batch_size``) against model-call size, measured interleaved in one run.

    .venv/bin/python bench/bench_forward.py [--forwards 8,16,32] [--calls 16,32,64,128,512] [--out ...]

A model call of n texts is sorted by length and cut into forwards of ``model.batch_size`` texts. Which size
is fastest depends on the call size and on the ONNX session the worker uses for it (sleeping threads below
``model.spin_from_texts``, spinning ones from there on), so every (forward, call) pair is measured here on
the same texts, the configurations taking turns call by call: this machine's speed drifts by 10-20 % within
minutes, and taking turns puts the drift on every configuration alike. The stream worker's calls are small
at moderate load (the latency goal) and 512 under a backlog (the throughput goals).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench_stream import texts
from benchkit import command_of, write_results

from finsent.model.classifier import Classifier
from finsent.settings import load

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    base = load()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--forwards", default="8,16,32", help="model.batch_size values to compare")
    ap.add_argument("--calls", default="16,32,64,128,512", help="model-call sizes (texts per predict)")
    ap.add_argument("--texts", type=int, default=2048, help="texts scored per (forward, call) pair")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "forward-cpu.json")
    args = ap.parse_args()
    forwards = [int(v) for v in args.forwards.split(",")]
    calls = [int(v) for v in args.calls.split(",")]
    m = base.model
    clfs = {
        f: Classifier.load(
            backend=m.backend, batch_size=f, threads=m.threads, spin_wait=m.spin_wait, spin_from=m.spin_from_texts
        )
        for f in forwards
    }
    backend = next(iter(clfs.values())).backend.name
    pool = texts(args.texts + max(calls))
    print(f"backend {backend}; spinning threads from {m.spin_from_texts} texts per call", flush=True)
    rows = []
    for n in calls:
        spent = dict.fromkeys(forwards, 0.0)
        for start in range(0, args.texts, n):
            call = pool[start : start + n]
            for f, clf in clfs.items():
                t0 = time.perf_counter()
                clf.predict(call)
                spent[f] += time.perf_counter() - t0
        done = len(range(0, args.texts, n)) * n
        rates = {f: done / s for f, s in spent.items()}
        best = max(rates, key=rates.__getitem__)
        rows.append({"call": n, "texts_per_s": rates, "best_forward": best})
        print(
            f"calls of {n:4d}: "
            + " | ".join(f"forwards of {f}: {r:4.0f}/s ({r / rates[max(forwards)]:.2f}x)" for f, r in rates.items())
            + f"  best {best}",
            flush=True,
        )
    write_results(
        {"backend": backend, "spin_from_texts": m.spin_from_texts, "rows": rows},
        command_of("bench/bench_forward.py", ap, args),
        args.out,
    )


if __name__ == "__main__":
    main()
