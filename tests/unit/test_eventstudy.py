"""The event study on planted effects: no look-ahead in session mapping, abnormal returns, CIs, correlation."""

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from finsent.backtest.eventstudy import (
    alert_events,
    alert_vs_large_moves,
    daily_sentiment,
    event_sessions,
    forward_returns,
    sentiment_return_correlation,
    study,
)
from finsent.errors import ConfigError, PriceFileError

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
    with pytest.raises(PriceFileError, match="missing price columns"):  # a ConfigError: one line, exit 2
        load_prices(path, PriceColumns(date="when"))
    with pytest.raises(PriceFileError, match="no such file"):
        load_prices(tmp_path / "nope.csv")
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00garbage\x00\n")
    with pytest.raises(PriceFileError, match=r"binary\.csv"):
        load_prices(tmp_path / "binary.csv")
    for bad in (["close"], ["when=Date"]):
        with pytest.raises(ConfigError, match="--price-map"):
            PriceColumns.parse(bad)


# -- hand-made series, numbers checked by hand ---------------------------------------------------------------
D = pd.bdate_range("2015-01-05", periods=8)  # Mon 5 .. Wed 14 January 2015


def bars(table: dict[str, list[float | None]]) -> pd.DataFrame:
    """{ticker: closes on D[0], D[1], ...}; None = no bar that day."""
    return pd.DataFrame(
        [
            {"ticker": t, "date": D[i], "close": c}
            for t, closes in table.items()
            for i, c in enumerate(closes)
            if c is not None
        ]
    )


def surge(ticker: str, day: pd.Timestamp) -> dict:
    """A firing surge whose window ended at 11:00 New York on ``day`` (that session)."""
    return {
        "key": f"ticker:{ticker}",
        "state": "firing",
        "severity": "warning",
        "zscore": 4.0,
        "window_end": day.tz_localize("America/New_York") + pd.Timedelta(hours=11),
    }


def test_a_return_never_spans_a_gap_in_the_tickers_prices():
    # A has no bars on D[3], D[4]: its 1-session return from D[2] does not exist (it was 90/100 - 1 = -10 %
    # over three sessions); its 3-session return D[2] -> D[5] is 90/100 - 1 = -10 %, minus the mean of B and C (0).
    p = bars(
        {
            "AAA": [100, 100, 100, None, None, 90, 90, 90],
            "BBB": [50] * 8,
            "CCC": [20] * 8,
        }
    )
    r = forward_returns(p, horizons=(1, 3)).set_index(["ticker", "date"])
    assert np.isnan(r.loc[("AAA", D[2]), "r1"]) and np.isnan(r.loc[("AAA", D[1]), "r3"])
    assert r.loc[("AAA", D[2]), "r3"] == pytest.approx(-0.10) and r.loc[("AAA", D[2]), "ar3"] == pytest.approx(-0.10)
    assert r.loc[("AAA", D[2]), "session"] == 2 and r.loc[("AAA", D[5]), "session"] == 5  # calendar sessions

    table = study(alert_events(pd.DataFrame([surge("AAA", D[2])]), p), forward_returns(p, horizons=(1, 3)), (1, 3))
    one, three = table.set_index("horizon").loc[1], table.set_index("horizon").loc[3]
    assert (one["events"], one["no_return"]) == (0, 1)
    assert (three["events"], three["mean_ar"]) == (1, pytest.approx(-0.10))


def test_a_surge_inside_a_gap_of_its_tickers_prices_is_left_out_and_counted_not_moved_weeks_later():
    from finsent.backtest.eventstudy import NO_BAR, NO_PRICES, OUTSIDE, surge_events

    p = bars({"AAA": [100, 100, 100, None, None, 90, 90, 90], "BBB": [50] * 8, "CCC": [20] * 8})
    alerts = pd.DataFrame(
        [
            surge("AAA", D[3]),  # A has no bar that session: it used to become an event on D[5]
            surge("ZZZ", D[3]),  # a ticker the price file does not have
            surge("BBB", D[0] + pd.Timedelta(days=60)),  # after the last session of the file
            surge("BBB", D[1]),  # the one usable surge
        ]
    )
    assert alert_events(alerts, p)[["ticker", "date"]].values.tolist() == [["BBB", D[1]]]
    got = surge_events(alerts, p, forward_returns(p))
    assert got.fired == 4 and len(got.events) == 1
    assert dict(zip(got.left_out["ticker"], got.left_out["reason"])) == {
        "AAA": NO_BAR,
        "ZZZ": NO_PRICES,
        "BBB": OUTSIDE,
    }


def test_bad_closes_and_conflicting_duplicate_bars_are_dropped_and_counted(tmp_path):
    import pytest

    from finsent.backtest.eventstudy import load_prices, read_prices

    path = tmp_path / "bars.csv"
    path.write_text(
        "date,ticker,close\n"
        "2015-01-05,AAA,100\n2015-01-06,AAA,0\n2015-01-07,AAA,-5\n2015-01-08,AAA,110\n"  # a zero and a negative tick
        "2015-01-05,BBB,50\n2015-01-06,BBB,51\n2015-01-06,BBB,61\n"  # BBB on the 6th: two closes, neither trusted
        "2015-01-07,BBB,52\n2015-01-07,BBB,52\n"  # an exact copy: kept once
        "2015-01-08,BBB,oops\n,CCC,1\n"  # unreadable
    )
    p = load_prices(path)
    assert p[["ticker", "close"]].values.tolist() == [["AAA", 100.0], ["AAA", 110.0], ["BBB", 50.0], ["BBB", 52.0]]
    dropped = read_prices(path)[1]
    assert dropped == {"rows_read": 11, "unreadable": 2, "non_positive": 2, "conflicting": 2, "repeated": 1}
    # AAA's return from the 5th: the next session (the 6th) has no AAA bar any more: NaN, not -100 %
    r = forward_returns(p, horizons=(1,)).set_index(["ticker", "date"])
    assert np.isnan(r.loc[("AAA", pd.Timestamp("2015-01-05")), "r1"])
    with pytest.raises(PriceFileError, match="no usable price rows"):
        (tmp_path / "none.csv").write_text("date,ticker,close\n2015-01-05,AAA,0\n")
        read_prices(tmp_path / "none.csv")


def test_abnormal_returns_use_the_other_tickers_and_need_enough_of_them():
    # D[0] -> D[1]: A +10 %, B +10 %, C 0 %. Leave-one-out market: A: (10 + 0) / 2 = 5 % -> AR +5 %;
    # B: +5 %; C: (10 + 10) / 2 = 10 % -> AR -10 %. (With A in its own market it was 10 - 6.67 = +3.33 %.)
    p = bars({"AAA": [100, 110], "BBB": [50, 55], "CCC": [20, 20]})
    r = forward_returns(p, horizons=(1,)).set_index(["ticker", "date"])
    assert r.loc[("AAA", D[0]), "ar1"] == pytest.approx(0.05)
    assert r.loc[("BBB", D[0]), "ar1"] == pytest.approx(0.05)
    assert r.loc[("CCC", D[0]), "ar1"] == pytest.approx(-0.10)
    assert r.loc[("AAA", D[0]), "peers1"] == 2

    # One ticker: a -20 % day after the surge is not an abnormal return of 0 -- there is no market to adjust by.
    alone = bars({"AAA": [100, 80, 80]})
    ra = forward_returns(alone, horizons=(1,))
    table = study(alert_events(pd.DataFrame([surge("AAA", D[0])]), alone), ra, horizons=(1,)).iloc[0]
    assert np.isnan(ra["ar1"].iloc[0]) and ra["r1"].iloc[0] == pytest.approx(-0.20)
    assert (table["events"], table["no_market"]) == (0, 1)

    # Two tickers: one peer is below MIN_PEERS (a pair difference, not a market)
    pair = forward_returns(bars({"AAA": [100, 80], "BBB": [50, 50]}), horizons=(1,))
    assert pair["ar1"].isna().all() and list(pair["r1"].dropna()) == [pytest.approx(-0.2), 0.0]


def test_a_surge_raised_when_its_window_closed_is_studied_from_when_live_knew_it(tmp_path):
    """A window ending at 15:00 New York closes only once the watermark passes it, watermark_delay_s later: with an
    hour's delay live raised it after the close, and the study measured from that day's close (a look-ahead). One
    first raised early, while its window was open, was known by the window's end."""
    import json

    from finsent.backtest.eventstudy import surge_events
    from finsent.backtest.report import load_alerts

    p = bars({"AAA": [100] * 6, "BBB": [50] * 6, "CCC": [20] * 6})
    end = (D[1].tz_localize("America/New_York") + pd.Timedelta(hours=15)).tz_convert("UTC").isoformat()
    final = [
        {
            "alert_id": f"{t}|{end}",
            "key": f"ticker:{t}",
            "state": "firing",
            "severity": "warning",
            "zscore": 4.0,
            "window_end": end,
            "trigger": "close",
        }
        for t in ("AAA", "BBB")
    ]
    changelog = [{**final[1], "trigger": "early"}, *final]  # BBB fired early first, then was confirmed at close
    (tmp_path / "alerts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in final))
    (tmp_path / "alerts-changelog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in changelog))
    alerts = load_alerts(tmp_path / "alerts.jsonl", tmp_path / "alerts-changelog.jsonl", watermark_delay_s=3600)
    events = surge_events(alerts, p).events.set_index("ticker")["date"]
    assert events["AAA"] == D[2] and events["BBB"] == D[1]
    assert surge_events(load_alerts(tmp_path / "alerts.jsonl"), p).events.set_index("ticker")["date"]["AAA"] == D[1]


def test_another_exchanges_close_decides_the_session_and_bad_options_are_one_line():
    """The close was New York's 16:00 for every price file: a London-listed ticker's 16:45 UK item (after London's
    16:30 close) counted for that day."""
    from finsent.backtest.eventstudy import Exchange, item_sessions

    scores = pd.DataFrame({"published": [datetime(2015, 1, 5, 16, 45, tzinfo=UTC)], "tickers": [["AAA"]]})
    london = Exchange.parse("Europe/London", "16:30")
    assert item_sessions(scores, prices())["date"].dt.strftime("%Y-%m-%d").tolist() == ["2015-01-05"]
    assert item_sessions(scores, prices(), london)["date"].dt.strftime("%Y-%m-%d").tolist() == ["2015-01-06"]
    with pytest.raises(ConfigError, match="not an IANA time zone"):
        Exchange.parse("Mars/Olympus", "16:00")
    with pytest.raises(ConfigError, match="HH:MM"):
        Exchange.parse("Europe/London", "half past four")


def test_intraday_bars_are_refused_by_name_not_as_conflicting_rows(tmp_path):
    from finsent.backtest.eventstudy import read_prices

    path = tmp_path / "hourly.csv"
    rows = [f"2015-01-0{d} {h:02d}:00,AAA,{100 + h}" for d in (5, 6) for h in range(10, 16)]
    path.write_text("date,ticker,close\n" + "\n".join(rows) + "\n")
    with pytest.raises(PriceFileError, match="intraday bars"):
        read_prices(path)
    daily = tmp_path / "daily.csv"  # one bar a day, stamped with its close time: daily
    daily.write_text("date,ticker,close\n2015-01-05 16:00,AAA,100\n2015-01-06 16:00,AAA,101\n")
    assert len(read_prices(daily)[0]) == 2
