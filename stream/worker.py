"""``finsent worker``: the Faust app that scores headlines, plus the aggregator that windows them.

Scoring (a Faust agent on ``finsent.news.raw``):

* adaptive micro-batches with ``take_events(max_batch, within=max_wait_s)``: Faust fills the buffer in
  the background while a batch is scored, so under a backlog the next batch is already up to
  ``max_batch`` (128) when the loop comes back, and a caught-up stream yields a lone headline after
  ``max_wait_s`` (20 ms). The classifier sorts each batch by token length (less padding) and returns
  predictions in input order;
* three overlapped stages (``Scorer``): batch N+1 is decoded and edge-checked (on the event loop) and
  tokenized (tokenizer thread) while batch N is in the model (inference threads, off the event loop, so
  heartbeats, commits and the aggregator keep running), and batch N's outputs are produced and
  acknowledged while N+1 is in the model; deliveries stay in batch order;
* the model's in-tray (``finsent.stream.feed.ModelFeed``): batches prepared while the model is busy wait
  and go into it as one call (up to ``stream.max_model_batch``, 512), sorted by length together, so a
  backlog gets large model calls although Faust hands over 100-200 records at a time. With
  ``stream.model_calls`` > 1 (or 0, auto: one single-threaded ONNX call per core, ``finsent.model.placement``)
  calls run side by side, what waits shared among them and a burst cut into one part per call; outputs still
  go out in order. Below a backlog (fewer than ``stream.split_from_records`` waiting, nothing else in the
  model) a call runs alone on all cores instead (a second ONNX session): side by side drains faster, alone
  answers a moderate stream sooner (``finsent_worker_model_calls_total{way}`` counts each). The default is
  one call: see the settings for what each way costs;
* poison records (undecodable, schema-invalid, oversized) and items the model fails on by themselves
  (after retry and bisection) go to ``finsent.dlq`` with their source offset; the stream goes on;
* every decoded item passes the edge check (``checked_item``) before it is scored: any producer can
  write the raw topic, so an event time far in the future is clamped (flagged ``published_clamped``)
  and a ticker list cut to ``windows.max_tickers_per_item`` here too, counted and logged once per batch;
* offsets commit only after the scored records *and* dead letters are acknowledged by the broker.

Faust traps worked around here, on purpose:

* ``take_events`` acks every buffered event in a ``finally`` -- also when the body raised or the
  worker is stopping mid-batch -- and an acked offset gets committed. Each event is therefore
  ``incref``-ed on arrival and acked by us (the last reference) only after its outputs are
  acknowledged, which happens while the next batch is classified: a failed or interrupted batch
  leaves its offsets uncommitted, so it is redelivered. What keeps a commit from passing a batch still in
  the model is the order of our acks, not Faust: batches are released strictly in the order they were
  taken, so our acks of a partition always extend one contiguous run from its committed offset. Faust's
  ``Consumer._new_offset`` commits the first contiguous run of acked offsets and checks for unacked ones
  before it only against a committed offset it knows: not on a partition with none committed (or
  committed at 0), and not for a gap of one offset. So the exposure left is Faust acking a message itself
  (one it cannot decode, or skips or drops on its own, as around a rebalance) while earlier ones of its
  partition are still in our model: its commit can then pass them, and a crash before they are delivered
  skips them.
* an exception escaping an agent kills the agent while the worker lives on (consuming nothing).
  Errors are handled inside; anything unforeseen exits the process (crash-only), and the
  supervisor (``finsent demo``, compose ``restart:``) starts a fresh worker that resumes from the
  committed offsets.
* Faust's windowed tables (``on_window_close`` firing only on new events, ``relative_to_field``,
  tables inside ``take``) are not used: the windows are the pure core in ``windows.py``, run by the
  aggregator task, so live, replay and backtest share it.
* Tansu needs explicit topics and short group timeouts (``stream.session_timeout_s`` …); topics are
  created before the app starts and Faust is told not to declare any.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from finsent import kafka as kafka_room
from finsent.errors import PoisonRecord
from finsent.http import check_bindable, start_metrics_server
from finsent.kafka import Consumed, Outgoing, TopicIdWatch, ensure_topics, faust_broker_options
from finsent.model.classifier import Encoded
from finsent.osthreads import exit_later, name_os_thread, prompt_gil_handoff
from finsent.records import NewsItem
from finsent.settings import Settings, setting_label
from finsent.stream.aggregator import Aggregator
from finsent.stream.faust_transport import transport_class
from finsent.stream.feed import ModelFeed, cut_for_calls
from finsent.stream.metrics import WorkerMetrics, count_corrected, edge_checked
from finsent.stream.pipeline import decode_raw, text_of, to_scored
from finsent.stream.scoring import BatchResult, score_batch

log = logging.getLogger("finsent.stream.worker")

EXIT_BROKER_RESET = 75  # EX_TEMPFAIL: restart me (the supervisor in `finsent demo` and compose do)
EXIT_UNEXPECTED = 70  # EX_SOFTWARE: a bug; the batch was not committed, a restarted worker redelivers it
MIN_PART = 8  # a micro-batch is cut for calls side by side only into parts of at least this many (one forward)


@dataclass
class Scored:
    """A micro-batch on its way through the stages: prepared (decoded, checked, tokenized), classified, delivered."""

    messages: list[Consumed]
    items: list[tuple[Consumed, NewsItem]] = field(default_factory=list)
    encoded: Encoded | None = None  # token ids of the items' texts (``Classifier.encode``), set by ``prepare``
    outputs: list[Outgoing] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (reason, error) per dead letter
    fixed: dict[str, int] = field(default_factory=dict)  # edge corrections, counted once delivered
    # Where a record's time goes (``finsent_worker_stage_seconds``), in wall-clock seconds: per part that was
    # prepared on its own, (records, taken, prepared); a merged call keeps each part's. Then the model call.
    parts: list[tuple[int, float, float]] = field(default_factory=list)
    inferred: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def merged(cls, batches: list[Scored]) -> Scored:
        """Prepared batches as one, in order, for one model call (``finsent.stream.feed``)."""
        out = cls([msg for b in batches for msg in b.messages])
        for b in batches:
            out.items.extend(b.items)
            out.outputs.extend(b.outputs)
            out.failed.extend(b.failed)
            for fix, n in b.fixed.items():
                out.fixed[fix] = out.fixed.get(fix, 0) + n
            out.parts.extend(b.parts)
        with_items = [b for b in batches if b.items]
        if with_items and all(b.encoded is not None for b in with_items):
            out.encoded = Encoded.concat([b.encoded for b in with_items if b.encoded is not None])
        return out


class Scorer:
    """Micro-batches in three stages: ``prepare`` (decode and check on the event loop, tokenize on a tokenizer
    thread), ``infer`` (the model: one inference thread per call side by side) and ``deliver`` (produce, wait for
    acks: the event loop).

    The agent overlaps them: batch N+1 is tokenized while batch N is in the model, and batch N's records
    are produced and acknowledged while batch N+1 is in the model, so the model neither waits for the
    tokenizer nor for the broker. Deliveries stay in batch order, and an offset is released for commit
    only after its batch's outputs are acknowledged.
    """

    def __init__(
        self, settings: Settings, classifier, metrics: WorkerMetrics, model_calls: int = 1, classifier_alone=None
    ):
        self.settings = settings
        self.classifier = classifier
        self.classifier_alone = classifier_alone  # the same model on all cores, for a call that runs alone (feed)
        self.metrics = metrics
        self.model_calls = model_calls  # calls side by side (the feed runs this many; one inference thread each)
        self.executor = ThreadPoolExecutor(
            max_workers=model_calls,
            thread_name_prefix="finsent-infer",
            initializer=name_os_thread,
            initargs=("finsent-infer",),
        )
        self.tokenizer_pool = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="finsent-tokenize",
            initializer=name_os_thread,
            initargs=("finsent-tokens",),
        )
        self.producer: AIOKafkaProducer | None = None
        self.positions: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset to process

    async def start(self) -> None:
        producer = kafka_room.aio_producer(
            self.settings.kafka,
            "scorer",
            linger_ms=2,
            request_timeout_ms=int(self.settings.stream.produce_timeout_s * 1000),
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self.producer = producer

    async def stop(self) -> None:
        """Close the producer when the agent ends: one left open is an asyncio error line ("Unclosed
        AIOKafkaProducer") at every stop. Undelivered batches were cancelled first, so nothing is waiting on it."""
        producer, self.producer = self.producer, None
        if producer is not None:
            await producer.stop()

    async def process(self, messages: list[Consumed]) -> None:
        """All three stages of one micro-batch, its outputs acknowledged before returning."""
        await self.deliver(await self.score(messages))

    async def score(self, messages: list[Consumed]) -> Scored:
        return await self.infer(await self.prepare(messages))

    async def prepare(self, messages: list[Consumed]) -> Scored:
        """Decode and edge-check (on the event loop), tokenize (off it); nothing is classified or sent yet.

        ``messages``: Faust messages with .topic .partition .offset .key .value .timestamp (seconds: Faust
        divides Kafka's milliseconds by 1000).
        """
        self.metrics.items_in.inc(len(messages))
        batch = Scored(messages)
        taken = time.time()
        now = datetime.fromtimestamp(taken, UTC)
        for msg in messages:
            try:
                item = decode_raw(msg.value, self.settings.stream.max_record_bytes)
            except PoisonRecord as err:
                batch.outputs.append(self._dead_letter(msg, str(err)))
                batch.failed.append(("poison", str(err)))
                continue
            batch.items.append((msg, edge_checked(item, now, self.settings.windows, batch.fixed)))
        if batch.items and hasattr(self.classifier, "encode"):
            texts = [text_of(it) for _, it in batch.items]
            batch.encoded = await asyncio.get_running_loop().run_in_executor(
                self.tokenizer_pool, self.classifier.encode, texts
            )
        batch.parts.append((len(messages), taken, time.time()))
        return batch

    async def infer(self, batch: Scored, alone: bool = False) -> Scored:
        """Classify the prepared items in an inference thread; items the model fails on by themselves become dead
        letters, while a model that fails on everything raises ``ModelBroken`` (``score_batch``): the worker exits 70
        with the batch uncommitted instead of dead-lettering it whole. ``alone``: the call runs with no other beside
        it, on ``classifier_alone`` (all cores)."""
        m = self.metrics
        if self.settings.stream.debug_batch_delay_s:
            await asyncio.sleep(self.settings.stream.debug_batch_delay_s)  # test hook: a slower model
        if batch.items:
            m.batch_size.observe(len(batch.items))
            t0, started = time.perf_counter(), time.time()
            classifier, way = self._model_for(alone)
            m.model_call_ways[way].inc()
            result = await asyncio.get_running_loop().run_in_executor(self.executor, self._classify, batch, classifier)
            m.inference_seconds.observe(time.perf_counter() - t0)
            batch.inferred = (started, time.time())
            m.retries.inc(max(0, result.calls - 1))
            by_item = {id(it): msg for msg, it in batch.items}
            scored_at = datetime.now(UTC)
            for item, prediction in result.scored:
                scored = to_scored(item, prediction, scored_at)
                batch.outputs.append((self.settings.topics.scored.name, item.id.encode(), scored.to_json()))
            for item, error in result.failed:
                batch.outputs.append(self._dead_letter(by_item[id(item)], f"classifier failed on this item: {error}"))
                batch.failed.append(("model", error))
        return batch

    def _model_for(self, alone: bool) -> tuple[Any, str]:
        """The classifier for a call, and how it runs (the ``way`` of ``finsent_worker_model_calls_total``)."""
        if self.model_calls == 1:
            return self.classifier, "alone"
        if alone and self.classifier_alone is not None:
            return self.classifier_alone, "alone"
        return self.classifier, "side_by_side"

    def _classify(self, batch: Scored, classifier) -> BatchResult:
        """The pre-tokenized batch in one call; if that fails, retries and bisection from the texts."""
        items = [it for _, it in batch.items]
        if batch.encoded is not None:
            try:
                predictions = classifier.predict_encoded(batch.encoded)
                return BatchResult(list(zip(items, predictions)), [], 1)
            except Exception as err:  # noqa: BLE001 (any model error: score_batch isolates the culprit)
                log.warning("batch failed, retrying from the texts", extra={"error": f"{type(err).__name__}: {err}"})
        return score_batch(classifier.predict, items, text_of, self.settings.stream.inference_retries)

    async def deliver(self, batch: Scored) -> None:
        """Send a scored batch's outputs and wait for their acks; only then is it counted and its position moved."""
        m = self.metrics
        await self._send_acknowledged(batch.outputs)
        count_corrected(self.metrics, self.settings.windows, batch.fixed, "raw items")
        done = time.time()
        for reason, error in batch.failed:
            m.items_failed.labels(reason).inc()
            log.warning("record sent to DLQ", extra={"reason": reason, "error": error[:300]})
        if batch.items:
            m.items_scored.inc(len(batch.items) - sum(1 for r, _ in batch.failed if r == "model"))
            for msg, item in batch.items:
                if msg.timestamp:
                    m.e2e_seconds.observe(max(0.0, done - msg.timestamp))
                m.news_age_seconds.observe(max(0.0, done - item.published.timestamp()))
        for msg in batch.messages:
            self.positions[(msg.topic, msg.partition)] = msg.offset + 1
        self._observe_stages(batch, done)

    def _observe_stages(self, batch: Scored, acked: float) -> None:
        """Each record's appended->acknowledged time split into the worker's stages, so that a latency figure says
        where it comes from (the broker's fetch and Faust's buffer, tokenizing, the in-tray, the model, the acks)."""
        stage = self.metrics.stages
        started, ended = batch.inferred
        msgs = iter(batch.messages)
        for n, taken, prepared in batch.parts:
            for msg in itertools.islice(msgs, n):
                if msg.timestamp:
                    stage["fetch"].observe(max(0.0, taken - msg.timestamp))
            per_part = [("prepare", prepared - taken)] + ([("in_tray", started - prepared)] if started else [])
            for name, seconds in per_part:
                for _ in range(n):
                    stage[name].observe(max(0.0, seconds))
        if started:
            for name, seconds in (("infer", ended - started), ("deliver", acked - ended)):
                for _ in batch.messages:
                    stage[name].observe(max(0.0, seconds))

    def _dead_letter(self, msg: Consumed, error: str) -> Outgoing:
        return kafka_room.dead_letter(self.settings, msg, error)

    async def _send_acknowledged(self, outputs: list[Outgoing]) -> None:
        """Send all outputs and wait for acks; on a broker failure keep trying (nothing is committed meanwhile).

        One failure is not a broker's: a dead letter refused as too large (``MessageSizeTooLargeError``, by the
        client's or the broker's limit) would be refused for ever, and retrying it stalled the partition behind it.
        Such a letter is cut further (``smaller_dead_letter``) and only it is sent again at once; one that cannot
        be cut any more is logged and left out. Every other error, transient or not, is retried with the whole
        batch as before: a refused scored record or a broker outage must never become a drop."""
        delay = 0.5
        while True:
            try:
                if self.producer is None:
                    await self.start()
                assert self.producer is not None
                errors = await self._send_all(self.producer, outputs)
            except KafkaError as err:  # a stopping worker cancels this wait; its events stay unacked
                errors = [err] * len(outputs)
            refused = [i for i, err in enumerate(errors) if err is not None]
            if not refused:
                return
            too_large = [
                i
                for i in refused
                if isinstance(errors[i], MessageSizeTooLargeError) and outputs[i][0] == self.settings.topics.dlq.name
            ]
            if len(too_large) == len(refused):  # only letters too large: the rest is acknowledged
                outputs = [shrunk for i in too_large if (shrunk := self._smaller_letter(outputs[i], errors[i]))]
                continue
            failure = next(errors[i] for i in refused if i not in too_large)
            log.warning(
                "produce failed, retrying the whole batch (duplicates are deduplicated downstream)",
                extra={"error": f"{type(failure).__name__}: {failure}", "records": len(outputs), "retry_in_s": delay},
            )
            kept = [self._smaller_letter(o, errors[i]) if i in too_large else o for i, o in enumerate(outputs)]
            outputs = [o for o in kept if o is not None]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    @staticmethod
    async def _send_all(producer, outputs: list[Outgoing]) -> list[BaseException | None]:
        """Each output's error (None: acknowledged). Sent one after the other, so that their order is kept; a
        KafkaError that ``send`` itself raises (the client's size limit) is that output's, the others still go."""
        futures: list[Any] = []
        for topic, key, value in outputs:
            try:
                futures.append(await producer.send(topic, key=key, value=value))
            except MessageSizeTooLargeError as err:
                futures.append(err)
        pending = [f for f in futures if not isinstance(f, BaseException)]
        results = iter(await asyncio.gather(*pending, return_exceptions=True))
        errors: list[BaseException | None] = []
        for f in futures:
            if isinstance(f, BaseException):
                errors.append(f)
                continue
            result = next(results)
            if isinstance(result, BaseException) and not isinstance(result, KafkaError):
                raise result  # not the broker's answer: cancelled, or a bug
            errors.append(result if isinstance(result, BaseException) else None)
        return errors

    def _smaller_letter(self, output: Outgoing, error: BaseException | None) -> Outgoing | None:
        """A dead letter refused as too large, cut further; None (logged) once nothing is left to cut."""
        topic, key, value = output
        smaller = kafka_room.smaller_dead_letter(value)
        if smaller is None:
            self.metrics.letters_lost.inc()
            log.error(
                "dead letter refused as too large even cut to its bare minimum; left out",
                extra={"error": f"{type(error).__name__}: {error}", "bytes": len(value), "key_bytes": len(key or b"")},
            )
            return None
        log.warning(
            "dead letter refused as too large, sending it cut further",
            extra={"error": f"{type(error).__name__}: {error}", "bytes": len(value), "now_bytes": len(smaller)},
        )
        return topic, key, smaller


class InputLogGuard:
    """Ends the worker when its input topic is a different log than the one its positions point into.

    A broker that lost its log (Tansu keeps it in memory) comes back with new, empty topics. A worker
    still holding positions of the old log would read the new one from the middle and, worse, commit
    those positions there, so that its successor skips the new log's first records. Checked before every
    offset commit and every ``stream.input_check_interval_s``; a changed topic id exits with 75 and the
    supervisor (``finsent demo``, compose ``restart:``) starts a fresh worker from the new log's committed
    offsets.
    """

    def __init__(self, settings: Settings):
        self.topic = settings.topics.raw.name
        self.watch = TopicIdWatch(settings.kafka, self.topic, timeout_s=3.0)
        self.expected = self.watch.current()

    def check(self) -> bool:
        """True: the same log. False: the broker cannot be asked now (do not commit yet). Exits otherwise."""
        try:
            now = self.watch.current()
        except Exception:  # noqa: BLE001 (broker unreachable: aiokafka is reconnecting; nothing to decide)
            return False
        if now != self.expected:
            log.error(
                "input topic was recreated (the broker lost its log); exiting for a fresh start",
                extra={"topic": self.topic, "was": self.expected, "now": now},
            )
            os._exit(EXIT_BROKER_RESET)
        return True


def build_app(settings: Settings, scorer: Scorer, aggregate: bool = True, input_guard: InputLogGuard | None = None):
    import faust

    s = settings.stream
    datadir = settings.paths.state_dir / "faust" / s.group_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        s.group_id,
        **faust_broker_options(settings.kafka, "worker"),  # bootstrap, client id, SASL/TLS: as every other client
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=s.session_timeout_s,
        broker_heartbeat_interval=s.heartbeat_s,
        broker_rebalance_timeout=s.rebalance_timeout_s,
        broker_commit_interval=s.commit_interval_s,
        producer_acks=-1,
        store="memory://",
        datadir=str(datadir),
        stream_wait_empty=False,
    )
    before_commit = input_guard.check if input_guard is not None else None
    app.transport = transport_class(s.fetch_max_wait_ms, before_commit)(app.conf.broker_consumer, app)
    raw = app.topic(
        settings.topics.raw.name,
        key_type=bytes,
        value_type=bytes,
        internal=False,
        partitions=settings.topics.raw.partitions,
    )

    @app.agent(raw, name="score")
    async def score(stream):
        feed: ModelFeed[Scored] = ModelFeed(
            infer=lambda batch: _or_exit(scorer.infer(batch)),
            deliver=lambda batch: _or_exit(scorer.deliver(batch)),
            merge=Scored.merged,
            size=lambda batch: len(batch.messages),
            max_records=s.max_model_batch,
            on_error=_exit_on_feed_error,
            calls=scorer.model_calls,
            infer_alone=(lambda batch: _or_exit(scorer.infer(batch, alone=True))) if scorer.classifier_alone else None,
            split_from=s.split_from_records,
        )
        try:
            async for events in stream.take_events(s.max_batch, within=s.max_wait_s):
                for event in events:
                    event.message.incref()  # hold the offset until our outputs are acknowledged (see module doc)
                for part in cut_for_calls(events, feed.parts_for(len(events)), MIN_PART):  # to every free call
                    prepared = await _or_exit(scorer.prepare([event.message for event in part]))
                    await feed.put(prepared, partial(_release, part))
            await feed.join()
        except asyncio.CancelledError:
            feed.cancel()  # undelivered batches stay unreleased, so they are never committed
            raise  # and a fresh worker gets them again
        finally:
            await scorer.stop()

    @app.timer(interval=5.0)
    async def export_lag():
        export_consumer_lag(scorer.metrics, scorer.positions, list(app.consumer.assignment()), app.consumer.highwater)

    if input_guard is not None:

        @app.timer(interval=s.input_check_interval_s)
        async def check_input_topic():
            """An idle worker commits nothing, so the commit check alone would not notice a replaced log."""
            await asyncio.to_thread(input_guard.check)

    if aggregate:

        @app.task
        async def run_aggregator():
            await supervise_aggregator(settings, scorer.metrics)

    return app


def export_consumer_lag(
    metrics: WorkerMetrics, positions: dict[tuple[str, int], int], assigned: list[Any], highwater: Callable[[Any], Any]
) -> None:
    """``finsent_worker_consumer_lag`` of the partitions this worker holds (``assigned``: Faust TPs).

    A partition a rebalance took away is another worker's to report: its series and position go, or the last lag
    it had here stayed on /metrics for ever (ConsumerLagHigh fired on a pipeline that had caught up), and a
    partition handed back later reported its lag from the old position until its next batch."""
    held = {(tp.topic, tp.partition) for tp in assigned}
    for topic, partition in [key for key in positions if key not in held]:
        del positions[(topic, partition)]
        with contextlib.suppress(KeyError):
            metrics.lag.remove(topic, str(partition))
    for tp in assigned:
        high = highwater(tp)
        pos = positions.get((tp.topic, tp.partition))
        if high is not None and pos is not None:
            metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - pos))


async def _or_exit(step):
    """Crash-only: anything unforeseen in a batch exits, so a fresh worker redelivers the uncommitted batch."""
    try:
        return await step
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unexpected error in a batch; exiting so a fresh worker redelivers it")
        os._exit(EXIT_UNEXPECTED)


def _exit_on_feed_error(err: BaseException) -> None:
    """Crash-only, as ``_or_exit``: an agent that lost its feed would hold its partitions and score nothing."""
    log.error("the model feed failed; exiting so a fresh worker redelivers", exc_info=err)
    os._exit(EXIT_UNEXPECTED)


def _release(events) -> None:
    """Drop our hold on each event once its outputs are acknowledged. ``take_events`` has usually acked them
    already (leaving our reference), so this is an ``ack`` that, being the last, marks the offset safe to commit."""
    for event in events:
        event.ack()


async def supervise_aggregator(settings: Settings, metrics: WorkerMetrics) -> None:
    """Run the aggregator; on any failure throw its memory away and rebuild from the newest restore point."""
    delay = 1.0
    while True:
        agg = Aggregator(settings, metrics)
        try:
            await agg.run()
            return
        except asyncio.CancelledError:
            await agg.stop()
            raise
        except Exception as err:  # noqa: BLE001 - any aggregator failure: rebuild from the restore point, never exit
            log.warning(
                "aggregator failed; rebuilding from the newest restore point",
                extra={"error": f"{type(err).__name__}: {err}", "retry_in_s": delay},
            )
            await agg.stop()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 15.0)


def _bounded_stop_worker(base: type, timeout_s: float) -> type:
    """``base`` (faust.Worker) whose stop on SIGTERM/SIGINT is bounded: past ``timeout_s`` the process exits.

    Why: see ``finsent.osthreads.exit_later``; exiting early loses nothing (offsets follow results)."""

    class BoundedStopWorker(base):
        def _on_sigterm(self) -> None:
            exit_later(timeout_s, EXIT_UNEXPECTED, "worker stop (SIGTERM)")
            super()._on_sigterm()

        def _on_sigint(self) -> None:
            exit_later(timeout_s, EXIT_UNEXPECTED, "worker stop (SIGINT)")
            super()._on_sigint()

    return BoundedStopWorker


def run(settings: Settings, model_dir, aggregate: bool = True) -> int:
    """Blocking: create topics, load the model, serve /metrics, run the Faust worker until stopped."""
    import faust

    from finsent.model import Classifier
    from finsent.model.artifact import load_meta
    from finsent.model.backends import resolve_device
    from finsent.model.placement import alone_choice, calls_at_once, model_info, side_by_side

    # model.device=cuda without CUDA: its one-line ConfigError first, not after waiting for a broker (up to
    # kafka.connect_timeout_s) in ensure_topics and then loading the model
    resolve_device(settings.model.device)
    # a missing model directory: its one line now, not after a broker wait (and blamed on the broker)
    load_meta(model_dir)
    metrics_setting = setting_label("stream", "metrics_port")
    # A taken /metrics port is a Conflict now, not after a broker wait and a model load; bound for real below.
    check_bindable(settings.services.host, settings.stream.metrics_port, metrics_setting)
    ensure_topics(
        settings.kafka,
        settings.topics.all(),
        timeout_s=settings.kafka.connect_timeout_s,
        replication_factor=settings.kafka.replication_factor,
    )
    input_guard = InputLogGuard(settings)
    classifier = Classifier.from_settings(model_dir, side_by_side(settings.model, settings.stream.model_calls))
    model_calls = calls_at_once(classifier, settings.stream.model_calls)
    classifier.ready_for_calls(model_calls)
    alone = alone_choice(settings.model, model_calls, classifier.backend.name, settings.stream.split_from_records)
    classifier_alone = Classifier.from_settings(classifier.directory, alone) if alone is not None else None
    metrics = WorkerMetrics(top_k=settings.stream.ticker_top_k, watchlist=tuple(settings.stream.ticker_watchlist))
    served = model_info(classifier)  # the graph and the gate's verdict too: ``onnx-int8`` alone names neither
    metrics.model_info.labels(**served).set(1)
    server = start_metrics_server(
        settings.stream.metrics_port,
        settings.services.host,
        metrics.registry,
        metrics_setting,
    )
    log.info(
        "worker starting",
        extra={
            **served,
            "aggregate": aggregate,
            "metrics": f"http://{settings.services.host}:{settings.stream.metrics_port}/metrics",
            "input": settings.topics.raw.name,
            "max_batch": settings.stream.max_batch,
            "max_model_batch": settings.stream.max_model_batch,
            "max_wait_s": settings.stream.max_wait_s,
            "model_calls": model_calls,
            "threads_per_call": getattr(classifier.backend, "threads", 0) or None,
            "sessions_per_call": getattr(classifier.backend, "spread", 1),
            "alone_below_records": settings.stream.split_from_records if classifier_alone is not None else None,
        },
    )
    scorer = Scorer(settings, classifier, metrics, model_calls, classifier_alone)
    app = build_app(settings, scorer, aggregate=aggregate, input_guard=input_guard)
    loglevel = logging.getLevelName(max(logging.getLogger().level, logging.WARNING))  # Faust's INFO is chatty
    worker = _bounded_stop_worker(faust.Worker, settings.stream.shutdown_timeout_s)(
        app, loglevel=loglevel, quiet=True, redirect_stdouts=False, override_logging=False
    )
    # Faust drops its terminal spinner only below WARNING; its "show cursor" escape then began a line of the JSON
    # log ("\b\x1b[?25h{...}"), which a log shipper rejects.
    worker.spinner = None
    code: object = 0
    try:
        with prompt_gil_handoff(settings.model.gil_handoff_s):  # the event loop beside the model threads
            worker.execute_from_commandline()
    except SystemExit as end:  # Faust's way out, with its exit code
        code = end.code
        raise
    finally:
        server.shutdown()
        log.info("worker stopped", extra={"exit_code": code})
    return 0


__all__ = ["InputLogGuard", "Scored", "Scorer", "build_app", "run", "supervise_aggregator"]
