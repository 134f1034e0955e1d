"""``finsent replay``: the archive back into ``finsent.news.raw`` in event-time order, through the live path.

Gaps between headlines are kept, divided by the speed factor (``60x``: an hour of news in a minute;
``max``: no waiting). Items are published with acks=all, a batch at a time; after each acknowledged
batch a small state file records how far the replay got, so an interrupted replay of the same range
resumes where it stopped instead of starting over (the worker would count repeats once anyway, but
a quant's hour-long replay should not start again from zero).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from finsent.records import NewsItem

log = logging.getLogger("finsent.ingest.replay")


def parse_speed(value: str) -> float | None:
    """``60x`` / ``60`` → 60.0; ``max`` → None (no waiting)."""
    v = value.strip().lower()
    if v == "max":
        return None
    try:
        speed = float(v[:-1] if v.endswith("x") else v)
    except ValueError:
        raise ValueError(f"speed must look like 60x or max, got {value!r}") from None
    if speed <= 0:
        raise ValueError("speed must be positive")
    return speed


def state_path(state_dir: Path, start: datetime | None, end: datetime | None, topic: str) -> Path:
    key = hashlib.sha256(f"{start}|{end}|{topic}".encode()).hexdigest()[:16]
    return state_dir / "replay" / f"{key}.json"


@dataclass
class ReplayReport:
    published: int
    skipped: int  # already published by an earlier, interrupted run of the same range
    failed: int
    seconds: float


def replay(
    items: Iterable[NewsItem],
    send: Callable[[list[NewsItem]], list[NewsItem]],
    speed: float | None,
    state_file: Path,
    batch: int = 200,
    progress: Callable[[int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ReplayReport:
    """``send`` publishes a batch and returns the items acknowledged (KafkaSink semantics)."""
    done = json.loads(state_file.read_text())["published"] if state_file.exists() else 0
    state_file.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    published = skipped = failed = 0
    pending: list[NewsItem] = []
    first_event: float | None = None
    wall0 = 0.0

    def flush() -> None:
        nonlocal published, failed, pending
        if not pending:
            return
        acked = send(pending)
        if len(acked) < len(pending):
            failed += len(pending) - len(acked)
            raise RuntimeError(f"{len(pending) - len(acked)} items not acknowledged by the broker; rerun to resume")
        published += len(acked)
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"published": done + published}))
        tmp.replace(state_file)
        if progress:
            progress(len(acked))
        pending = []

    for i, item in enumerate(items):
        if i < done:
            skipped += 1
            continue
        if speed is not None:
            at = item.published.timestamp()
            if first_event is None:
                first_event, wall0 = at, clock()
            due = wall0 + (at - first_event) / speed  # an absolute schedule: send time does not accumulate
            wait = due - clock()
            if wait > 0:
                flush()  # what is due goes out before we wait
                sleep(wait)
        pending.append(item)
        if len(pending) >= batch:
            flush()
    flush()
    return ReplayReport(published, skipped, failed, time.monotonic() - started)


def kafka_sender(sink) -> Callable[[list[NewsItem]], list[NewsItem]]:
    """A blocking ``send`` over the async KafkaSink (acks=all)."""
    return lambda batch: asyncio.run(sink.send(batch))


__all__ = ["ReplayReport", "kafka_sender", "parse_speed", "replay", "state_path"]
