"""A/B: the backtest's ratio to bare side-by-side predict under two GIL switch intervals, interleaved."""

import sys, time, tempfile, statistics
from pathlib import Path
from datetime import UTC, datetime, timedelta
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, "/work/main/bench")
from bench_stream import texts
from finsent.backtest.run import ScoreCache, run_backtest
import finsent.backtest.run as _rm

ORIG = _rm.prompt_gil_handoff
from finsent.heap import freeze_startup_objects
from finsent.model.placement import calls_for_threads, side_by_side
from finsent.records import NewsItem
from finsent.settings import load
from finsent.model import Classifier

settings = load()
side = side_by_side(settings.model)
calls = calls_for_threads(side.threads)
clf = Classifier.from_settings(None, side)
clf.ready_for_calls(calls)
data = texts(3000)
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
freeze_startup_objects()
clf.predict(data[:256])
one_at_a_time = Classifier.from_settings(None, settings.model)
one_at_a_time.predict(data[:256])
chunks = [data[i : i + 256] for i in range(0, len(data), 256)]


def bare():
    s = time.perf_counter()
    for c in chunks:
        one_at_a_time.predict(c)
    s = time.perf_counter()
    with ThreadPoolExecutor(calls) as pool:
        list(pool.map(clf.predict, chunks))
    return len(data) / (time.perf_counter() - s)


tmp = Path(tempfile.mkdtemp())
ratios = {}
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 4
for k in range(rounds):
    order = ["on", "off"]
    for si in order if k % 2 == 0 else order[::-1]:
        import contextlib, finsent.backtest.run as runmod

        runmod.prompt_gil_handoff = ORIG if si == "on" else contextlib.nullcontext
        b0 = bare()
        cache = ScoreCache(tmp / f"c{k}-{si}.sqlite")
        r = run_backtest(settings, items, tmp / f"r{k}-{si}", "m", clf.predict, cache, 256, calls_at_once=calls)
        cache.close()
        b1 = bare()
        ratio = r.items_per_s / max(b0, b1)
        ratios.setdefault(si, []).append(ratio)
        print(f"round {k} si {si}: bare {b0:.0f}/{b1:.0f} backtest {r.items_per_s:.0f} ratio {ratio:.3f}", flush=True)
for si, rs in ratios.items():
    print(f"si {si}: median {statistics.median(rs):.3f} mean {statistics.mean(rs):.3f} {['%.3f' % x for x in rs]}")
