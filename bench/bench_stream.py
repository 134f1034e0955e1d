"""Stream benchmarks, all figures measured in one run.

    .venv/bin/python bench/bench_stream.py [--items 3000] [--latency-s 60] [--core 1000000] [--backend auto]

1. bare ``Classifier.predict`` throughput at the worker's batch size (``stream.max_batch``) on demo
   headlines, in this process;
2. end-to-end throughput through the embedded broker and a real ``finsent worker`` process (publish
   ``--items`` headlines, time until the worker's ``items_scored_total`` counts them all), and its ratio to 1;
3. published→scored latency (raw record's Kafka timestamp → scored record's Kafka timestamp), p50/p99, at a
   fixed offered load of 50 % of the end-to-end capacity measured in 2, for ``--latency-s`` seconds;
4. window + surge core throughput (events/s) on ``--core`` synthetic observations, and the state it holds
   at the end (bounded by eviction).

On a 2-core machine the benchmark process, the broker and the worker share the cores; the ratio in 2
includes that contention (it is what a one-box deployment gets).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from benchkit import write_results
from kafka import KafkaProducer

from finsent.ingest.localfeeds import load_rows
from finsent.labels import TOPIC_LABELS
from finsent.procs import Child, free_port, http_ok, port_open
from finsent.records import Evidence, NewsItem
from finsent.settings import load
from finsent.stream.embedded_broker import broker_child
from finsent.stream.pipeline import Aggregation
from finsent.stream.topics import ensure_topics, read_all
from finsent.stream.windows import Observation, keys_for

ROOT = Path(__file__).resolve().parents[1]


def texts(n: int) -> list[str]:
    rows = [t for _, t in load_rows()]
    return [f"{rows[i % len(rows)]} #{i}" for i in range(n)]


def bench_bare(backend: str, batch: int, n: int = 2000) -> dict:
    from finsent.model import Classifier

    clf = Classifier.load(backend=backend, batch_size=load().model.batch_size)
    data = texts(n)
    clf.predict(data[:batch])  # warm-up
    started = time.perf_counter()
    for i in range(0, n, batch):
        clf.predict(data[i : i + batch])
    seconds = time.perf_counter() - started
    return {"backend": clf.backend.name, "model": clf.version, "batch": batch, "texts": n, "texts_per_s": n / seconds}


def metric(url: str, name: str) -> float:
    for line in httpx.get(url, timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def scored_total(url: str) -> float:
    return metric(url, "finsent_worker_items_scored_total")


def scored_timestamps(bootstrap: str, topic: str) -> list[tuple[str, int]]:
    """(item id, Kafka timestamp in ms) of every scored record (read to the fetch high watermark: Tansu's
    end offsets stop at the last batch's base offset + 1, see ``read_all``)."""
    return [(r.key.decode(), r.timestamp) for r in read_all(bootstrap, topic, timeout_s=120)]


def items(n: int, prefix: str) -> list[NewsItem]:
    now = datetime.now(UTC)
    return [NewsItem(id=f"{prefix}{i}", title=t, source="bench", published=now, fetched=now) for i, t in enumerate(texts(n))]


def bench_end_to_end(n: int, latency_s: float, backend: str, tmp: Path, worker_args: tuple[str, ...] = ()) -> dict:
    port, metrics_port = free_port(), free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker = broker_child("127.0.0.1", port, tmp / "logs")
    broker.start(lambda: port_open("127.0.0.1", port), 15)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
    env.update({"FINSENT_KAFKA__BOOTSTRAP": bootstrap, "FINSENT_STREAM__METRICS_PORT": str(metrics_port),
                "FINSENT_PATHS__STATE_DIR": str(tmp / "state"), "FINSENT_MODEL__BACKEND": backend, "FINSENT_LOG_JSON": "1"})
    settings = load(kafka={"bootstrap": bootstrap})
    ensure_topics(bootstrap, settings.topics.all())
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    worker = Child("worker", [sys.executable, "-m", "finsent.cli", "--log-level", "WARNING", "worker", *worker_args], tmp / "logs" / "worker.log", env=env)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    raw = settings.topics.raw.name
    try:
        worker.start(http_ok(url), 120)
        warm = items(64, "warm-")
        for it in warm:
            producer.send(raw, key=it.id.encode(), value=it.to_json())
        producer.flush()
        deadline = time.monotonic() + 120
        while scored_total(url) < len(warm):  # group joined, model warm
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.1)
        base = scored_total(url)
        infer0, batches0 = metric(url, "finsent_worker_inference_seconds_sum"), metric(url, "finsent_worker_batch_size_count")
        batch = [(it.id.encode(), it.to_json()) for it in items(n, "tput-")]
        started_ms = time.time() * 1000
        for key, value in batch:
            producer.send(raw, key=key, value=value)
        producer.flush()
        while scored_total(url) < base + n:
            time.sleep(0.5)  # slow polling: scraping /metrics costs the worker CPU too
        # The end is the broker's timestamp of the last scored record, not when we happened to look.
        last_ms = max(ts for key, ts in scored_timestamps(bootstrap, settings.topics.scored.name) if key.startswith("tput-"))
        seconds = (last_ms - started_ms) / 1000
        capacity = n / seconds
        inference_s = metric(url, "finsent_worker_inference_seconds_sum") - infer0
        batches = metric(url, "finsent_worker_batch_size_count") - batches0

        # Latency at half the capacity: paced sends, Kafka timestamps on both sides.
        rate = capacity / 2
        lat_items = items(int(rate * latency_s), "lat-")
        sent_at: dict[str, int] = {}
        t0 = time.perf_counter()
        for i, it in enumerate(lat_items):
            target = t0 + i / rate
            while (now := time.perf_counter()) < target:
                time.sleep(min(0.005, target - now))
            ts = int(time.time() * 1000)
            sent_at[it.id] = ts
            producer.send(raw, key=it.id.encode(), value=it.to_json(), timestamp_ms=ts)
        producer.flush()
        while scored_total(url) < base + n + len(lat_items):
            time.sleep(0.1)
        latencies = sorted((ts - sent_at[key]) / 1000 for key, ts in scored_timestamps(bootstrap, settings.topics.scored.name)
                           if key in sent_at)
        q = statistics.quantiles(latencies, n=100)
        return {
            "items": n, "seconds": seconds, "end_to_end_per_s": capacity,
            "inference_seconds_in_worker": inference_s, "inference_share": inference_s / seconds,
            "inference_per_s_in_worker": n / inference_s if inference_s else None, "batches": batches,
            "latency": {"offered_per_s": rate, "seconds": latency_s, "items": len(latencies),
                        "p50_s": q[49], "p99_s": q[98], "max_s": latencies[-1]},
        }
    finally:
        producer.close()
        worker.stop()
        broker.stop()


def bench_core(n: int) -> dict:
    settings = load()
    agg = Aggregation(settings)
    rng = random.Random(7)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    pool = [Evidence(item_id=f"e{i}", title=f"headline {i}", source="s", published=t0, p_negative=rng.random()) for i in range(1000)]
    tickers = [f"T{i:03d}" for i in range(200)]
    sentiments = ("negative", "neutral", "positive")
    obs = []
    for i in range(n):
        topic = TOPIC_LABELS[rng.randrange(len(TOPIC_LABELS))]
        tk = (tickers[rng.randrange(200)],) if rng.random() < 0.3 else ()
        s = sentiments[rng.randrange(3)]
        obs.append(Observation(f"i{i}", t0 + timedelta(seconds=i * 0.05 + rng.uniform(-5, 5)), keys_for(topic, tk), s,
                               {"negative": -0.8, "neutral": 0.0, "positive": 0.8}[s], pool[i % 1000]))
    windows = alerts = 0
    started = time.perf_counter()
    for o in obs:
        out = agg.add_observation(o, lane=0)
        windows += len(out.windows)
        alerts += len(out.alerts)
    seconds = time.perf_counter() - started
    buckets, ids = agg.store.size()
    return {"events": n, "seconds": seconds, "events_per_s": n / seconds, "windows_closed": windows, "alerts": alerts,
            "late": agg.store.late, "state_buckets_at_end": buckets, "state_ids_at_end": ids,
            "event_span_hours": n * 0.05 / 3600}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--latency-s", type=float, default=60.0)
    ap.add_argument("--core", type=int, default=1_000_000)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--no-aggregate", action="store_true", help="Scoring only (the aggregator's share of the CPU)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stream-cpu.json")
    args = ap.parse_args()
    batch = load().stream.max_batch
    results: dict = {}
    results["bare"] = r = bench_bare(args.backend, batch)
    print(f"bare Classifier.predict ({r['backend']}, batch {batch}): {r['texts_per_s']:.0f} texts/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="finsent-bench-") as tmp:
        results["end_to_end"] = r = bench_end_to_end(args.items, args.latency_s, args.backend, Path(tmp),
                                                         ("--no-aggregate",) if args.no_aggregate else ())
    ratio = r["end_to_end_per_s"] / results["bare"]["texts_per_s"]
    results["ratio_end_to_end_vs_bare"] = ratio
    print(f"end to end (broker + worker): {r['end_to_end_per_s']:.0f} items/s = {ratio:.2f} x bare; inside the worker "
          f"inference ran {r['inference_share']:.0%} of the time at {r['inference_per_s_in_worker']:.0f} texts/s "
          f"in {r['batches']:.0f} batches", flush=True)
    lat = r["latency"]
    print(f"published->scored at {lat['offered_per_s']:.0f}/s offered: p50 {lat['p50_s'] * 1000:.0f} ms, "
          f"p99 {lat['p99_s'] * 1000:.0f} ms ({lat['items']} items)", flush=True)
    results["core"] = r = bench_core(args.core)
    print(f"window+surge core: {r['events_per_s']:.0f} events/s over {r['events']} events "
          f"({r['windows_closed']} windows closed, state at end: {r['state_buckets_at_end']} buckets, "
          f"{r['state_ids_at_end']} ids)", flush=True)
    write_results(results, (f"python bench/bench_stream.py --items {args.items} --latency-s {args.latency_s:g} "
                          f"--core {args.core} --backend {args.backend}" + (" --no-aggregate" if args.no_aggregate else "")), args.out)


if __name__ == "__main__":
    main()
