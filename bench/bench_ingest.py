"""Ingest benchmarks, all figures measured in one run.

    .venv/bin/python bench/bench_ingest.py [--items 100000] [--store 1000000] [--publish 20000]

1. parse + normalise + dedup, items/s, over ``--items`` synthetic entries in 1,000-entry RSS documents
   (headlines from the shipped demo sample, made unique with a counter);
2. near-duplicate dedup: microseconds per ``check`` with ``--store`` items already marked;
3. publishing to the embedded broker (Tansu, acks=all): finsent's KafkaSink vs a raw kafka-python
   producer loop (same acks, same payloads), and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from finsent.ingest.dedup import Deduper, minhash
from finsent.ingest.normalize import normalize
from finsent.ingest.parse import parse
from finsent.local.feeds import load_rows, rss
from finsent.records import NewsItem

ROOT = Path(__file__).resolve().parents[1]


def headlines(n: int) -> list[str]:
    texts = [t for _, t in load_rows()]
    rng = random.Random(1)
    return [f"{texts[i % len(texts)]} {rng.choice(['today', 'update', 'report', 'alert'])} #{i}" for i in range(n)]


def bench_pipeline(n: int) -> dict:
    now = datetime.now(UTC)
    texts = headlines(n)
    docs = [
        rss(
            f"f{d}",
            [
                (f"g{d}-{i}", t, f"https://news.example/{d}/{i}", now - timedelta(seconds=i))
                for i, t in enumerate(texts[d * 1000 : (d + 1) * 1000])
            ],
        )
        for d in range(n // 1000)
    ]
    dedup = Deduper()
    accepted = 0
    started = time.perf_counter()
    for d, doc in enumerate(docs):
        for entry in parse(doc).entries:
            item = normalize(entry, source=f"f{d}", fetched=now)
            if not dedup.check(item).duplicate:
                dedup.mark(item)
                accepted += 1
    seconds = time.perf_counter() - started
    return {"items": n, "accepted": accepted, "seconds": seconds, "items_per_s": n / seconds}


def bench_dedup_at_scale(store: int, queries: int = 5000) -> dict:
    now = datetime.now(UTC)
    texts = headlines(store + queries)
    d = Deduper(horizon=timedelta(days=3650))
    started = time.perf_counter()
    for i in range(store):
        d.mark(NewsItem(id=f"s{i}", title=texts[i], source="s", published=now, fetched=now))
    fill = time.perf_counter() - started
    probes = [
        NewsItem(id=f"q{i}", title=texts[store + i], source="q", published=now, fetched=now) for i in range(queries)
    ]
    started = time.perf_counter()
    dups = sum(d.check(p).duplicate for p in probes)
    per_check = (time.perf_counter() - started) / queries
    return {
        "store": store,
        "fill_seconds": fill,
        "check_us": per_check * 1e6,
        "queries": queries,
        "near_duplicates_found": dups,
        "minhash_us": _time_minhash(texts[:2000]),
    }


def _time_minhash(texts: list[str]) -> float:
    started = time.perf_counter()
    for t in texts:
        minhash(t)
    return (time.perf_counter() - started) / len(texts) * 1e6


def bench_publish(n: int) -> dict:
    from kafka import KafkaProducer

    from finsent.ingest.sinks import KafkaSink
    from finsent.kafka import ensure_topics
    from finsent.local.broker import broker_child
    from finsent.net import free_port, port_open
    from finsent.settings import TopicSpec

    port = free_port()
    broker = broker_child("127.0.0.1", port, Path("/tmp") / f"finsent-bench-{uuid.uuid4().hex[:6]}")
    broker.start(lambda: port_open("127.0.0.1", port), 15)
    bootstrap = f"127.0.0.1:{port}"
    try:
        ensure_topics(
            bootstrap, [TopicSpec(name="bench.sink", partitions=4), TopicSpec(name="bench.raw", partitions=4)]
        )
        now = datetime.now(UTC)
        items = [
            NewsItem(id=f"p{i}", title=t, source="bench", published=now, fetched=now)
            for i, t in enumerate(headlines(n))
        ]
        payloads = [(i.id.encode(), i.to_json()) for i in items]

        raw = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        started = time.perf_counter()
        futures = [raw.send("bench.raw", key=k, value=v) for k, v in payloads]
        raw.flush()
        assert all(f.succeeded() for f in futures)
        raw_s = time.perf_counter() - started
        raw.close()

        sink = KafkaSink(bootstrap, "bench.sink")

        async def run() -> int:
            acked = 0
            for start in range(0, len(items), 1000):  # the poller hands the sink one feed's batch at a time
                acked += len(await sink.send(items[start : start + 1000]))
            await sink.close()
            return acked

        started = time.perf_counter()
        acked = asyncio.run(run())
        sink_s = time.perf_counter() - started
        assert acked == n
        return {
            "items": n,
            "raw_producer_per_s": n / raw_s,
            "kafka_sink_per_s": n / sink_s,
            "ratio_sink_vs_raw": raw_s / sink_s,
        }
    finally:
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--store", type=int, default=1_000_000)
    ap.add_argument("--publish", type=int, default=20_000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest-cpu.json")
    args = ap.parse_args()
    results = {}
    results["pipeline"] = r = bench_pipeline(args.items)
    print(
        f"parse+normalise+dedup: {r['items_per_s']:,.0f} items/s ({r['items']:,} items, {r['seconds']:.1f} s)",
        flush=True,
    )
    results["publish"] = r = bench_publish(args.publish)
    print(
        f"publish acks=all: KafkaSink {r['kafka_sink_per_s']:,.0f}/s, raw producer {r['raw_producer_per_s']:,.0f}/s, "
        f"ratio {r['ratio_sink_vs_raw']:.2f}",
        flush=True,
    )
    results["dedup_at_scale"] = r = bench_dedup_at_scale(args.store)
    print(
        f"near-dup check with {r['store']:,} stored: {r['check_us']:.1f} us/item (minhash alone {r['minhash_us']:.1f} us; "
        f"fill {r['fill_seconds']:.0f} s)",
        flush=True,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": f"python bench/bench_ingest.py --items {args.items} --store {args.store} "
                f"--publish {args.publish}",
                **results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
