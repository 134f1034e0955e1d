"""Time against a real worker (Tansu broker, ``finsent worker``): late news counts, bad clocks don't stop it."""

from __future__ import annotations

import collections
import random
import time
from datetime import UTC, datetime, timedelta

import httpx
from streamkit import (
    FAST_WINDOWS,
    create_topics,
    headlines,
    metrics_url,
    publish_items,
    read_topic,
    start_worker,
    topic,
    wait_for,
    worker_env,
)

from finsent.records import NewsItem, WindowStat
from finsent.stream.pipeline import final_windows


def feed_lag(rng: random.Random) -> float:
    """Seconds a headline's publish time lags the moment we read it, as real feeds do."""
    r = rng.random()
    if r < 0.4:
        return rng.uniform(0, 60)
    if r < 0.7:
        return rng.uniform(60, 300)
    if r < 0.9:
        return rng.uniform(300, 900)
    return rng.uniform(900, 2400)


def all_windows(broker, env, width_s: int) -> dict:
    stats = (WindowStat.from_json(r.value) for r in read_topic(broker, topic(env, "windows")))
    return {k: w for k, w in final_windows(stats).items() if k[0] == "all" and (k[2] - k[1]).total_seconds() == width_s}


def test_news_as_late_as_real_feeds_counts_exactly_once_in_the_newest_window_revisions(broker, tmp_path):
    """600 items lagging the wall clock like real feeds (40 % < 1 min … 10 % 15–40 min): all counted."""
    env = worker_env(broker, tmp_path, **{**FAST_WINDOWS, "FINSENT_WINDOWS__ALLOWED_LATENESS_S": "3600"})
    create_topics(env)
    rng = random.Random(14)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        template = headlines(600, datetime.now(UTC), 0.0)
        for chunk in range(12):  # 50 items every half second: they arrive while windows close around them
            now = datetime.now(UTC)
            batch = [
                NewsItem(**{**it.model_dump(), "published": now - timedelta(seconds=feed_lag(rng)), "fetched": now})
                for it in template[chunk * 50 : (chunk + 1) * 50]
            ]
            publish_items(broker, topic(env, "raw"), batch)
            time.sleep(0.5)

        def counted():
            return sum(w.count for w in all_windows(broker, env, 10).values())

        wait_for(lambda: counted() == 600, 120, "all 600 items counted in the 10-s 'all' windows", every=2)
        stats = [WindowStat.from_json(r.value) for r in read_topic(broker, topic(env, "windows"))]
        published = collections.Counter((w.key, w.start, w.end) for w in stats if w.key == "all")
        assert any(n > 1 for n in published.values()), "late items must have revised windows that had closed"
        time.sleep(3)
        assert counted() == 600  # and nothing counted twice since
    finally:
        worker.stop()
    log = (tmp_path / "worker.log").read_text()
    assert '"too late' not in log


def test_a_2068_dated_item_is_clamped_and_windows_keep_closing_after_a_quiet_gap(broker, tmp_path):
    env = worker_env(broker, tmp_path, **FAST_WINDOWS)
    create_topics(env)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        now = datetime.now(UTC)
        publish_items(broker, topic(env, "raw"), headlines(20, now - timedelta(seconds=20), 1.0, prefix="a"))
        bad = NewsItem(
            id="future",
            title="Oil prices jump on supply fears",
            source="bad-clock",
            published=datetime(2068, 1, 2, tzinfo=UTC),
            fetched=now,
        )
        publish_items(broker, topic(env, "raw"), [bad])
        time.sleep(15)  # a quiet gap: the idle timer must not carry event time to 2068
        later = datetime.now(UTC)
        publish_items(broker, topic(env, "raw"), headlines(20, later, 0.5, prefix="b"))

        last_b = later + timedelta(seconds=19 * 0.5)

        def closed_after_gap():
            # The 10-s window holding the newest item after the gap has closed. (Not "a window ending 10 s after
            # `later`": when `later` lies less than 0.5 s past a bucket boundary, every item after the gap falls in
            # one bucket ending before that, and such a window never exists; CI failed so.)
            return any(start <= last_b < end for _, start, end in all_windows(broker, env, 10))

        try:
            wait_for(closed_after_gap, 90, "windows after the quiet gap to close", every=1)
        except AssertionError:
            metrics = httpx.get(metrics_url(env), timeout=5).text.splitlines()
            print(
                "\n".join(
                    m
                    for m in metrics
                    if m.startswith(
                        (
                            "finsent_worker_items",
                            "finsent_window_watermark",
                            "finsent_worker_consumer_lag",
                            "finsent_windows_",
                        )
                    )
                )
            )
            print(sorted(k[2] for k in all_windows(broker, env, 10))[-5:], later)
            raise
        ends = [k[2] for k in all_windows(broker, env, 10)]
        assert max(ends) < datetime.now(UTC) + timedelta(minutes=6), "a window from the future was published"
        counted = sum(w.count for w in all_windows(broker, env, 10).values())
        wait_for(lambda: sum(w.count for w in all_windows(broker, env, 10).values()) == 41, 60, "41 items counted")
        assert counted <= 41
    finally:
        worker.stop()
