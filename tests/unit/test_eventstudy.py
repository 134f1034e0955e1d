"""The event study on planted effects: no look-ahead in session mapping, abnormal returns, CIs, correlation."""

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from finsent.backtest.eventstudy import (
    alert_events,
    alert_vs_large_moves,
    daily_sentiment,
    event_sessions,
    forward_returns,
    sentiment_return_correlation,
    study,
)

DAYS = pd.bdate_range("2015-01-05", periods=200)


def prices(drop_after: dict[str, list[int]] | None = None, seed: int = 1) -> pd.DataFrame:
    """Three tickers on a random walk; ``drop_after[t]`` = session indices whose next session falls 5 %."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in ("AAA", "BBB", "CCC"):
        price = 100.0
        drops = set((drop_after or {}).get(t, []))
        for i, d in enumerate(DAYS):
            rows.append({"ticker": t, "date": d, "close": price})
            price *= 1 + rng.normal(0, 0.005) - (0.05 if i in drops else 0.0)
    return pd.DataFrame(rows)


def test_an_item_after_the_close_counts_for_the_next_session_and_weekends_roll_forward():
    p = prices()
    times = pd.Series(
        [
            datetime(2015, 1, 5, 15, 0, tzinfo=UTC),  # 10:00 New York: same session
            datetime(2015, 1, 5, 21, 30, tzinfo=UTC),  # 16:30 New York: after the close -> Tuesday
            datetime(2015, 1, 10, 15, 0, tzinfo=UTC),
        ]
    )  # Saturday -> Monday
    got = event_sessions(times, pd.Series(["AAA"] * 3), p)
    assert list(got.dt.strftime("%Y-%m-%d")) == ["2015-01-05", "2015-01-06", "2015-01-12"]


def test_a_planted_post_surge_drop_is_found_with_a_ci_below_zero_and_baseline_near_zero():
    events_at = {"AAA": [20, 60, 100, 140], "BBB": [30, 70, 110, 150], "CCC": [40, 80, 120, 160]}
    p = prices(drop_after={t: [i + 0 for i in idx] for t, idx in events_at.items()})
    r = forward_returns(p)
    alerts = pd.DataFrame(
        [
            {
                "key": f"ticker:{t}",
                "state": "firing",
                "severity": "warning",
                "zscore": 4.0,
                "window_end": DAYS[i].tz_localize("America/New_York") + pd.Timedelta(hours=12),
            }
            for t, idx in events_at.items()
            for i in idx
        ]
    )
    ev = alert_events(alerts, p)
    assert len(ev) == 12
    res = study(ev, r).set_index("horizon")
    one = res.loc[1]
    assert one["mean_ar"] < -0.02 and one["ci_high"] < 0 and one["hit_rate"] > 0.9
    assert abs(one["baseline_mean_ar"]) < 0.01 and one["ci_high"] < one["baseline_ci_low"]
    table = alert_vs_large_moves(ev, r)
    assert table["alert=True,large=True"] >= 10


def test_daily_sentiment_correlates_with_next_session_returns_when_planted():
    p = prices(drop_after={"AAA": list(range(10, 190, 3))})
    r = forward_returns(p)
    rows = []
    for i, d in enumerate(DAYS[:190]):
        bad = (i - 10) % 3 == 0 and i >= 10  # negative on the sessions whose close starts a drop
        for k in range(4):
            rows.append(
                {
                    "item_id": f"{i}-{k}",
                    "published": d.tz_localize("America/New_York") + pd.Timedelta(hours=11),
                    "tickers": ["AAA"],
                    "score": -0.8 if bad else 0.3,
                    "sentiment": "negative" if bad else "neutral",
                }
            )
    daily = daily_sentiment(pd.DataFrame(rows), p)
    corr = sentiment_return_correlation(daily, r)
    assert corr["n"] > 150 and corr["pearson"] > 0.5


def test_any_ohlc_file_loads_with_a_column_mapping(tmp_path):
    import pytest

    from finsent.backtest.eventstudy import PriceColumns, load_prices

    path = tmp_path / "bars.csv"
    path.write_text("Date,Symbol,Open,Close\n2015-01-05,aaa,1,10\n2015-01-06,aaa,1,11\n2015-01-05,bbb,1,5\n")
    p = load_prices(path, PriceColumns(date="Date", ticker="Symbol", close="Close"))
    assert list(p["ticker"]) == ["AAA", "AAA", "BBB"] and list(p["close"]) == [10.0, 11.0, 5.0]
    with pytest.raises(ValueError, match="missing price columns"):
        load_prices(path, PriceColumns(date="when"))
