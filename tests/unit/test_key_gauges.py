"""The worker's per-key gauges, made at scrape time from the newest state: the ticker bound, empty windows,
and surge state that follows the detector (a firing key is never hidden, a resolved one never stays active, a
forgotten one has no series)."""

from __future__ import annotations

from datetime import timedelta

from factories import T0, news_item, scored_item, surge_alert, window_stat
from prometheus_client import generate_latest

from finsent.records import WindowStat
from finsent.settings import load
from finsent.stream.aggregator import Aggregator
from finsent.stream.metrics import WorkerMetrics


def window(key: str, count: int, negative: int, minute: int = 0) -> tuple[WindowStat, int]:
    return window_stat(key, at=T0 + timedelta(minutes=minute), count=count, negative=negative), 300


def scrape(metrics: WorkerMetrics) -> dict[str, float]:
    out = {}
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith(("finsent_window_", "finsent_surge_")) and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_only_the_busiest_tickers_and_the_watchlist_get_window_series_and_a_dropped_one_goes():
    m = WorkerMetrics(top_k=1, watchlist=("XOM",))
    m.windows(
        [window("ticker:AAPL", 10, 5), window("ticker:TSLA", 2, 1), window("ticker:XOM", 1, 0)],
        {"AAPL": 10, "TSLA": 2, "XOM": 1},
    )
    got = scrape(m)
    assert got['finsent_window_count{dim="ticker",name="AAPL",width="300"}'] == 10
    assert 'finsent_window_count{dim="ticker",name="XOM",width="300"}' in got  # watch-list
    assert not any('name="TSLA"' in k for k in got)
    m.windows([window("ticker:TSLA", 20, 1, minute=5)], {"AAPL": 10, "TSLA": 30, "XOM": 1})
    got = scrape(m)
    assert not any('name="AAPL"' in k for k in got)  # dropped out of the bound: no series at all
    assert got['finsent_window_count{dim="ticker",name="TSLA",width="300"}'] == 20
    assert got['finsent_window_count{dim="ticker",name="XOM",width="300"}'] == 0  # shown, no window now: empty


def test_a_key_without_a_window_at_this_boundary_reads_as_an_empty_window_ending_now():
    m = WorkerMetrics()
    m.windows([window("topic:Macro", 4, 3)], {})
    end = T0 + timedelta(minutes=10)
    m.windows([], {}, end)
    got = scrape(m)
    assert got['finsent_window_count{dim="topic",name="Macro",width="300"}'] == 0
    assert got['finsent_window_end_timestamp_seconds{dim="topic",name="Macro",width="300"}'] == end.timestamp()


def test_a_ticker_outside_the_bound_that_fires_is_shown_and_once_resolved_is_not_left_active():
    m = WorkerMetrics(top_k=0)
    m.windows([], {"TSLA": 1})
    m.surge_states([("ticker:TSLA", 4.2, 0.1, surge_alert("ticker:TSLA", alert_id="t1"), 9)])
    assert scrape(m)['finsent_surge_active{dim="ticker",name="TSLA",severity="warning"}'] == 1
    m.windows([], {"TSLA": 1})  # a boundary while it fires: still shown
    assert scrape(m)['finsent_surge_active{dim="ticker",name="TSLA",severity="warning"}'] == 1
    m.surge_states([("ticker:TSLA", 0.1, 0.1, None, 1)])  # resolved
    assert not any(k.startswith("finsent_surge_active") and 'name="TSLA"' in k and v == 1 for k, v in scrape(m).items())


def test_topic_surge_state_follows_the_detector():
    m = WorkerMetrics()
    m.surge_states([("topic:Macro", 5.0, 0.2, surge_alert("topic:Macro", severity="critical"), 20)])
    got = scrape(m)
    assert got['finsent_surge_active{dim="topic",name="Macro",severity="critical"}'] == 1
    assert got['finsent_surge_active{dim="topic",name="Macro",severity="warning"}'] == 0
    assert got['finsent_surge_zscore{dim="topic",name="Macro"}'] == 5.0
    m.surge_states([("topic:Macro", 0.5, 0.2, None, 3)])
    assert scrape(m)['finsent_surge_active{dim="topic",name="Macro",severity="critical"}'] == 0


def test_a_key_the_detector_forgot_has_no_surge_series(tmp_path):
    """The aggregator hands the detector's state over whole at each export: a key idle past
    ``surge.forget_after_s`` and dropped from the detector's memory loses its series (it kept its last values on
    /metrics for ever while the gauges were fed key by key)."""
    settings = load(
        paths={"state_dir": str(tmp_path / "state")},
        surge={"forget_after_s": 900, "warmup_windows": 0, "min_volume": 1},
    )
    metrics = WorkerMetrics()
    agg = Aggregator(settings, metrics)  # no broker: its export path only, fed by the real Aggregation
    agg.agg.restoring = False
    n = 0

    def feed(topic: str, minute: int) -> None:
        nonlocal n
        n += 1
        agg._export(agg.agg.add(scored_item(news_item(f"n{n}", at=T0 + timedelta(minutes=minute)), topic=topic)))
        agg._export(agg.agg.end_step())

    for minute in range(20):
        feed("Macro", minute)
    assert 'finsent_surge_zscore{dim="topic",name="Macro"}' in scrape(metrics)
    for minute in range(30, 330, 2):  # five hours of another topic only: Macro goes idle past the horizon
        feed("Earnings", minute)
    agg._export(agg.agg.advance(T0 + timedelta(hours=6)))
    assert "topic:Macro" not in agg.agg.detector.keys and agg.agg.forgotten >= 1
    got = scrape(metrics)
    assert not any('name="Macro"' in k for k in got if k.startswith("finsent_surge_")), sorted(got)
    assert 'finsent_surge_zscore{dim="topic",name="Earnings"}' in got  # the key still kept is still shown
