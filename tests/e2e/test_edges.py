"""The worker's edge with real processes: a real worker, the real (Tansu) broker, the shipped model.

Any producer can write the raw topic, so the worker checks what ingest checks: an event time far ahead of
the fetch time is clamped to it and flagged, a ticker list is cut to ``windows.max_tickers_per_item``, both
counted on /metrics. And a poison record too big for its dead letter to fit under the broker's message limit
(1 MiB by default on Apache Kafka and in aiokafka's producer) is dead-lettered truncated, with its size and
SHA-256, so the worker never retries an undeliverable letter for ever and goes on scoring.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

import httpx
from streamkit import (
    FAST_WINDOWS,
    create_topics,
    metrics_url,
    publish,
    read_topic,
    start_worker,
    topic,
    wait_for,
    worker_env,
)

from finsent.records import DeadLetter, NewsItem, ScoredItem

POISON_BYTES = 900 * 1024  # under a 1 MiB message limit itself; its letter in base64 (1.2 MB) would not be


def labelled(env, name: str) -> dict[str, float]:
    """``{label value: sample}`` of a one-label counter on the worker's /metrics."""
    text = httpx.get(metrics_url(env), timeout=5).text
    return {m[1]: float(m[2]) for m in re.finditer(rf'^{name}{{\w+="([^"]*)"}} (\S+)$', text, re.M)}


def test_the_worker_clamps_future_dates_caps_tickers_and_truncates_a_huge_dead_letter(broker, tmp_path):
    env = worker_env(broker, tmp_path, **FAST_WINDOWS)
    create_topics(env)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        fetched = datetime.now(UTC) - timedelta(seconds=20)
        future = NewsItem(
            id="from-2068",
            title="Exxon shares slide after guidance cut",
            source="test-wire",
            published=datetime(2068, 1, 2, tzinfo=UTC),
            fetched=fetched,
        )  # "1/2/68" read as 2068
        spam = NewsItem(
            id="spam",
            title="Top movers today",
            source="test-wire",
            published=fetched,
            fetched=fetched,
            tickers=tuple(f"S{i:03d}" for i in range(300)),
        )
        good = NewsItem(
            id="after-poison",
            title="Oil steady as traders wait for data",
            source="test-wire",
            published=fetched,
            fetched=fetched,
        )
        poison = b'{"id": "huge", "title": "' + b"y" * POISON_BYTES + b'"}'
        # One key: one partition, in this order, so the good records come after the poison one.
        publish(
            broker,
            topic(env, "raw"),
            [(b"edge", poison), (b"edge", future.to_json()), (b"edge", spam.to_json()), (b"edge", good.to_json())],
        )

        def scored():
            records = read_topic(broker, topic(env, "scored"))
            out = {s.item.id: s for s in (ScoredItem.from_json(r.value) for r in records)}
            return out if len(out) == 3 else None

        by_id = wait_for(scored, 90, "the three good records scored after the poison one")
        clamped = by_id["from-2068"].item
        assert clamped.published == clamped.fetched == fetched and clamped.published_clamped is True
        assert not clamped.published_inferred
        assert by_id["spam"].item.tickers == tuple(f"S{i:03d}" for i in range(20))
        assert by_id["spam"].item.published_clamped is None and by_id["after-poison"].item == good  # untouched

        (record,) = wait_for(lambda: read_topic(broker, topic(env, "dlq")), 30, "the dead letter")
        letter = DeadLetter.from_json(record.value)
        assert "exceeds max_record_bytes" in letter.error and letter.source_topic == topic(env, "raw")
        assert letter.truncated is True and letter.original_size == len(poison)
        assert letter.original_sha256 == hashlib.sha256(poison).hexdigest()
        assert letter.value == poison[: DeadLetter.MAX_VALUE_BYTES]

        assert labelled(env, "finsent_worker_items_corrected_total") == {"clamped": 1.0, "tickers_capped": 1.0}
        assert labelled(env, "finsent_worker_items_failed_total") == {
            "poison": 1.0,
            "model": 0.0,
            "bad_scored_record": 0.0,
        }
        assert "raw items corrected at the edge" in worker.log_tail(200)
    finally:
        worker.stop()
    assert worker.proc.returncode == 0, worker.log_tail()
    log = worker.log_tail(400)
    assert "worker stopped" in log and "\x1b" not in log  # a stop line; no terminal escapes (Faust's spinner)
