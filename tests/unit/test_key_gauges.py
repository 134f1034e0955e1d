"""The worker's per-key gauges, made at scrape time from the newest state: the ticker bound, empty windows,
and surge state that follows the detector (a firing key is never hidden, a resolved one never stays active)."""

from __future__ import annotations

from datetime import timedelta

from factories import T0, surge_alert
from prometheus_client import generate_latest

from finsent.records import WindowStat
from finsent.stream.metrics import WorkerMetrics


def window(key: str, count: int, negative: int, minute: int = 0) -> tuple[WindowStat, int]:
    start = T0 + timedelta(minutes=minute)
    stat = WindowStat(
        key=key,
        start=start,
        end=start + timedelta(seconds=300),
        count=count,
        negative=negative,
        neutral=count - negative,
        positive=0,
        mean_score=-negative / count if count else 0.0,
    )
    return stat, 300


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
    m.surge_state("ticker:TSLA", 4.2, 0.1, surge_alert("ticker:TSLA", alert_id="t1"), count=9)
    assert scrape(m)['finsent_surge_active{dim="ticker",name="TSLA",severity="warning"}'] == 1
    m.windows([], {"TSLA": 1})  # a boundary while it fires: still shown
    assert scrape(m)['finsent_surge_active{dim="ticker",name="TSLA",severity="warning"}'] == 1
    m.surge_state("ticker:TSLA", 0.1, 0.1, None, count=1)  # resolved
    assert not any(k.startswith("finsent_surge_active") and 'name="TSLA"' in k and v == 1 for k, v in scrape(m).items())


def test_topic_surge_state_follows_the_detector():
    m = WorkerMetrics()
    m.surge_state("topic:Macro", 5.0, 0.2, surge_alert("topic:Macro", severity="critical"), count=20)
    got = scrape(m)
    assert got['finsent_surge_active{dim="topic",name="Macro",severity="critical"}'] == 1
    assert got['finsent_surge_active{dim="topic",name="Macro",severity="warning"}'] == 0
    assert got['finsent_surge_zscore{dim="topic",name="Macro"}'] == 5.0
    m.surge_state("topic:Macro", 0.5, 0.2, None, count=3)
    assert scrape(m)['finsent_surge_active{dim="topic",name="Macro",severity="critical"}'] == 0
