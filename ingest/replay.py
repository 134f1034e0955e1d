"""``finsent replay``: the archive back into ``finsent.news.raw`` in event-time order, through the live path.

Gaps between headlines are kept, divided by the speed factor (``60x``: an hour of news in a minute;
``max``: no waiting). Items are published with acks=all, a batch at a time; after each acknowledged
batch a small state file records how far the replay got, so an interrupted replay of the same range
resumes where it stopped instead of starting over (the worker would count repeats once anyway, but
a quant's hour-long replay should not start again from zero).

How far is a *position* in the archive's (event time, id) order, not a count: the archive may gain
items between the runs (an import, ingest still running), and a count then points at the wrong item.
Items inserted *behind* the position are caught too: the state keeps, per event day, a digest (count
and id-hash sum) of the items at or before the position; a day whose digest changed is sent again up
to the position (repeats, which the worker counts once, rather than a silent gap).

The state belongs to one log: it is keyed by the broker's bootstrap address (with the range and the topic),
and it records the topic's id on that broker (``log_id``: ``finsent.kafka.TopicIdWatch``). A broker that lost its log (the embedded
Tansu keeps it in memory) or a topic deleted and created again has a new id: the state then describes
records that are gone, so it is dropped (one log line) and everything is sent again, instead of "already
sent by an earlier run" and nothing in the topic.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from finsent.errors import BrokerUnavailable, ConfigError
from finsent.files import replace_text
from finsent.records import NewsItem

log = logging.getLogger("finsent.ingest.replay")


def parse_speed(value: str) -> float | None:
    """``60x`` / ``60`` → 60.0; ``max`` → None (no waiting). ``nan`` and ``inf`` are refused: a NaN wait is
    never positive, so ``nan`` replayed at full speed while it looked like a paced replay."""
    v = value.strip().lower()
    if v == "max":
        return None
    try:
        speed = float(v[:-1] if v.endswith("x") else v)
    except ValueError:
        raise ConfigError(f"speed must look like 60x or max, got {value!r}") from None
    if not math.isfinite(speed) or speed <= 0:
        raise ConfigError(f"speed must be a finite positive number like 60x, or max (got {value!r})")
    return speed


def check_batch(batch: int) -> int:
    """Items per publish round: at least one (0 never sent a thing and said nothing)."""
    if batch < 1:
        raise ConfigError(f"batch must be at least 1 (got {batch})")
    return batch


def state_path(state_dir: Path, start: datetime | None, end: datetime | None, topic: str, bootstrap: str = "") -> Path:
    """The resume state of one range of one topic on one broker: a replay into another broker starts afresh."""
    key = hashlib.sha256(f"{bootstrap}|{start}|{end}|{topic}".encode()).hexdigest()[:16]
    return state_dir / "replay" / f"{key}.json"


@dataclass
class ReplayReport:
    published: int
    skipped: int  # already published by an earlier, interrupted run of the same range
    failed: int
    seconds: float
    caught_up: int = 0  # of ``published``: sent again from days that gained items behind the resume position


Key = tuple[datetime, str]
_MASK = 2**64 - 1


def _key(item: NewsItem) -> Key:
    return item.published, item.id


def _day(item: NewsItem) -> str:
    return item.published.astimezone(UTC).date().isoformat()


def _id_hash(item_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "big")


def _digest(items: Iterable[NewsItem], start: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """(count, sum of id hashes mod 2**64): order-free, so it can grow an item at a time."""
    n, total = start
    for item in items:
        n, total = n + 1, (total + _id_hash(item.id)) & _MASK
    return n, total


@dataclass
class ResumeState:
    """How far a replay got: everything at or before ``position`` was acknowledged, and ``days`` holds the
    digest of those items per event day. ``legacy_count``: a state file of the count-based version. ``log``: the
    topic's id on the broker when the items were sent (None: not known)."""

    position: Key | None = None
    days: dict[str, tuple[int, int]] = field(default_factory=dict)
    published: int = 0
    legacy_count: int = 0
    log: str | None = None

    def started(self) -> bool:
        return self.position is not None or self.legacy_count > 0

    @classmethod
    def load(cls, path: Path) -> ResumeState:
        if not path.exists():
            return cls()
        doc = json.loads(path.read_text())
        if "position" not in doc:  # {"published": N} from before positions: resume by count this once
            return cls(published=doc.get("published", 0), legacy_count=doc.get("published", 0))
        at, item_id = doc["position"] if doc["position"] else (None, "")
        return cls(
            (datetime.fromisoformat(at), item_id) if at else None,
            {d: (n, int(h, 16)) for d, (n, h) in doc["days"].items()},
            doc["published"],
            log=doc.get("log"),
        )

    def save(self, path: Path) -> None:
        doc = {
            "log": self.log,
            "published": self.published,
            "days": {d: [n, f"{h:016x}"] for d, (n, h) in sorted(self.days.items())},
            "position": [self.position[0].isoformat(), self.position[1]] if self.position else None,
        }
        replace_text(path, json.dumps(doc))

    def behind(self, item: NewsItem) -> bool:
        return self.position is not None and _key(item) <= self.position

    def advance(self, items: list[NewsItem]) -> None:
        """``items`` (in order, all after the position) were acknowledged."""
        for item in items:
            self.days[_day(item)] = _digest([item], self.days.get(_day(item), (0, 0)))
        self.position = _key(items[-1])
        self.published += len(items)


def replay(
    items: Iterable[NewsItem],
    send: Callable[[list[NewsItem]], list[NewsItem]],
    speed: float | None,
    state_file: Path,
    batch: int = 200,
    progress: Callable[[int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    log_id: Callable[[], str | None] | None = None,
) -> ReplayReport:
    """``send`` publishes a batch and returns the items acknowledged (KafkaSink semantics).

    ``items`` must come in (published, id) order, as ``Archive.read`` yields them. ``log_id`` (``TopicIdWatch.current``)
    names the log the items go to: a state written for another log is dropped and the replay starts over."""
    check_batch(batch)
    state = ResumeState.load(state_file)
    if log_id is not None:
        now = log_id()
        if state.started() and state.log != now:
            log.warning(
                "replay state belongs to another log of the topic (the broker lost its log or the topic was "
                "created again): sending everything again",
                extra={"state": str(state_file), "log_was": state.log, "log_now": now, "sent_before": state.published},
            )
            state = ResumeState()
        state.log = now
    state_file.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report = ReplayReport(0, 0, 0, 0.0)
    pending: list[NewsItem] = []
    behind: list[NewsItem] = []  # the current day's items at or before the resume position
    first_event: float | None = None
    wall0 = 0.0

    def publish(chunk: list[NewsItem]) -> None:
        acked = send(chunk)
        if len(acked) < len(chunk):
            report.failed += len(chunk) - len(acked)
            raise BrokerUnavailable(f"{len(chunk) - len(acked)} items not acknowledged by the broker; rerun to resume")
        report.published += len(acked)
        if progress:
            progress(len(acked))

    def flush() -> None:
        nonlocal pending
        if pending:
            publish(pending)
            state.advance(pending)
            if state.log is None and log_id is not None:  # the first send created the topic: its id now
                state.log = log_id()
            state.save(state_file)
            pending = []

    def settle() -> None:
        """The resume position's past, one day at a time: skipped if unchanged, sent again if it gained items."""
        nonlocal behind
        if not behind:
            return
        day = _day(behind[0])
        now = _digest(behind)
        if now == state.days.get(day, (0, 0)):
            report.skipped += len(behind)
        else:
            catch_up(day, behind, now, state.days.get(day, (0, 0)))
        behind = []

    def catch_up(day: str, day_items: list[NewsItem], now: tuple[int, int], before: tuple[int, int]) -> None:
        log.warning(
            "archive gained items behind the resume position since the interrupted replay: that day is sent again",
            extra={"day": day, "items": len(day_items), "items_before": before[0]},
        )
        for i in range(0, len(day_items), batch):
            publish(day_items[i : i + batch])
        report.caught_up += len(day_items)
        state.days[day] = now  # only once the whole day is acknowledged: a crash in between sends it again
        state.published += len(day_items)
        state.save(state_file)

    for i, item in enumerate(items):
        if i < state.legacy_count:  # count-based state: trusted once, then replaced by a position
            state.days[_day(item)] = _digest([item], state.days.get(_day(item), (0, 0)))
            state.position = _key(item)
            report.skipped += 1
            continue
        if state.behind(item):
            if behind and _day(behind[0]) != _day(item):
                settle()
            behind.append(item)
            continue
        settle()
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
    settle()
    flush()
    report.seconds = time.monotonic() - started
    return report


def kafka_sender(sink) -> Callable[[list[NewsItem]], list[NewsItem]]:
    """A blocking ``send`` over the async KafkaSink (acks=all)."""
    return lambda batch: asyncio.run(sink.send(batch))


def refill(
    items: Iterable[NewsItem],
    send: Callable[[list[NewsItem]], list[NewsItem]],
    batch: int = 1000,
    progress: Callable[[int], object] | None = None,
) -> tuple[int, int]:
    """Send ``items`` in rounds of ``batch`` as fast as the broker acknowledges them (no event-time pacing,
    no resume state: a refill of a broker that lost its log sends everything again and dedup downstream keeps
    results exact). Returns (acknowledged, not acknowledged)."""
    check_batch(batch)
    sent = failed = 0
    chunk: list[NewsItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= batch:
            ok = len(send(chunk))
            sent, failed = sent + ok, failed + len(chunk) - ok
            if progress:
                progress(len(chunk))
            chunk = []
    if chunk:
        ok = len(send(chunk))
        sent, failed = sent + ok, failed + len(chunk) - ok
        if progress:
            progress(len(chunk))
    return sent, failed


__all__ = [
    "ReplayReport",
    "ResumeState",
    "check_batch",
    "kafka_sender",
    "parse_speed",
    "refill",
    "replay",
    "state_path",
]
