"""Backtest benchmark, figures measured in one run.

    .venv/bin/python bench/bench_backtest.py [--items 3000] [--batch 256] [--backend auto]

1. bare ``Classifier.predict`` throughput on ``--items`` demo headlines in batches of ``--batch``;
2. ``run_backtest`` over the same headlines with an empty score cache (inference + windows + surges +
   Parquet output): headlines/s and /hour, and its ratio to 1 (goal ≥ 0.9);
3. the same backtest again with other surge settings: everything from the cache, no inference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_stream import texts  # noqa: E402

from finsent.backtest.run import ScoreCache, run_backtest  # noqa: E402
from finsent.records import NewsItem  # noqa: E402
from finsent.settings import load  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "backtest-cpu.json")
    args = ap.parse_args()
    from finsent.model import Classifier

    settings = load()
    clf = Classifier.load(backend=args.backend, batch_size=settings.model.batch_size)
    data = texts(args.items)
    t0 = datetime(2024, 1, 2, tzinfo=UTC)
    items = [
        NewsItem(
            id=f"b{i}",
            title=t,
            source="bench",
            published=t0 + timedelta(seconds=10 * i),
            fetched=t0 + timedelta(seconds=10 * i),
            tickers=("XOM",) if i % 9 == 0 else (),
        )
        for i, t in enumerate(data)
    ]
    clf.predict(data[: args.batch])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(data), args.batch):
        clf.predict(data[i : i + args.batch])
    bare = len(data) / (time.perf_counter() - started)
    print(f"bare Classifier.predict ({clf.backend.name}, batch {args.batch}): {bare:.0f} texts/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="finsent-bench-") as tmp:
        cache = ScoreCache(Path(tmp) / "cache.sqlite")
        model = f"{clf.version}/{args.backend}"
        first = run_backtest(settings, items, Path(tmp) / "run1", model, clf.predict, cache, args.batch)
        other = settings.model_copy(update={"surge": settings.surge.model_copy(update={"z_threshold": 4.0})})
        second = run_backtest(other, items, Path(tmp) / "run2", model, None, cache, args.batch)
        cache.close()
    ratio = first.items_per_s / bare
    print(
        f"backtest, empty cache: {first.items_per_s:.0f} headlines/s = {first.items_per_s * 3600:,.0f}/hour "
        f"= {ratio:.2f} x bare (inference {first.inference_seconds / first.seconds:.0%} of the time)",
        flush=True,
    )
    print(f"backtest, all cached (other surge settings): {second.items_per_s:,.0f} headlines/s", flush=True)
    result = {
        "bare_texts_per_s": bare,
        "backend": clf.backend.name,
        "model": clf.version,
        "items": args.items,
        "batch": args.batch,
        "backtest_items_per_s": first.items_per_s,
        "backtest_items_per_hour": first.items_per_s * 3600,
        "ratio_backtest_vs_bare": ratio,
        "inference_share": first.inference_seconds / first.seconds,
        "cached_items_per_s": second.items_per_s,
        "cached_inferred": second.inferred,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "command": f"python bench/bench_backtest.py --items {args.items} --batch {args.batch} --backend {args.backend}",
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
