"""The aggregator: scored items → windows and surges, with restore points so a restart loses nothing.

It is a thin aiokafka shell around :class:`~finsent.stream.pipeline.Aggregation`. It reads *all*
partitions of ``finsent.news.scored`` (manual assignment, no consumer group): per-key windows need
every item of the key, and the scoring workers that scale out write items keyed by item id. One
aggregator per deployment is enough (it runs ~10⁵ items/s, far above the model), so the worker runs
it by default and extra scoring-only workers run with ``--no-aggregate``.

State survives a restart by being *rebuilt*, not stored: a restore point on
``finsent.stream.checkpoints`` holds, per scored partition, the first offset still needed for the
windows in memory (the allowed lateness included) and the position read so far, the end of the newest
window already published, and the surge detector's state as of the oldest window late items may still
revise (its baseline spans far more history than the windows). On start the aggregator loads the
newest restore point, replays the scored items from those offsets up to those positions *silently*
(rebuilding windows and re-judging surges exactly as they were), then goes on live: later items are
new, even when they land in windows published before the restart (a revision is published). Redelivered
items (the scoring side is at-least-once) are deduplicated by item id inside the windows.

Where a partition ends is read from the fetch's high watermark, never from ListOffsets alone: the embedded
Tansu broker answers "latest offset" with the base offset of the last record batch + 1 (``finsent.kafka.log_bounds``).

Outputs (closed WindowStats to ``finsent.windows``, SurgeAlerts to ``finsent.alerts``) are awaited
until the broker acknowledges them, and only then is a restore point written that moves past them.
A crash between the two re-publishes identical records (same window, same alert id). An early firing
is the one output whose re-run is not certain (it depends on how the items were polled), so a restore
point also records where the alerts topic ended (``alerts_from``), and a restart reads what was
published past it: an early firing there that nothing settled is held again, and its window's close
confirms or retracts it (``Aggregation._adopt_published``).

A start uses the newest *readable* restore point: records that are not restore points (garbage, another
format version) are skipped and counted (``finsent_restore_points_skipped_total``), so one bad record
cannot crash-loop the aggregator; with none readable it starts afresh (``finsent_restore_fresh_starts_total``).
A restore point is written only when something changed since the last one (positions read, outputs
published), and an unchanged one again hourly, so an idle aggregator does not fill the topic; the topic's
retention is bounded on start (``finsent.kafka.CHECKPOINT_CONFIG``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from finsent import kafka as kafka_room
from finsent.errors import RecordError, RestorePointError
from finsent.kafka import CHECKPOINT_CONFIG, bound_topic
from finsent.records import RestorePoint, ScoredItem, SurgeAlert
from finsent.settings import Settings
from finsent.stream.metrics import WorkerMetrics, count_corrected, edge_checked
from finsent.stream.pipeline import Aggregation, Emitted
from finsent.stream.windows import NEVER

log = logging.getLogger("finsent.stream.aggregator")

REWRITE_UNCHANGED_S = 3600.0  # an unchanged restore point is written again this often: retention never takes the last
SCAN_CHUNK = 16  # restore points read per step of the backwards search for a readable one
MAX_SKIPPED = 500  # past this many unreadable records in a row, start afresh rather than read the topic whole


class Aggregator:
    def __init__(self, settings: Settings, metrics: WorkerMetrics):
        self.settings = settings
        self.metrics = metrics
        self.agg = Aggregation(settings)
        self.topic = settings.topics.scored.name
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.partitions: list[TopicPartition] = []
        self.lows: dict[int, dict[int, int]] = {}  # partition -> bucket start -> lowest offset counted there
        self.positions: dict[int, int] = {}  # partition -> next offset to read
        self.restore_until: dict[int, int] = {}  # partition -> position of the restore point (replay silently until)
        self.alerts_end: dict[int, int] = {}  # alerts partition -> offset after the last alert acknowledged
        self.last_event_wall = time.monotonic()
        self.lane_seen: dict[int, float] = {}  # partition -> wall time of its last record
        self.last_checkpoint = 0.0
        self.last_written = -math.inf  # monotonic time of the last restore point written
        self.written_positions: dict[int, int] | None = None  # what it covers: None until one is written
        self.unsaved_output = False  # outputs acknowledged that no restore point moved past yet
        self.unpublished = Emitted()  # what finishing the restore at start-up emitted: the first step publishes it
        self.restoring = True
        self._forgotten = 0
        self.started_wall = time.monotonic()
        self.stopped = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        kafka = self.settings.kafka
        self.producer = kafka_room.aio_producer(
            kafka, "aggregator", request_timeout_ms=int(self.settings.stream.produce_timeout_s * 1000)
        )
        await self.producer.start()
        await self._bound_checkpoints()
        point = await self._load_restore_point()
        published = await self._alerts_published_since(point)
        self.consumer = kafka_room.aio_consumer(
            kafka, "aggregator", auto_offset_reset="earliest", fetch_max_wait_ms=self.settings.stream.fetch_max_wait_ms
        )
        await self.consumer.start()
        parts = self.consumer.partitions_for_topic(self.topic) or set()
        if not parts:
            parts = set(range(self.settings.topics.scored.partitions))
        self.partitions = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self.consumer.assign(self.partitions)
        begins = await self.consumer.beginning_offsets(self.partitions)
        for tp in self.partitions:
            start = begins[tp]
            if point is not None and tp.partition in point.replay_from:
                start = max(start, point.replay_from[tp.partition])
            self.consumer.seek(tp, start)
            self.positions[tp.partition] = start
            self.restore_until[tp.partition] = point.positions.get(tp.partition, start) if point else start
            self.agg.expect_lane(tp.partition)  # every lane holds the watermark until it delivers or idles
        if point is not None:
            self.agg.begin_restore(point.emitted_until, point.detector, published)
        backlog = sum(max(0, self.restore_until[p] - self.positions[p]) for p in self.positions)
        self.restoring = point is not None
        if self.restoring and backlog == 0:
            self.unpublished = self._finish_restore()
        self.metrics.restore_point_current.set(time.time())  # the state now is what the restore point held
        log.info(
            "aggregator started",
            extra={
                "restore_point": point is not None,
                "replay_items": backlog,
                "emitted_until": _iso(point.emitted_until) if point else None,
                "alerts_after_restore_point": len(published),
            },
        )

    async def stop(self) -> None:
        self.stopped.set()
        for client in (self.consumer, self.producer):
            if client is not None:
                try:
                    await client.stop()
                except Exception as err:  # noqa: BLE001 - closing a client of a dead broker must not mask the real error
                    log.warning("client stop failed", extra={"error": str(err)})

    async def run(self) -> None:
        await self.start()
        try:
            while not self.stopped.is_set():
                await self.step()
        finally:
            await self.stop()

    # -- one poll ---------------------------------------------------------------------------------
    def _finish_restore(self) -> Emitted:
        """Go live; returns what must still be published (``Aggregation.finish_restore``)."""
        out = self.agg.finish_restore()
        self.restoring = False
        log.info("aggregator restored", extra={"emitted_until": _iso(self.agg.emitted_until)})
        return out

    async def step(self, timeout_ms: int = 200) -> Emitted:
        assert self.consumer is not None
        if self.restoring:
            # Read the restored span only: later records are new and must be judged live (revisions).
            for tp in self.partitions:
                if self.positions[tp.partition] >= self.restore_until[tp.partition]:
                    self.consumer.pause(tp)
        batch = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=2000)
        out, self.unpublished = self.unpublished, Emitted()
        records = []
        wall = time.monotonic()
        self.agg.cap_event_time(time.time() + self.settings.windows.future_tolerance_s)
        for tp, messages in batch.items():
            self.agg.expect_lane(tp.partition)
            self.lane_seen[tp.partition] = wall
            for msg in messages:
                if self.restoring and msg.offset >= self.restore_until[tp.partition]:
                    self.consumer.seek(tp, msg.offset)  # fetched ahead of the restored span: read again live
                    break
                records.append((tp.partition, msg))
                self.positions[tp.partition] = msg.offset + 1
        # Within one poll, feed in event-time order: partitions arrive in chunks, events do not.
        decoded = []
        today, fixed = datetime.now(UTC), dict[str, int]()
        for partition, msg in records:
            try:
                # checked against the record's own time on the topic, not this poll's clock: a restart's replay then
                # clamps it to the same time again (by the wall clock it landed in a later bucket the second time)
                now = min(today, datetime.fromtimestamp(msg.timestamp / 1000, UTC)) if msg.timestamp else today
                decoded.append((partition, msg, self._checked(ScoredItem.from_json(msg.value), now, fixed)))
            except (RecordError, ValueError, TypeError) as err:
                await self._dead_letter(msg, f"undecodable scored record: {err}")
        count_corrected(self.metrics, self.settings.windows, fixed, "scored items")
        decoded.sort(key=lambda r: r[2].item.published)
        late0, dup0, retimed0 = *self.agg.counts(), self.agg.retimed
        self.metrics.aggregated.inc(len(decoded))
        for partition, msg, scored in decoded:
            result = self.agg.add(scored, lane=partition)
            # The offset is kept under the bucket the item was counted in: one past the allowed lateness and counted
            # in the open window (windows.too_late = open_window) is kept under its own, long-closed bucket
            # otherwise, replay_from moves past it at once and a restart's replay never reads it again.
            counted_at = self.agg.retimed_ids.get(scored.item.id, scored.item.published.timestamp())
            lane_start = self.agg.bucket_of(counted_at)
            lows = self.lows.setdefault(partition, {})
            lows[lane_start] = min(lows.get(lane_start, msg.offset), msg.offset)
            if result.rejected:
                await self._dead_letter(
                    msg,
                    f"too late: event time {scored.item.published.isoformat()} is more than windows.allowed_lateness_s={self.settings.windows.allowed_lateness_s} "
                    f"behind the watermark {_iso(self.agg.watermark)}",
                    reason="too_late",
                )
                result.rejected.clear()
            out.extend(result)
            if self.restoring:
                self.metrics.restored.inc()
        if decoded:
            self.last_event_wall = time.monotonic()
        # A lane goes idle (stops holding the watermark) once it is caught up *and* quiet for idle_close_s:
        # during a bulk load every lane is busy, and the slowest one decides what is late.
        idle_after = self.settings.windows.idle_close_s
        for tp in self.partitions:
            p = tp.partition
            caught_up = self.positions.get(p, 0) >= (self.consumer.highwater(tp) or self.restore_until.get(p, 0))
            if caught_up and wall - self.lane_seen.get(p, self.started_wall) >= idle_after:
                out.extend(self.agg.set_idle(p))
        if self.restoring and all(self.positions[p] >= self.restore_until[p] for p in self.restore_until):
            out.extend(self._finish_restore())
            self.consumer.resume(*self.partitions)
        idle = time.monotonic() - self.last_event_wall
        newest = self.agg.newest_event
        if not self.restoring and idle >= self.settings.windows.idle_close_s and newest is not None:
            # Nothing arrived for a while: let event time run on with the wall clock so quiet windows close
            # (never past the wall clock itself: the store's ceiling caps it).
            now = datetime.fromtimestamp(min(newest + idle, time.time()), UTC)
            out.extend(self.agg.advance(now))
        # After the watermark moved, not before: open windows that it closed now are judged on time instead of
        # early, and a key whose early firing it withdrew is judged early again at once (pipeline._rejudge_open).
        out.extend(self.agg.end_step())
        late, duplicates = self.agg.counts()
        self.metrics.late.inc(late - late0)
        self.metrics.duplicates.inc(duplicates - dup0)
        self.metrics.retimed.inc(self.agg.retimed - retimed0)
        await self.publish(out)
        if out:
            self.unsaved_output = True
        if out or self.agg.forgotten != self._forgotten:  # a key the detector forgot loses its series now
            self._export(out)
        await self.maybe_checkpoint(force=bool(out))
        self._observe_state()
        return out

    async def publish(self, out: Emitted) -> None:
        """Send and wait for the broker's acknowledgement of every output (raises if it cannot)."""
        if not out:
            return
        assert self.producer is not None
        t = self.settings.topics
        futures = []
        for closed in out.windows:
            futures.append(
                await self.producer.send(t.windows.name, key=closed.key.encode(), value=closed.stat.to_json())
            )
        for alert in out.alerts:
            futures.append(await self.producer.send(t.alerts.name, key=alert.key.encode(), value=alert.to_json()))
        acked = await asyncio.gather(*futures)
        for meta in acked[len(out.windows) :]:
            self.alerts_end[meta.partition] = max(self.alerts_end.get(meta.partition, 0), meta.offset + 1)
        revisions = sum(1 for c in out.windows if c.revised)
        self.metrics.windows_closed.inc(len(out.windows) - revisions)
        self.metrics.revisions.inc(revisions)
        for alert in out.alerts:
            self.metrics.alert(alert)
            log.info(
                "surge " + ("retracted" if alert.retracted else alert.state),
                extra={
                    "key": alert.key,
                    "severity": alert.severity,
                    "zscore": alert.zscore,
                    "count": alert.count,
                    "negative_share": round(alert.negative_share, 3),
                    "window_end": alert.window_end.isoformat(),
                    "trigger": alert.trigger,
                },
            )

    async def maybe_checkpoint(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_checkpoint < self.settings.stream.checkpoint_interval_s:
            return
        if self.restoring:
            return  # the newest restore point is still the right one until the replay has caught up
        self.last_checkpoint = now
        if self._unchanged() and now - self.last_written < REWRITE_UNCHANGED_S:
            self.metrics.restore_point_current.set(time.time())  # the newest restore point still covers the state
            return
        assert self.producer is not None
        positions = dict(self.positions)
        point = RestorePoint(
            self.replay_from(), self.agg.judged_until, self.agg.snapshot(), positions, alerts_from=dict(self.alerts_end)
        )
        await self.producer.send_and_wait(
            self.settings.topics.checkpoints.name, key=b"aggregator", value=point.to_json()
        )
        self.last_written, self.written_positions, self.unsaved_output = now, positions, False
        self.metrics.checkpoints.inc()
        self.metrics.restore_point_current.set(time.time())

    def _unchanged(self) -> bool:
        """Nothing read and nothing published since the last restore point: restarting from it rebuilds this state.

        The idle timer moves event time on while nothing arrives, but windows without items publish
        nothing, and a restart's idle timer moves it on the same way."""
        return self.written_positions == self.positions and not self.unsaved_output

    def _checked(self, scored: ScoredItem, now: datetime, fixed: dict[str, int]) -> ScoredItem:
        """The edge check of event time again, on the scored topic: any producer can write there, not only the
        worker that checked the raw item. A record dated 2068 was counted in a 2068 bucket, which never left the
        windows (eviction follows the watermark, which the ceiling holds back) and pinned every restore point's
        ``replay_from`` at its offset for good. A record the worker checked comes out as it went in."""
        item = edge_checked(scored.item, now, self.settings.windows, fixed)
        return scored if item is scored.item else scored.model_copy(update={"item": item})

    def replay_from(self) -> dict[int, int]:
        """Per partition, the first offset whose item may still be in a window in memory."""
        keep_from = self.agg.revisable_from()
        out = {}
        for p, pos in self.positions.items():
            lows = self.lows.get(p, {})
            for start in [s for s in lows if s < keep_from]:
                del lows[start]
            out[p] = min(lows.values(), default=pos)
        return out

    # -- helpers ----------------------------------------------------------------------------------
    async def _bound_checkpoints(self) -> None:
        """Bound the checkpoints topic's retention, whoever created it; a failure is logged, never fatal."""
        name = self.settings.topics.checkpoints.name
        try:
            await asyncio.to_thread(bound_topic, self.settings.kafka, name, CHECKPOINT_CONFIG)
        except Exception as err:  # noqa: BLE001 (an unbounded topic is a later problem; no windows is a now problem)
            log.warning(
                "could not bound the checkpoints topic", extra={"topic": name, "error": f"{type(err).__name__}: {err}"}
            )

    async def _load_restore_point(self) -> RestorePoint | None:
        point = await self._newest_readable()
        if point is not None and point.poisoned(time.time(), self.settings.windows.future_tolerance_s):
            log.error(
                "restore point holds event times in the future; starting its windows afresh",
                extra={"emitted_until": _iso(point.emitted_until)},
            )
            self.metrics.rejected.labels("poisoned_restore_point").inc()
            self.metrics.restore_fresh.labels("poisoned").inc()
            return None
        return point

    async def _alerts_published_since(self, point: RestorePoint | None) -> list[SurgeAlert]:
        """Where each alerts partition ends now (the next restore point's ``alerts_from``) and, after a restore
        point that recorded where they ended then, every alert published past that: a crash between an alert's
        acknowledgement and the restore point covering it leaves it on the topic but not in the restored state.

        Best effort, never fatal: a broker that cannot answer here costs at most the settling of an early firing
        published in the instant before a crash (logged), not the windows. Unreadable records are skipped."""
        name = self.settings.topics.alerts.name
        consumer = kafka_room.aio_consumer(
            self.settings.kafka, "aggregator", fetch_max_wait_ms=self.settings.stream.fetch_max_wait_ms
        )
        published: list[SurgeAlert] = []
        unknown: list[int] = []
        try:
            await consumer.start()
            await consumer.topics()  # a full metadata fetch: start() asks for none on Apache Kafka
            parts = consumer.partitions_for_topic(name) or set(range(self.settings.topics.alerts.partitions))
            for p in sorted(parts):
                tp = TopicPartition(name, p)
                consumer.assign([tp])
                begin, end = await kafka_room.log_bounds(consumer, tp)
                self.alerts_end[p] = end
                if point is None or point.alerts_from is None:
                    continue
                if p not in point.alerts_from:
                    unknown.append(p)  # its end was not known then: reading it whole could take long
                    continue
                start = max(begin, point.alerts_from[p])
                for msg in await kafka_room.read_span(consumer, tp, start, end) if start < end else []:
                    try:
                        published.append(SurgeAlert.from_json(msg.value))
                    except (RecordError, ValueError, TypeError) as err:
                        log.warning("unreadable alert skipped", extra={"offset": msg.offset, "error": str(err)})
        except Exception as err:  # noqa: BLE001 - see the docstring: degrade, never stop the windows
            log.error(
                "could not read the alerts topic past the restore point; an early firing published just before "
                "the restart may stay unsettled",
                extra={"topic": name, "error": f"{type(err).__name__}: {err}"},
            )
        finally:
            try:
                await consumer.stop()
            except Exception as err:  # noqa: BLE001 - closing a client of a dead broker must not mask the real error
                log.warning("client stop failed", extra={"error": str(err)})
        if point is not None and point.alerts_from is None:
            log.warning("restore point does not say where the alerts topic ended; alerts after it are not re-read")
        if unknown:
            log.warning(
                "alerts partitions the restore point did not cover are not re-read", extra={"partitions": unknown}
            )
        return published

    async def _newest_readable(self) -> RestorePoint | None:
        """The newest restore point this version can restore from, searching backwards past bad records."""
        name = self.settings.topics.checkpoints.name
        consumer = kafka_room.aio_consumer(
            self.settings.kafka, "aggregator", fetch_max_wait_ms=self.settings.stream.fetch_max_wait_ms
        )
        await consumer.start()
        skipped = 0
        try:
            tp = TopicPartition(name, 0)
            consumer.assign([tp])
            begin, upto = await kafka_room.log_bounds(consumer, tp)
            while upto > begin and skipped < MAX_SKIPPED:
                start = max(begin, upto - SCAN_CHUNK)
                for msg in reversed(await kafka_room.read_span(consumer, tp, start, upto)):
                    point = self._readable(msg)
                    if point is not None:
                        if skipped:
                            log.warning(
                                "restoring from an older restore point",
                                extra={"offset": msg.offset, "skipped": skipped},
                            )
                        return point
                    skipped += 1
                upto = start
        finally:
            await consumer.stop()
        if skipped:
            log.error(
                "no readable restore point; starting the windows afresh", extra={"topic": name, "skipped": skipped}
            )
            self.metrics.restore_fresh.labels("none_readable").inc()
        return None

    def _readable(self, msg) -> RestorePoint | None:
        """The restore point in ``msg``, or None (counted and logged) when this version cannot restore from it."""
        try:
            point = RestorePoint.from_json(msg.value)
            _check_restorable(self.settings, point)
            return point
        except RestorePointError as err:
            self.metrics.restore_skipped.labels(err.reason).inc()
            log.warning(
                "restore point skipped",
                extra={"topic": msg.topic, "offset": msg.offset, "reason": err.reason, "error": str(err)},
            )
            return None

    async def _dead_letter(self, msg, error: str, reason: str = "bad_scored_record") -> None:
        assert self.producer is not None
        topic, key, value = kafka_room.dead_letter(self.settings, msg, error)
        await self.producer.send_and_wait(topic, key=key, value=value)
        if reason == "too_late":
            self.metrics.rejected.labels(reason).inc()
        else:
            self.metrics.items_failed.labels(reason).inc()

    def _export(self, out: Emitted) -> None:
        """Gauges show the newest closed windows (keys without items in them now read 0) and the detector's state of
        the keys it keeps, handed over whole (a key it forgot has no surge series any more)."""
        widest = self.agg.widest_s
        if out.windows:
            end = max(c.stat.end for c in out.windows)
            newest = [(c.stat, c.width_s) for c in out.windows if c.stat.end == end]
            volumes = {
                s.key.split(":", 1)[1]: s.count for s, w in newest if w == widest and s.key.startswith("ticker:")
            }
            self.metrics.windows(newest, volumes, end)
        self.metrics.surge_states(self.agg.surge_gauges())

    def _observe_state(self) -> None:
        self.metrics.keys_forgotten.inc(self.agg.forgotten - self._forgotten)
        self._forgotten = self.agg.forgotten
        buckets, ids = self.agg.state_size()
        self.metrics.state_buckets.set(buckets)
        self.metrics.state_ids.set(ids)
        if self.agg.watermark > NEVER:  # items before 1970 have a negative watermark; NEVER: none yet
            self.metrics.watermark.set(self.agg.watermark)
        if self.consumer is not None:
            for tp in self.partitions:
                high = self.consumer.highwater(tp)
                if high is not None:
                    self.metrics.lag.labels(tp.topic, str(tp.partition)).set(
                        max(0, high - self.positions.get(tp.partition, 0))
                    )


def _check_restorable(settings: Settings, point: RestorePoint) -> None:
    """Rebuild the detector from ``point`` on a scratch aggregation: a malformed row must be found here, where
    the search can go on to an older restore point, not in the start that would then fail again and again."""
    try:
        Aggregation(settings).begin_restore(point.emitted_until, point.detector)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise RestorePointError("unreadable", f"detector state: {type(err).__name__}: {err}") from None


def _iso(ts: float) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if math.isfinite(ts) and ts > NEVER else None


__all__ = ["Aggregator"]
