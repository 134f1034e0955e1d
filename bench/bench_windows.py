"""The window + surge core with and without late news, in one run: what revisions and re-judging cost.

    python bench/bench_windows.py --events 300000

Both runs feed the same synthetic stream (221 keys: all, 20 topics, 200 tickers on 30 % of items, 20
headlines/s of event time, polls of 200 with ``end_step`` after each, as the aggregator does). In the late
run 20 % of the items arrive 1–30 minutes after their publish time (within the default allowed lateness of
an hour), so they revise closed windows and re-judge their keys. Prints events/s of each run and the ratio.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from benchkit import write_results  # noqa: E402

from finsent.labels import TOPIC_LABELS  # noqa: E402
from finsent.records import Evidence  # noqa: E402
from finsent.settings import load  # noqa: E402
from finsent.stream.pipeline import Aggregation  # noqa: E402
from finsent.stream.windows import Observation, keys_for  # noqa: E402


def stream(n: int, late_share: float, seed: int = 7) -> list[Observation]:
    """``n`` observations in arrival order; ``late_share`` of them arrive 1–30 min after their event time."""
    rng = random.Random(seed)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    pool = [
        Evidence(item_id=f"e{i}", title=f"headline {i}", source="s", published=t0, p_negative=rng.random())
        for i in range(1000)
    ]
    tickers = [f"T{i:03d}" for i in range(200)]
    sentiments = ("negative", "neutral", "positive")
    arrivals = []
    for i in range(n):
        at = t0 + timedelta(seconds=i * 0.05)
        topic = TOPIC_LABELS[rng.randrange(len(TOPIC_LABELS))]
        tk = (tickers[rng.randrange(200)],) if rng.random() < 0.3 else ()
        s = sentiments[rng.randrange(3)]
        delay = rng.uniform(60, 1800) if rng.random() < late_share else rng.uniform(0, 5)
        arrivals.append(
            (
                at.timestamp() + delay,
                Observation(
                    f"i{i}",
                    at,
                    keys_for(topic, tk),
                    s,
                    {"negative": -0.8, "neutral": 0.0, "positive": 0.8}[s],
                    pool[i % 1000],
                ),
            )
        )
    arrivals.sort(key=lambda a: a[0])
    return [o for _, o in arrivals]


def run(observations: list[Observation], poll: int = 200) -> dict:
    agg = Aggregation(load())
    windows = revisions = alerts = 0
    started = time.perf_counter()
    for n, o in enumerate(observations):
        out = agg.add_observation(o)
        if n % poll == poll - 1:
            out.extend(agg.end_step())
        windows += len(out.windows)
        revisions += sum(1 for c in out.windows if c.revised)
        alerts += len(out.alerts)
    seconds = time.perf_counter() - started
    buckets, ids = agg.store.size()
    return {
        "events": len(observations),
        "seconds": round(seconds, 2),
        "events_per_s": round(len(observations) / seconds),
        "window_results": windows,
        "revisions": revisions,
        "alert_records": alerts,
        "late": agg.store.late,
        "rejected": agg.store.rejected,
        "state_buckets_at_end": buckets,
        "state_ids_at_end": ids,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--late-share", type=float, default=0.2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "windows-cpu.json")
    args = ap.parse_args()
    results = {"on_time": run(stream(args.events, 0.0)), "late": run(stream(args.events, args.late_share))}
    for name, r in results.items():
        print(
            f"{name:8s}: {r['events_per_s']:>7} events/s ({r['events']} events, {r['late']} late, {r['revisions']} "
            f"revisions, {r['rejected']} rejected; state at end {r['state_buckets_at_end']} buckets, "
            f"{r['state_ids_at_end']} ids)",
            flush=True,
        )
    results["ratio_late_vs_on_time"] = round(results["late"]["events_per_s"] / results["on_time"]["events_per_s"], 3)
    print(f"late / on-time: {results['ratio_late_vs_on_time']:.2f}")
    write_results(
        results, f"python bench/bench_windows.py --events {args.events} --late-share {args.late_share:g}", args.out
    )


if __name__ == "__main__":
    main()
