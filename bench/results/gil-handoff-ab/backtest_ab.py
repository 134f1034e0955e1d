"""A/B of the backtest's GIL handoff (session 33), arms interleaved, each round: bare predict both ways (one call at a
time, then side by side as the backtest calls it), ``run_backtest`` on 3,000 headlines with an empty cache, bare
again; the round's ratio is the backtest's rate over the faster bare side-by-side run.

    .venv/bin/python bench/results/gil-handoff-ab/backtest_ab.py [ROUNDS]

"on": ``run_backtest`` as shipped (``prompt_gil_handoff``); "off": the handoff replaced by a no-op.
"""

import contextlib
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))

from bench_backtest import bench_items  # noqa: E402
from bench_stream import texts  # noqa: E402

import finsent.backtest.run as run_module  # noqa: E402
from finsent.backtest.run import ScoreCache, run_backtest  # noqa: E402
from finsent.heap import freeze_startup_objects  # noqa: E402
from finsent.model import Classifier  # noqa: E402
from finsent.model.placement import calls_for_threads, side_by_side  # noqa: E402
from finsent.settings import load  # noqa: E402

HANDOFF = run_module.prompt_gil_handoff


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    settings = load()
    side = side_by_side(settings.model)
    calls = calls_for_threads(side.threads)
    clf = Classifier.from_settings(None, side)
    clf.ready_for_calls(calls)
    one_at_a_time = Classifier.from_settings(None, settings.model)
    data = texts(3000)
    items = bench_items(data)
    freeze_startup_objects()
    clf.predict(data[:256])
    one_at_a_time.predict(data[:256])
    chunks = [data[i : i + 256] for i in range(0, len(data), 256)]

    def bare() -> float:
        for chunk in chunks:
            one_at_a_time.predict(chunk)
        started = time.perf_counter()
        with ThreadPoolExecutor(calls) as pool:
            list(pool.map(clf.predict, chunks))
        return len(data) / (time.perf_counter() - started)

    tmp = Path(tempfile.mkdtemp())
    ratios: dict[str, list[float]] = {}
    for k in range(rounds):
        for arm in ("on", "off") if k % 2 == 0 else ("off", "on"):
            run_module.prompt_gil_handoff = HANDOFF if arm == "on" else (lambda *_: contextlib.nullcontext())
            before = bare()
            cache = ScoreCache(tmp / f"cache-{k}-{arm}.sqlite")
            report = run_backtest(
                settings, items, tmp / f"run-{k}-{arm}", "m", clf.predict, cache, 256, calls_at_once=calls
            )
            cache.close()
            after = bare()
            ratio = report.items_per_s / max(before, after)
            ratios.setdefault(arm, []).append(ratio)
            print(f"round {k} {arm}: bare {before:.0f}/{after:.0f} backtest {report.items_per_s:.0f} ratio {ratio:.3f}")
    for arm, values in ratios.items():
        print(f"{arm}: median {statistics.median(values):.3f} mean {statistics.mean(values):.3f} {values}")


if __name__ == "__main__":
    main()
