"""The window + surge core with and without late news, in one run: what revisions and re-judging cost.

    python bench/bench_windows.py --events 300000

Both runs feed the same synthetic stream (221 keys: all, 20 topics, 200 tickers on 30 % of items, 20
headlines/s of event time, polls of 200 with ``end_step`` after each, as the aggregator does). In the late
run 20 % of the items arrive 1–30 minutes after their publish time (within the default allowed lateness of
an hour), so they revise closed windows and re-judge their keys. Prints events/s of each run and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from benchkit import command_of, write_results  # noqa: E402
from synthetic import observations as stream  # noqa: E402

from finsent.settings import load  # noqa: E402
from finsent.stream.pipeline import Aggregation  # noqa: E402
from finsent.stream.windows import Observation  # noqa: E402


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
    write_results(results, command_of("bench/bench_windows.py", ap, args), args.out)


if __name__ == "__main__":
    main()
