"""Backtests tell the truth about live: the offline backtest and a replay through Kafka and a real worker
produce the same windows and surges. Plus the backtest's score cache and the replay's pacing/resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest

from finsent.ingest.archive import Archive
from finsent.ingest.replay import parse_speed, replay, state_path
from finsent.records import SurgeAlert, WindowStat
from finsent.stream.backtest import ScoreCache, run_backtest
from streamkit import FAST_WINDOWS, create_topics, headlines, past, read_topic, settings_from, start_worker, topic, wait_for, worker_env


@pytest.fixture(scope="module")
def classifier():
    from finsent.model import Classifier

    return Classifier.load()


def backtest(settings, items, out, classifier, cache, **kw):
    predict = classifier.predict if classifier is not None else None
    return run_backtest(settings, items, out, f"{classifier.version if classifier else 'm'}/auto", predict, cache, **kw)


def test_a_second_backtest_with_other_surge_settings_runs_from_the_cache(tmp_path, classifier):
    env = worker_env("127.0.0.1:1", tmp_path, **FAST_WINDOWS)
    settings = settings_from(env)
    items = headlines(400, past(3600), 0.5, burst=range(250, 300))
    cache = ScoreCache(tmp_path / "cache.sqlite")
    first = backtest(settings, items, tmp_path / "run1", classifier, cache)
    assert (first.items, first.inferred, first.cached) == (400, 400, 0)
    stricter = settings.model_copy(update={"surge": settings.surge.model_copy(update={"z_threshold": 50.0, "critical_z": 60.0})})
    second = run_backtest(stricter, items, tmp_path / "run2", f"{classifier.version}/auto", None, cache)  # no model at all
    assert (second.inferred, second.cached) == (0, 400)
    assert first.alerts and not [a for a in second.alerts if a.state == "firing"]
    run = json.loads((tmp_path / "run1" / "run.json").read_text())
    assert run["model"].startswith("finsent-minilm@") and run["items"] == 400 and run["settings"]["surge"]["z_threshold"] == 3.0
    windows = pq.read_table(tmp_path / "run1" / "windows.parquet").to_pylist()
    assert sum(w["count"] for w in windows if w["key"] == "all" and w["width_s"] == 10) == 400
    scores = pq.read_table(tmp_path / "run1" / "scores.parquet")
    assert scores.num_rows == 400 and set(scores.column("sentiment").to_pylist()) <= {"negative", "neutral", "positive"}
    assert [SurgeAlert.from_json(line) for line in (tmp_path / "run1" / "alerts.jsonl").read_bytes().splitlines()] == first.alerts


def test_speed_parsing():
    assert parse_speed("60x") == 60.0 and parse_speed("2.5") == 2.5 and parse_speed("max") is None
    for bad in ("fast", "0x", "-3x"):
        with pytest.raises(ValueError):
            parse_speed(bad)


def test_replay_keeps_gaps_scaled_by_speed_and_resumes_after_an_interruption(tmp_path):
    items = headlines(10, datetime(2024, 5, 2, 12, 0, tzinfo=UTC), 60.0)  # one a minute
    sent, slept, now = [], [], [0.0]
    state = state_path(tmp_path, None, None, "raw")

    def sleep(seconds):  # a test clock: pacing is checked without waiting for it
        slept.append(seconds)
        now[0] += seconds

    def flaky(batch):
        if len(sent) >= 4:
            return []  # the broker stops acknowledging
        sent.extend(batch)
        return batch

    with pytest.raises(RuntimeError, match="not acknowledged"):
        replay(items, flaky, 60.0, state, batch=2, sleep=sleep, clock=lambda: now[0])
    assert [it.id for it in sent] == [f"n{i}" for i in range(4)]
    assert slept and all(abs(s - 1.0) < 1e-9 for s in slept)  # a minute of news per second at 60x
    rest = []
    report = replay(items, lambda b: rest.extend(b) or b, None, state, batch=3)
    assert report.skipped == 4 and [it.id for it in rest] == [f"n{i}" for i in range(4, 10)]


def test_backtest_and_replay_through_kafka_and_a_real_worker_agree(broker, tmp_path, classifier):
    env = worker_env(broker, tmp_path, **FAST_WINDOWS, FINSENT_PATHS__ARCHIVE_DIR=str(tmp_path / "archive"))
    create_topics(env)
    settings = settings_from(env)
    items = headlines(1200, past(1200), 0.25, burst=range(700, 800))
    Archive(settings.paths.archive_dir).append(items)
    offline = backtest(settings, Archive(settings.paths.archive_dir).read(), tmp_path / "bt", classifier,
                       ScoreCache(tmp_path / "cache.sqlite"))
    offline_windows = {(w["key"], w["start"], w["end"]): w["count"]
                       for w in pq.read_table(tmp_path / "bt" / "windows.parquet").to_pylist()}
    offline_alerts = {(a.key, a.window_start, a.window_end, a.state, a.severity) for a in offline.alerts}
    assert any(a[3] == "firing" for a in offline_alerts), "the burst must raise a surge, or the test proves little"

    worker = start_worker(env, tmp_path / "worker.log")
    try:
        r = subprocess.run([sys.executable, "-m", "finsent.cli", "replay", "--speed", "max"], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "replayed 1200 items" in r.stderr, r.stderr
        last_end = max(it.published for it in items).timestamp() // 10 * 10 + 10

        def live_windows():
            got = {}
            for rec in read_topic(broker, topic(env, "windows")):
                w = WindowStat.from_json(rec.value)
                got[(w.key, w.start, w.end)] = w.count
            return got if any(k[0] == "all" and k[2].timestamp() >= last_end for k in got) else None

        live = wait_for(live_windows, 120, "the replayed windows to close")
    finally:
        worker.stop()
    cutoff = last_end
    live = {k: v for k, v in live.items() if k[2].timestamp() <= cutoff}
    expected = {k: v for k, v in offline_windows.items() if k[2].timestamp() <= cutoff}
    assert live == expected
    live_alerts = {(a.key, a.window_start, a.window_end, a.state, a.severity)
                   for a in (SurgeAlert.from_json(r.value) for r in read_topic(broker, topic(env, "alerts")))
                   if a.window_end.timestamp() <= cutoff}
    assert live_alerts == {a for a in offline_alerts if a[2].timestamp() <= cutoff}


def test_the_report_is_self_contained_html_with_its_plots(tmp_path, classifier):
    """Backtest output + a price file → report.html with embedded PNGs, the event-study table and provenance."""
    import numpy as np
    import pandas as pd

    env = worker_env("127.0.0.1:1", tmp_path, **FAST_WINDOWS)
    settings = settings_from(env)
    start = datetime(2015, 3, 2, 14, 0, tzinfo=UTC)
    items = headlines(300, start, 6 * 3600.0)  # every 6 hours for 75 days; every 7th names XOM
    backtest(settings, items, tmp_path / "bt", classifier, ScoreCache(tmp_path / "c.sqlite"))
    days = pd.bdate_range("2015-02-02", "2015-06-30")
    rng = np.random.default_rng(3)
    rows = [{"date": d.strftime("%Y-%m-%d"), "ticker": t, "open": 1, "high": 1, "low": 1,
             "close": 100 * (1 + rng.normal(0, 0.01)) ** i, "adj_close": 100 * (1 + rng.normal(0, 0.01)) ** i, "volume": 1}
            for t in ("XOM", "CVX", "BP") for i, d in enumerate(days)]
    pd.DataFrame(rows).to_csv(tmp_path / "prices.csv", index=False)
    with (tmp_path / "bt" / "alerts.jsonl").open("a") as fh:
        for k in range(3):
            fh.write(json.dumps({"key": "ticker:XOM", "state": "firing", "severity": "warning", "zscore": 4.0 + k,
                                 "window_end": (start + timedelta(days=20 + 15 * k)).isoformat()}) + "\n")
    from finsent.stream.backtest_report import write_report

    out = write_report(tmp_path / "bt", tmp_path / "prices.csv")
    text = out.read_text()
    assert text.count('src="data:image/png;base64,') >= 2  # event-study curve + the XOM price/sentiment plot
    assert "<script" not in text and "http" not in text.split("<body>")[1].split("Run folder")[0]  # nothing to fetch
    assert "Event study (3 surge events)" in text and "<th>horizon</th>" in text and "sha256" in text
    numbers = json.loads((tmp_path / "bt" / "eventstudy.json").read_text())
    assert numbers["events"] == 3 and [r["horizon"] for r in numbers["study"]] == [1, 3, 5, 10]
