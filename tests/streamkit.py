"""Helpers for tests that run real worker processes against the real (Tansu) broker.

Each test gets its own topic names on the session broker, so tests never see each other's records.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conftest import environ_without_finsent
from factories import news_item
from kafka import KafkaProducer

from finsent.kafka import ensure_topics, read_all
from finsent.local.procs import Child, http_ok
from finsent.net import free_port
from finsent.records import NewsItem
from finsent.settings import Topics, load

ROOT = Path(__file__).resolve().parents[1]
TOPICS = tuple(Topics.model_fields)  # every topic the settings name: each test gets its own of each

# Small event-time windows so a test sees many of them: 10 s buckets, surge watched on 30 s windows.
FAST_WINDOWS = {
    "FINSENT_WINDOWS__BUCKET_SECONDS": "10",
    "FINSENT_WINDOWS__ROLLING_SECONDS": "[10, 30, 60]",
    "FINSENT_WINDOWS__WATERMARK_DELAY_S": "5",
    "FINSENT_WINDOWS__IDLE_CLOSE_S": "1",
    "FINSENT_SURGE__WINDOW_S": "30",
    "FINSENT_SURGE__WARMUP_WINDOWS": "3",
    "FINSENT_SURGE__MIN_VOLUME": "5",
}


def worker_env(bootstrap: str, tmp: Path, **extra: str) -> dict[str, str]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    env = environ_without_finsent()
    env.update(
        {
            "FINSENT_KAFKA__BOOTSTRAP": bootstrap,
            "FINSENT_PATHS__STATE_DIR": str(tmp / "state"),
            "FINSENT_STREAM__METRICS_PORT": str(free_port()),
            "FINSENT_STREAM__GROUP_ID": f"{prefix}-worker",
            "FINSENT_LOG_JSON": "1",
            **{f"FINSENT_TOPICS__{t.upper()}__NAME": f"{prefix}.{t}" for t in TOPICS},
        }
    )
    env.update(extra)
    return env


def settings_from(env: dict[str, str]):
    """The Settings a worker started with ``env`` sees."""
    saved = dict(os.environ)
    try:
        os.environ.update({k: v for k, v in env.items() if k.startswith("FINSENT_")})
        return load()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def create_topics(env: dict[str, str]) -> None:
    s = settings_from(env)
    ensure_topics(s.kafka.bootstrap, s.topics.all())


def topic(env: dict[str, str], name: str) -> str:
    return env[f"FINSENT_TOPICS__{name.upper()}__NAME"]


def metrics_url(env: dict[str, str]) -> str:
    return f"http://127.0.0.1:{env['FINSENT_STREAM__METRICS_PORT']}/metrics"


def start_worker(env: dict[str, str], log: Path, *args: str) -> Child:
    child = Child("worker", [sys.executable, "-m", "finsent.cli", "worker", *args], log, env=env)
    child.start(http_ok(metrics_url(env)), timeout=90)
    return child


def headlines(n: int, start: datetime, step_s: float, prefix: str = "n", burst: range = range(0)) -> list[NewsItem]:
    """``n`` items ``step_s`` apart in event time; indices in ``burst`` are negative oil headlines."""
    from finsent.local.feeds import load_rows

    rows = load_rows()
    background = [t for kind, t in rows if kind == "background"]
    negative = [t for kind, t in rows if kind == "burst"]
    out = []
    for i in range(n):
        at = start + timedelta(seconds=i * step_s)
        title = negative[i % len(negative)] if i in burst else background[i % len(background)]
        out.append(news_item(f"{prefix}{i}", title, at=at, source="test-wire", tickers=("XOM",) if i % 7 == 0 else ()))
    return out


def publish(bootstrap: str, name: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for key, value in records:
        producer.send(name, key=key, value=value)
    producer.flush(30)
    producer.close()


def publish_items(bootstrap: str, name: str, items: list[NewsItem]) -> None:
    publish(bootstrap, name, [(it.id.encode(), it.to_json()) for it in items])


def read_topic(bootstrap: str, name: str, timeout_s: float = 10.0) -> list:
    """Every record currently in the topic (all partitions). Not "up to the end offsets": Tansu reports the
    last batch's base offset + 1 there (see ``finsent.kafka.read_all`` and tests/integration/test_offsets.py)."""
    return read_all(bootstrap, name, timeout_s)


def wait_for(check, timeout_s: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


def kill_9_partway(child: Child, progress, at_least: int, total: int, timeout_s: float = 120) -> int:
    """SIGKILL ``child`` once ``progress()`` has reached ``at_least`` and before it reaches ``total``; the progress
    seen at the kill.

    Waiting for progress while the child runs freely races: reading a topic the child is still writing goes on
    until the writes pause, so on a loaded machine the child could finish during the reading and the test proved
    nothing (CI failed so). Here the child's process group runs in slices and is frozen (SIGSTOP) while progress is
    read, so the reading is quick and the child advances at most one slice past it; a slice is sized from the rate
    seen so far to cover a quarter of what is left, and at most doubles. The kill lands wherever the last slice
    stopped the child, often with results produced and not yet committed."""
    assert child.proc is not None
    group = child.proc.pid
    deadline = time.monotonic() + timeout_s
    done, slice_s = 0, 0.25
    try:
        while True:
            os.killpg(group, signal.SIGSTOP)
            before, done = done, progress()
            if done >= at_least:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {at_least} done (last: {done})")
            rate = (done - before) / slice_s
            # The slice where progress first shows says little about the rate (the child may have spent most of it
            # starting up), and a slice at most doubles: a rate misread low cannot buy one long slice.
            if rate <= 0 or before == 0:
                slice_s = 0.25
            else:
                slice_s = min(2.0, 2 * slice_s, max(0.05, (total - done) / (4 * rate)))
            os.killpg(group, signal.SIGCONT)
            time.sleep(slice_s)
        os.killpg(group, signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGCONT)  # never leave a frozen child behind
    child.proc.wait(10)
    assert done < total, f"{child.name} finished all {total} before it was killed: the test would prove nothing"
    return done


def past(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)
