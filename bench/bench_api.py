"""``POST /classify`` latency and throughput, all figures measured in one run.

    .venv/bin/python bench/bench_api.py [--requests 200] [--backend auto] [--out bench/results/api-cpu.json]

A real ``finsent serve`` process on 127.0.0.1 (the shipped model), driven over HTTP by this process:

1. bare ``Classifier.predict`` in this process, 1 text and 32 texts per call (the floor the API adds to); at 32,
   one call at a time (as the stream runs its model), as the API runs it (``web.classify_concurrency`` calls side
   by side, each on its share of the cores) and one one-thread call per core side by side; the highest of the
   three is the goal's reference;
2. one client, 1 headline per request, sequential: latency p50/p99 and requests/s;
3. one client, 32 headlines per request: texts/s, and its ratio to bare predict at batch 32;
4. 8 concurrent clients, 1 headline each: latency p50/p99 and requests/s. The API coalesces concurrent
   requests into one model call (``web.classify_max_batch`` / ``web.classify_max_wait_ms``); how many texts
   its model calls held in this phase is read from ``finsent_api_classify_batch_texts`` on /metrics
   (measured, not assumed), and the CPU time per request of the server and of this client from /proc.

Goals (issue #18, printed MET / MISSED): with 8 concurrent single-headline clients, throughput >= 0.8 x
bare ``predict`` at batch 32, and p99 <= 100 ms. On a 2-core machine client, server and model share the
cores, so the client is kept light: texts read once, not per request, and a bare keep-alive HTTP/1.1 client
(``Connection``) instead of httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from benchkit import command_of, goal, info_labels, write_results

from finsent.local.feeds import load_rows
from finsent.local.procs import Child, http_ok
from finsent.net import free_port
from finsent.settings import Settings, load

ROOT = Path(__file__).resolve().parents[1]
GOAL_VS_BARE = 0.8  # 8 concurrent single-headline clients: texts/s against bare predict at batch 32
GOAL_P99_MS = 100.0


def process_cpu(pid: int) -> float:
    """CPU seconds used so far by process ``pid``, ended threads included (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@functools.cache
def _rows() -> tuple[str, ...]:
    """Read once: parsing the demo feed for every request cost the client ~4 ms of CPU per request, taken
    from the server it measures on the same 2 cores."""
    return tuple(t for _, t in load_rows())


def texts(n: int, offset: int = 0) -> list[str]:
    rows = _rows()
    return [f"{rows[(offset + i) % len(rows)]} #{offset + i}" for i in range(n)]


def batch_histogram(base: str) -> tuple[float, float]:
    """(model calls, texts) so far, from the API's coalesced batch-size histogram."""
    calls = texts_ = 0.0
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith("finsent_api_classify_batch_texts_count "):
            calls = float(line.rsplit(" ", 1)[1])
        elif line.startswith("finsent_api_classify_batch_texts_sum "):
            texts_ = float(line.rsplit(" ", 1)[1])
    return calls, texts_


def model_info(metrics_text: str) -> dict[str, str]:
    """The labels of ``finsent_api_model_info`` in a /metrics page: model, backend, recipe, accepted ({}: none)."""
    return info_labels(metrics_text, "finsent_api_model_info")


def check_same_model(bare: dict, served: dict[str, str]) -> None:
    """Stop before measuring when the server serves another model, backend or graph than the bare reference ran
    in this process (``auto`` resolved differently, an int8 graph that fell back): every ratio against bare
    predict would compare two different models. Why: nothing checked it, unlike bench_stream's worker."""
    want = {"model": bare["model"], "backend": bare["backend"], "recipe": bare["recipe"]}
    got = {k: served.get(k) for k in want}
    if got != want:
        raise SystemExit(
            f"bench_api: the server serves {got}, the bare reference ran {want}; the ratios would compare two "
            f"models, so nothing is measured (set --backend to the one you mean, or see the server's log)"
        )


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def bare_rates(clf, singles: list[str], chunks: list[list[str]], calls: int = 1) -> tuple[float, float]:
    """(texts/s scoring ``singles`` one per call, texts/s scoring ``chunks`` ``calls`` at a time side by side).

    Each rate divides by the texts it timed: the first once timed at most the 640 chunked texts but divided by
    ``--requests``, so a run with more requests reported an inflated batch-1 rate."""
    from concurrent.futures import ThreadPoolExecutor

    clf.predict(chunks[0])  # warm-up
    t0 = time.perf_counter()
    for t in singles:
        clf.predict([t])
    one = len(singles) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(calls) as pool:
        list(pool.map(clf.predict, chunks))
    return one, sum(map(len, chunks)) / (time.perf_counter() - t0)


def bench_bare(settings: Settings, n: int) -> dict:
    from finsent.model import Classifier
    from finsent.model.placement import calls_at_once, side_by_side
    from finsent.web.state import api_model

    data = texts(32 * 20)
    chunks = [data[i : i + 32] for i in range(0, len(data), 32)]
    singles = texts(n)  # as many as --requests, however many that is

    def rates(clf, calls: int = 1) -> tuple[float, float]:
        return bare_rates(clf, singles, chunks, calls)

    # Three references, the highest one is the goal's: (a) as the stream serves one call at a time (forwards of
    # model.batch_size over every core: model.sessions) but with ORT's spinning threads where a session has a pool,
    # which a bare loop can afford; (b) as the API runs its model: web.classify_concurrency calls side by side,
    # each on its share of the cores (finsent.web.state.api_model), in calls of 32; (c) one single-threaded call
    # per core side by side, however the API is set, so that the reference does not fall with the API's setting.
    clf = Classifier.from_settings(None, settings.model.model_copy(update={"spin_wait": True}))
    one, batch = rates(clf)
    served = Classifier.from_settings(None, api_model(settings))
    calls = calls_at_once(served, settings.web.classify_concurrency)  # as the API counts them
    served.ready_for_calls(calls)  # as the API does: a session per call, built before the clock starts
    _, as_served = rates(served, calls)
    per_core = Classifier.from_settings(None, side_by_side(settings.model))
    per_core.ready_for_calls(calls_at_once(per_core))
    _, side = rates(per_core, calls_at_once(per_core))
    return {
        "backend": clf.backend.name,
        "recipe": getattr(clf.backend, "recipe", None),  # the graph: the server must serve the same
        "model": clf.version,
        "texts_per_s_batch1": one,
        "texts_per_s_batch32_one_call_at_a_time": batch,
        "texts_per_s_batch32_as_served": as_served,
        "texts_per_s_batch32_one_call_per_core": side,
        "served_calls_at_once": calls,
        "texts_per_s_batch32": max(batch, as_served, side),
    }


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads the answer, and nothing more.

    Why not httpx: the client runs on the same 2 cores as the server it measures, and httpx spent 1.2 ms of CPU
    per request (a quarter of the server's own), so the figure measured the client as much as the API. This
    costs ~0.1 ms. Every answer is still checked: status 200 and one result per text sent."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader, self.writer, self.host = reader, writer, host.encode()

    @classmethod
    async def open(cls, url: str) -> Connection:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer, parts.netloc)

    async def post(self, path: str, texts: list[str]) -> None:
        body = json.dumps({"texts": texts}).encode()
        self.writer.write(
            b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (path.encode(), self.host, len(body), body)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = next(int(line[15:]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
        answer = await self.reader.readexactly(length)
        status = int(head.split(b" ", 2)[1])
        if status != 200 or len(json.loads(answer)["results"]) != len(texts):
            raise RuntimeError(f"POST {path}: {status} {answer[:200]!r}")

    def close(self) -> None:
        self.writer.close()


async def clients_run(url: str, n: int, clients: int, batch: int) -> dict:
    """``clients`` connections, each posting ``batch`` headlines and waiting for the answer before the next,
    ``n`` requests in all."""
    path = urlsplit(url).path
    latencies: list[float] = []
    connections = [await Connection.open(url) for _ in range(clients)]
    await connections[0].post(path, texts(batch))  # warm-up

    async def client(k: int) -> None:
        for i in range(k, n, clients):
            s = time.perf_counter()
            await connections[k].post(path, texts(batch, i * batch))
            latencies.append(time.perf_counter() - s)

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(client(k) for k in range(clients)))
    finally:
        for c in connections:
            c.close()
    seconds = time.perf_counter() - t0
    return {
        "requests": n,
        "clients": clients,
        "texts_per_request": batch,
        "requests_per_s": n / seconds,
        "texts_per_s": n * batch / seconds,
        "p50_ms": pct(latencies, 0.5) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
    }


def start_server(command: list[str], tmp: Path, name: str) -> tuple[Child, str]:
    """Start an API server process on a free port of 127.0.0.1 and wait until /readyz answers."""
    port = free_port()
    env = {
        **os.environ,
        "FINSENT_WEB__PORT": str(port),
        "FINSENT_PATHS__STATE_DIR": str(tmp),
        "FINSENT_KAFKA__BOOTSTRAP": "127.0.0.1:1",
    }
    base = f"http://127.0.0.1:{port}"
    server = Child(name, command, tmp / f"{name}.log", env=env)
    server.start(http_ok(base + "/readyz"), timeout=120)
    return server, base


def http_stack(tmp: Path, n: int) -> dict:
    """8 single-headline clients against the same app in front of an instant stand-in model
    (``bench/api_stand_in.py``): the server's CPU per request is then the HTTP stack's and the batcher's alone."""
    server, base = start_server([sys.executable, str(Path(__file__).with_name("api_stand_in.py"))], tmp, "stand-in")
    try:
        asyncio.run(clients_run(base + "/classify", 200, 8, 1))  # warm-up
        server0 = process_cpu(server.pid)
        r = asyncio.run(clients_run(base + "/classify", 4 * n, 8, 1))
        r["server_cpu_ms_per_request"] = (process_cpu(server.pid) - server0) * 1000 / (4 * n)
        return r
    finally:
        server.stop(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "api-cpu.json")
    args = ap.parse_args()
    os.environ["FINSENT_MODEL__BACKEND"] = args.backend  # read by load() here and by the server below
    settings = load()
    results: dict = {"bare": bench_bare(settings, args.requests)}
    b = results["bare"]
    print(
        f"bare predict ({b['backend']}): {b['texts_per_s_batch1']:.0f} texts/s at 1 per call; at 32 per call "
        f"{b['texts_per_s_batch32_one_call_at_a_time']:.0f} one call at a time, "
        f"{b['texts_per_s_batch32_as_served']:.0f} as the API runs it ({b['served_calls_at_once']} calls at once), "
        f"{b['texts_per_s_batch32_one_call_per_core']:.0f} one call per core; "
        f"reference {b['texts_per_s_batch32']:.0f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="finsent-bench-api-") as tmp:
        server, base = start_server([sys.executable, "-m", "finsent.cli", "serve"], Path(tmp), "serve")
        try:
            results["served"] = served = model_info(httpx.get(base + "/metrics", timeout=10).text)
            check_same_model(b, served)
            print(f"server serves {served.get('backend')} ({served.get('recipe')}), as the bare reference", flush=True)
            url = base + "/classify"
            results["single"] = r = asyncio.run(clients_run(url, args.requests, 1, 1))
            print(
                f"1 headline/request, 1 client: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                f"{r['requests_per_s']:.0f} req/s",
                flush=True,
            )
            results["batch32"] = r = asyncio.run(clients_run(url, max(10, args.requests // 10), 1, 32))
            r["ratio_vs_bare_batch32"] = r["texts_per_s"] / b["texts_per_s_batch32"]
            print(
                f"32 headlines/request, 1 client: {r['texts_per_s']:.0f} texts/s = {r['ratio_vs_bare_batch32']:.2f} x bare, "
                f"p50 {r['p50_ms']:.0f} ms",
                flush=True,
            )
            calls0, texts0 = batch_histogram(base)
            server0, client0 = process_cpu(server.pid), process_cpu(os.getpid())
            results["concurrent8"] = r = asyncio.run(clients_run(url, args.requests, 8, 1))
            server1, client1 = process_cpu(server.pid), process_cpu(os.getpid())
            calls1, texts1 = batch_histogram(base)
            r["model_calls"] = calls1 - calls0
            r["texts_per_model_call"] = (texts1 - texts0) / max(1.0, calls1 - calls0)
            r["server_cpu_ms_per_request"] = (server1 - server0) * 1000 / args.requests
            r["client_cpu_ms_per_request"] = (client1 - client0) * 1000 / args.requests
            busy = (server1 - server0 + client1 - client0) / (args.requests / r["requests_per_s"])
            r["idle_share_of_the_cores"] = max(0.0, 1 - busy / (os.cpu_count() or 1))
            r["ratio_vs_bare_batch32"] = r["requests_per_s"] / b["texts_per_s_batch32"]
            r["ratio_vs_bare_batch32_one_call_at_a_time"] = (
                r["requests_per_s"] / b["texts_per_s_batch32_one_call_at_a_time"]
            )
            print(
                f"1 headline/request, 8 clients: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                f"{r['requests_per_s']:.0f} req/s = {r['ratio_vs_bare_batch32']:.2f} x bare at 32 "
                f"({r['ratio_vs_bare_batch32_one_call_at_a_time']:.2f} x one bare call at a time), "
                f"{r['texts_per_model_call']:.1f} texts per model call; CPU per request: server "
                f"{r['server_cpu_ms_per_request']:.2f} ms, client {r['client_cpu_ms_per_request']:.2f} ms",
                flush=True,
            )
            results["goals"] = [
                goal(
                    f"8 clients >= {GOAL_VS_BARE} x bare predict at 32",
                    r["ratio_vs_bare_batch32"],
                    GOAL_VS_BARE,
                    True,
                    " x bare",
                ),
                goal(f"8 clients p99 <= {GOAL_P99_MS:g} ms", r["p99_ms"], GOAL_P99_MS, False, " ms"),
            ]
        finally:
            server.stop(timeout=30)
        results["http_stack"] = h = http_stack(Path(tmp), args.requests)
        model_ms = r["server_cpu_ms_per_request"] - h["server_cpu_ms_per_request"]
        r["where_the_cores_go"] = where = {
            "model_cpu_ms_per_request": model_ms,
            "http_stack_cpu_ms_per_request": h["server_cpu_ms_per_request"],
            "client_cpu_ms_per_request": r["client_cpu_ms_per_request"],
            "idle_share_of_the_cores": r["idle_share_of_the_cores"],
        }
        print(
            f"the same 8 clients against an instant stand-in model: {h['requests_per_s']:.0f} req/s, server CPU "
            f"{h['server_cpu_ms_per_request']:.2f} ms per request (the HTTP stack); so per request with the model: "
            f"model {model_ms:.2f} ms, HTTP {h['server_cpu_ms_per_request']:.2f} ms, client "
            f"{where['client_cpu_ms_per_request']:.2f} ms of CPU, and {where['idle_share_of_the_cores']:.0%} of the "
            "cores idle",
            flush=True,
        )
        for g in results["goals"]:
            print(f"goal: {g['goal']}: {g['value']:.3g} -> {g['verdict']}", flush=True)
    write_results(results, command_of("bench/bench_api.py", ap, args), args.out)


if __name__ == "__main__":
    main()
