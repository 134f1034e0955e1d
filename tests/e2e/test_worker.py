"""The stream worker as it runs: real worker processes, the real (Tansu) broker, the shipped model.

Covers the issue's reliability list: poison floods go to the DLQ without hurting good records; a
``kill -9`` mid-batch loses nothing and counts nothing twice; a broker stop/start is survived.
"""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import time
from collections import defaultdict
from contextlib import contextmanager
from datetime import timedelta

import httpx
import pytest
from streamkit import (
    FAST_WINDOWS,
    create_topics,
    headlines,
    kill_9_partway,
    metrics_url,
    past,
    publish,
    publish_items,
    read_topic,
    settings_from,
    start_worker,
    topic,
    wait_for,
    worker_env,
)

from finsent.model.placement import cpu_cores
from finsent.records import DeadLetter, ScoredItem, SurgeAlert, WindowStat
from finsent.stream.metrics import STAGES
from finsent.stream.pipeline import Aggregation, final_alerts, final_windows


def scored_ids(bootstrap, env):
    return {ScoredItem.from_json(r.value).item.id for r in read_topic(bootstrap, topic(env, "scored"))}


def metric(env, name: str) -> float:
    text = httpx.get(metrics_url(env), timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith(name + "_created") and (line[len(name)] in " {")
    )


def bucket(env, histogram: str, le: float, labels: str = "") -> float:
    """A histogram's cumulative count of observations <= ``le`` (one bucket line of /metrics)."""
    want = f'{histogram}_bucket{{le="{float(le)}"{"," + labels if labels else ""}}} '
    text = httpx.get(metrics_url(env), timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(want))


def committed_to_the_end(broker, env) -> dict[int, int]:
    """Waits until the worker group's committed offset of every raw partition is that partition's end (each record
    delivered, scored or dead-lettered); the committed offsets."""
    from kafka import KafkaConsumer, TopicPartition

    raw = read_topic(broker, topic(env, "raw"))
    ends = {p: max(r.offset for r in raw if r.partition == p) + 1 for p in {r.partition for r in raw}}
    consumer = KafkaConsumer(bootstrap_servers=broker, group_id=settings_from(env).stream.group_id)
    try:
        parts = [TopicPartition(topic(env, "raw"), p) for p in ends]
        # Commits run on an interval: an earlier one may be what is committed at first. Wait for the last.
        return wait_for(
            lambda: (c := {tp.partition: consumer.committed(tp) for tp in parts}) == ends and c,
            30,
            f"offsets committed up to {ends}",
        )
    finally:
        consumer.close()


def test_a_poison_flood_goes_to_the_dlq_and_good_records_are_all_scored(broker, tmp_path):
    env = worker_env(broker, tmp_path, **FAST_WINDOWS)
    create_topics(env)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        good = headlines(120, past(600), 2.0)
        huge = json.dumps({"id": "x", "title": "y" * 300_000}).encode()
        poison = [
            (b"p%d" % i, v)
            for i, v in enumerate([b"{not json", b"\xff\xfe garbage", b'{"id": "a"}', b"", huge, None] * 50)
        ]
        # Valid JSON with aware times that overflow in UTC: their OverflowError once escaped the decoding, and the
        # worker exited 70 on every restart with the partition stuck behind them.
        out_of_range = [
            (b"t%d" % i, json.dumps({**json.loads(good[i].to_json()), "id": f"t{i}", field: at}).encode())
            for i, (field, at) in enumerate(
                [("published", "0001-01-01T00:00:00+14:00"), ("fetched", "9999-12-31T23:59:00-14:00")]
            )
        ]
        records = [(it.id.encode(), it.to_json()) for it in good]
        mixed = [r for pair in zip(records, poison[:120]) for r in pair] + poison[120:]
        mixed[10:10] = out_of_range[:1]  # good records before and after each
        mixed[200:200] = out_of_range[1:]
        publish(broker, topic(env, "raw"), mixed)

        wait_for(lambda: len(scored_ids(broker, env)) == 120, 90, "all good records scored")
        letters = wait_for(
            lambda: (d := read_topic(broker, topic(env, "dlq"))) and len(d) >= 302 and d, 60, "302 dead letters"
        )
        assert len(letters) == 302
        parsed = [DeadLetter.from_json(r.value) for r in letters]
        assert {d.source_topic for d in parsed} == {topic(env, "raw")}
        assert len({(d.partition, d.offset) for d in parsed}) == 302  # each names its own source offset
        assert sum("exceeds max_record_bytes" in d.error for d in parsed) == 50
        assert sum("tombstone" in d.error for d in parsed) == 50
        assert sum("out of datetime's range in UTC" in d.error for d in parsed) == 2
        by_key = {r.key: DeadLetter.from_json(r.value) for r in letters}
        assert by_key[b"p0"].value == b"{not json"  # the original bytes are kept
        scored = [ScoredItem.from_json(r.value) for r in read_topic(broker, topic(env, "scored"))]
        assert all(s.model.startswith("finsent-minilm@") for s in scored)
        assert {s.item.id for s in scored} == {it.id for it in good}
        assert metric(env, "finsent_worker_items_failed_total") == 302
        assert metric(env, "finsent_worker_items_scored_total") >= 120
        assert metric(env, "finsent_worker_batch_size_count") >= 2  # micro-batched, not one by one
        # Latency is measured in seconds from the records' Kafka timestamps: all of this test's records were
        # appended and scored within a minute (Faust gives timestamps in seconds; reading them as milliseconds
        # once put every observation in the +Inf bucket, and the dashboard's latency panel with it).
        assert metric(env, "finsent_worker_e2e_seconds_count") == 120
        assert bucket(env, "finsent_worker_e2e_seconds", 60) == 120
        taken = metric(env, "finsent_worker_items_in_total")
        assert taken == 422
        for stage in STAGES:
            within = bucket(env, "finsent_worker_stage_seconds", 30, f'stage="{stage}"')
            assert within == metric(env, f'finsent_worker_stage_seconds_count{{stage="{stage}"}}') > 0, stage
        assert bucket(env, "finsent_worker_stage_seconds", 30, 'stage="fetch"') == taken
        wait_for(lambda: read_topic(broker, topic(env, "windows")), 30, "closed windows")
        committed_to_the_end(broker, env)
    finally:
        worker.stop()
    assert worker.proc.returncode == 0, worker.log_tail()
    # a clean stop closes the scorer's producer: left open, asyncio logged "Unclosed AIOKafkaProducer" as an error
    assert '"level": "error"' not in (tmp_path / "worker.log").read_text(), worker.log_tail()


def test_a_poison_record_with_a_huge_key_goes_to_the_dlq_and_its_partition_moves_on(broker, tmp_path):
    """A 720 KiB key and a 270 KiB value: under the broker's 1 MiB limit as a raw record, but its dead letter once
    carried the whole key as its Kafka key, the broker refused it as too large, and the worker retried it for
    ever with the partition stuck behind it. The letter's key is now the key's SHA-256."""
    from kafka import KafkaProducer

    env = worker_env(broker, tmp_path, **FAST_WINDOWS, FINSENT_TOPICS__RAW__PARTITIONS="1")
    create_topics(env)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        good = headlines(4, past(600), 2.0)
        key, value = b"k" * (720 * 1024), b"x" * (270 * 1024)
        producer = KafkaProducer(bootstrap_servers=broker, acks="all", max_request_size=2 << 20)
        for k, v in [(good[0].id.encode(), good[0].to_json()), (key, value)] + [
            (it.id.encode(), it.to_json()) for it in good[1:]
        ]:
            producer.send(topic(env, "raw"), key=k, value=v).get(30)
        producer.close()

        wait_for(lambda: len(scored_ids(broker, env)) == 4, 90, "the good records before and after it scored")
        letters = wait_for(lambda: read_topic(broker, topic(env, "dlq")), 30, "the dead letter")
        assert len(letters) == 1
        assert letters[0].key == b"sha256:" + hashlib.sha256(key).hexdigest().encode()
        letter = DeadLetter.from_json(letters[0].value)
        assert letter.offset == 1 and "exceeds max_record_bytes" in letter.error
        assert base64.b64decode(letter.key_b64) == key[: DeadLetter.MAX_KEY_BYTES]
        assert letter.original_size == len(value) and letter.original_sha256 == hashlib.sha256(value).hexdigest()
        assert committed_to_the_end(broker, env) == {0: 5}
        assert metric(env, "finsent_worker_items_failed_total") == 1
    finally:
        worker.stop()
    assert worker.proc.returncode == 0, worker.log_tail()


@pytest.mark.parametrize(
    ("model_calls", "split_from"),
    [("1", "128"), ("0", "0"), ("0", "128")],
    ids=["one-call", "calls-side-by-side", "alone-below-a-backlog"],
)
def test_adaptive_sorted_batches_keep_each_partitions_order_and_commit_only_what_was_delivered(
    broker, tmp_path, model_calls, split_from
):
    """A backlog of headlines of very different lengths (the classifier sorts each batch by length, and the
    worker delivers batch N while it scores N+1; side by side, a later call may finish first): every item is
    scored once, each raw partition's items reach each scored partition in their raw order, batches grew past
    the quiet-time size, and the committed position never passes what was delivered. Alone below a backlog:
    the first call (one batch waiting) runs alone on all cores, the backlog that piles up behind it (a slower
    model, the test hook) goes side by side."""
    env = worker_env(
        broker,
        tmp_path,
        **FAST_WINDOWS,
        FINSENT_STREAM__MAX_BATCH="48",
        FINSENT_STREAM__MODEL_CALLS=model_calls,
        FINSENT_STREAM__SPLIT_FROM_RECORDS=split_from,
        FINSENT_STREAM__DEBUG_BATCH_DELAY_S="0.3" if split_from != "0" and model_calls == "0" else "0",
    )
    create_topics(env)
    items = [
        it.model_copy(update={"title": it.title + " update" * (i * 7 % 23)})
        for i, it in enumerate(headlines(400, past(900), 1.0))
    ]
    publish_items(broker, topic(env, "raw"), items)  # a backlog before the worker starts
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        wait_for(lambda: len(scored_ids(broker, env)) == 400, 120, "all 400 scored")
        raw = {r.key.decode(): (r.partition, r.offset) for r in read_topic(broker, topic(env, "raw"))}
        scored = sorted(read_topic(broker, topic(env, "scored")), key=lambda r: (r.partition, r.offset))
        ids = [ScoredItem.from_json(r.value).item.id for r in scored]
        assert len(ids) == len(set(ids)) == 400  # one run, no crash: nothing twice
        seen: dict[tuple[int, int], int] = {}
        for r, item_id in zip(scored, ids):
            raw_partition, raw_offset = raw[item_id]
            last = seen.get((r.partition, raw_partition), -1)
            assert raw_offset > last, f"{item_id} overtook raw offset {last} in scored partition {r.partition}"
            seen[(r.partition, raw_partition)] = raw_offset
        sizes = metric(env, "finsent_worker_batch_size_sum") / metric(env, "finsent_worker_batch_size_count")
        assert sizes > 8  # the backlog was scored in large batches, not headline by headline
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=broker, group_id=settings_from(env).stream.group_id, enable_auto_commit=False
        )
        try:
            parts = [TopicPartition(topic(env, "raw"), p) for p in {p for p, _ in raw.values()}]
            ends = {tp.partition: max(o for q, o in raw.values() if q == tp.partition) + 1 for tp in parts}
            # Commits run on an interval: an earlier one may be what is committed at first. Wait for the last.
            committed = wait_for(
                lambda: (c := {tp.partition: consumer.committed(tp) for tp in parts}) == ends and c,
                30,
                f"offsets committed up to {ends}",
            )
            assert committed == ends  # everything delivered was committed, and no further
        finally:
            consumer.close()
        ways = {w: metric(env, f'finsent_worker_model_calls_total{{way="{w}"}}') for w in ("alone", "side_by_side")}
    finally:
        worker.stop()
    assert worker.proc.returncode == 0, worker.log_tail()
    started = next(
        json.loads(line) for line in (tmp_path / "worker.log").read_text().splitlines() if '"worker starting"' in line
    )
    side_by_side = model_calls == "0" and started["backend"].startswith("onnx") and cpu_cores() > 1
    assert started["model_calls"] == (cpu_cores() if side_by_side else 1), started  # the way this variant runs
    alone_below = side_by_side and split_from != "0"
    assert started["alone_below_records"] == (int(split_from) if alone_below else None), started
    if not side_by_side:
        assert ways["alone"] > 0 and ways["side_by_side"] == 0, ways
    elif alone_below:
        assert ways["alone"] > 0 and ways["side_by_side"] > 0, ways  # the first call alone, the backlog side by side
    else:
        assert ways["alone"] == 0 and ways["side_by_side"] > 0, ways


def reference(env, scored: list[ScoredItem]) -> tuple[dict, list[SurgeAlert]]:
    """What a clean run computes: the pure aggregation over every distinct scored item, in event order (its
    alerts as they finally stand)."""
    agg = Aggregation(settings_from(env))
    windows = {}
    first = {}
    for s in scored:
        first.setdefault(s.item.id, s)
    ordered = sorted(first.values(), key=lambda s: s.item.published)
    flush = [lambda: agg.advance(ordered[-1].item.published + timedelta(hours=1))]  # the idle timer, at the end
    published: list[SurgeAlert] = []
    for out in [agg.add(s) for s in ordered] + [f() for f in flush]:
        for c in out.windows:
            windows[(c.stat.key, c.stat.start, c.stat.end)] = c.stat
        published += out.alerts
    return windows, final_alerts(published)


def test_kill_9_mid_batch_then_restart_loses_nothing_and_counts_nothing_twice(broker, tmp_path):
    # Model calls of at most 16 and 50 ms each: the backlog takes seconds to drain on any host, so the kill lands
    # partway (with calls of 512 a fast host drained it within one of kill_9_partway's slices).
    env = worker_env(
        broker,
        tmp_path,
        **FAST_WINDOWS,
        FINSENT_STREAM__MAX_BATCH="16",
        FINSENT_STREAM__MAX_MODEL_BATCH="16",
        FINSENT_STREAM__DEBUG_BATCH_DELAY_S="0.05",
    )
    create_topics(env)
    items = headlines(1500, past(1200), 0.2, burst=range(800, 900))
    publish_items(broker, topic(env, "raw"), items)
    worker = start_worker(env, tmp_path / "worker-1.log")
    kill_9_partway(worker, lambda: len(read_topic(broker, topic(env, "scored"))), 400, 1500, timeout_s=90)

    worker = start_worker(env, tmp_path / "worker-2.log")
    try:
        wait_for(lambda: len(scored_ids(broker, env)) == 1500, 120, "every item scored after the restart")
        last_end = max(it.published for it in items).timestamp() // 10 * 10 + 10
        cutoff = last_end  # closing it needs the idle timer: no item is newer

        def live_windows():
            # Newest revision of each window (duplicates after a restart must be identical). Done when the last
            # bucket has closed *and* every item is counted: items the restarted worker scored after its idle timer
            # had closed their bucket come as revisions, published after that close.
            out = final_windows(WindowStat.from_json(r.value) for r in read_topic(broker, topic(env, "windows")))
            all_10s = [w for k, w in out.items() if k[0] == "all" and (k[2] - k[1]).total_seconds() == 10]
            closed = any(k[0] == "all" and k[2].timestamp() >= cutoff for k in out)
            return out if closed and sum(w.count for w in all_10s) == 1500 else None

        live = wait_for(live_windows, 60, "the final windows closed, every item counted")
        assert metric(env, "finsent_window_restored_items_total") > 0  # the restart rebuilt from the scored log
    finally:
        worker.stop()

    scored = [ScoredItem.from_json(r.value) for r in read_topic(broker, topic(env, "scored"))]
    assert len(scored) >= 1500 and {s.item.id for s in scored} == {it.id for it in items}
    expected, reference_alerts = reference(env, scored)
    expected = {k: v for k, v in expected.items() if k[2].timestamp() <= cutoff}
    live = {k: v for k, v in live.items() if k[2].timestamp() <= cutoff}
    assert live.keys() == expected.keys()
    mismatched = [
        (k, live[k], expected[k])
        for k in expected
        if (live[k].count, live[k].negative, live[k].neutral, live[k].positive)
        != (expected[k].count, expected[k].negative, expected[k].neutral, expected[k].positive)
    ]
    assert not mismatched, mismatched[:3]
    totals = defaultdict(int)
    for (key, start, end), stat in live.items():
        if key == "all" and (end - start).total_seconds() == 10:
            totals["all"] += stat.count
    assert totals["all"] == 1500  # every item in exactly one 10 s bucket of "all"

    # The alerts topic is a changelog (provisional early firings, confirmations, retractions): compare how it
    # finally stands, not every record on it.
    alerts = {
        a.transition
        for a in final_alerts(SurgeAlert.from_json(r.value) for r in read_topic(broker, topic(env, "alerts")))
        if a.window_end.timestamp() <= cutoff
    }
    expected_alerts = {a.transition for a in reference_alerts if a.window_end.timestamp() <= cutoff}
    assert alerts == {a for a in expected_alerts if a[0]}  # same surges as a clean run, on the same side of the cutoff
    assert any(a[0].startswith("topic:Energy | Oil") and a[1] == "firing" for a in alerts), alerts


def own_broker(tmp_path, env_of):
    """A broker of the test's own (the session one must not go down) and a way to start it again."""
    from finsent.local.broker import broker_child
    from finsent.net import free_port, port_open

    port = free_port()

    def start():
        child = broker_child("127.0.0.1", port, tmp_path / "logs")
        child.start(lambda: port_open("127.0.0.1", port), timeout=15)
        create_topics(env_of())
        return child

    return f"127.0.0.1:{port}", start


@contextmanager
def scoring_on_own_broker(tmp_path, first: int, **extra_env: str):
    """A broker of the test's own and a worker that has scored ``first`` records: (env, bootstrap, restart_broker, handles)."""
    env = {}
    bootstrap, start_broker = own_broker(tmp_path, lambda: env)
    env.update(worker_env(bootstrap, tmp_path, **FAST_WINDOWS, **extra_env))
    handles = {"kafka": start_broker()}
    try:
        handles["worker"] = start_worker(env, tmp_path / "worker-1.log")
        publish_items(bootstrap, topic(env, "raw"), headlines(first, past(300), 1.0, prefix="before"))
        wait_for(lambda: len(scored_ids(bootstrap, env)) == first, 60, "first records scored")
        yield env, bootstrap, start_broker, handles
    finally:
        if "worker" in handles:
            handles["worker"].stop()
        handles["kafka"].stop()


def test_the_worker_rides_out_a_broker_outage(tmp_path):
    """The broker stops answering (SIGSTOP: its log survives, as Apache Kafka's would on restart) and comes
    back: the same worker process reconnects, rejoins its group and scores what arrives afterwards."""
    with scoring_on_own_broker(tmp_path, 40) as (env, bootstrap, _, handles):
        kafka, worker = handles["kafka"], handles["worker"]
        kafka.proc.send_signal(signal.SIGSTOP)
        time.sleep(10)  # longer than the group session timeout (6 s): the worker must rejoin
        kafka.proc.send_signal(signal.SIGCONT)
        assert worker.alive(), worker.log_tail()
        publish_items(bootstrap, topic(env, "raw"), headlines(40, past(100), 1.0, prefix="after"))
        wait_for(lambda: len(scored_ids(bootstrap, env)) == 80, 120, "records scored after the outage")
        assert worker.alive()


@pytest.mark.parametrize("check_every_s", [2.0, 3600.0], ids=["timer", "commit-guard-only"])
def test_a_broker_that_lost_its_log_makes_the_worker_restart_and_nothing_new_is_skipped(tmp_path, check_every_s):
    """Tansu keeps its log in memory: stopped and started, it is empty and its topics are new. The worker
    notices (the input topic's id changed), exits with 75 for its supervisor, and a fresh worker scores
    every record of the new log, from offset 0. With the periodic check pushed out of reach, the check before
    each offset commit alone must stop the old worker from committing positions into the new log (the race
    CI once lost: the successor then skipped the new log's first records)."""
    from finsent.stream.worker import EXIT_BROKER_RESET

    with scoring_on_own_broker(tmp_path, 60, FINSENT_STREAM__INPUT_CHECK_INTERVAL_S=str(check_every_s)) as (
        env,
        bootstrap,
        start_broker,
        handles,
    ):
        handles["kafka"].stop()
        handles["kafka"] = start_broker()
        after = headlines(60, past(100), 1.0, prefix="after")
        publish_items(bootstrap, topic(env, "raw"), after)
        worker = handles["worker"]
        wait_for(lambda: not worker.alive(), 30, "the worker to notice the new log")
        assert worker.proc.returncode == EXIT_BROKER_RESET, worker.log_tail()
        handles["worker"] = start_worker(env, tmp_path / "worker-2.log")  # what `finsent demo` / compose restart do
        expected = {it.id for it in after}
        try:
            wait_for(lambda: scored_ids(bootstrap, env) == expected, 90, "every new record scored")
        except AssertionError as err:
            got = scored_ids(bootstrap, env)
            raise AssertionError(
                f"{err}; missing {len(expected - got)}, unexpected {len(got - expected)}\n"
                f"first worker:\n{worker.log_tail()}\nsecond worker:\n{handles['worker'].log_tail()}"
            ) from None
