"""The backtest report says what it left out: surges whose ticker has no usable prices, dropped price rows,
events without a market to adjust by. "Nothing to study" only when no ticker surge fired at all."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from finsent.backtest.report import write_report
from finsent.backtest.run import SCORE_SCHEMA

T0 = datetime(2015, 1, 5, 15, 0, tzinfo=UTC)  # 10:00 New York, Monday 5 January 2015
DAYS = pd.bdate_range("2015-01-05", periods=40)


def run_folder(path: Path, surges_on: str | None, n_surges: int = 4) -> Path:
    """A backtest folder by hand: 60 items on AAA and BBB, ``n_surges`` firing surges on ``surges_on``, a week apart."""
    path.mkdir()
    scores = [
        {
            "item_id": f"i{i}",
            "published": T0 + timedelta(days=i % 30, hours=i % 5),
            "source": "s",
            "tickers": ["AAA" if i % 2 else "BBB"],
            "topic": "x",
            "sentiment": "negative",
            "p_negative": 0.8,
            "p_neutral": 0.1,
            "p_positive": 0.1,
            "score": -0.5 + (i % 3) * 0.4,
        }
        for i in range(60)
    ]
    pq.write_table(
        pa.Table.from_pydict({k: [s[k] for s in scores] for k in SCORE_SCHEMA.names}, schema=SCORE_SCHEMA),
        path / "scores.parquet",
    )
    alerts = [
        {
            "key": f"ticker:{surges_on}",
            "state": "firing",
            "severity": "warning",
            "zscore": 4.0,
            "window_end": (T0 + timedelta(days=7 * k)).isoformat(),
        }
        for k in range(n_surges if surges_on else 0)
    ]
    (path / "alerts.jsonl").write_text("".join(json.dumps(a) + "\n" for a in alerts))
    run = {"model": "m", "items": 60, "inferred": 0, "cached": 60, "windows": 0, "firing": len(alerts), "settings": {}}
    (path / "run.json").write_text(json.dumps(run))
    return path


def price_file(path: Path, tickers: tuple[str, ...], extra: list[dict] | None = None) -> Path:
    rows = [
        {"date": d.strftime("%Y-%m-%d"), "ticker": t, "close": 100.0 + i + 3 * k}
        for k, t in enumerate(tickers)
        for i, d in enumerate(DAYS)
    ]
    pd.DataFrame(rows + (extra or [])).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    "case",
    ["ticker missing", "ticker all NaN", "ticker one row"],
)
def test_surges_on_a_ticker_without_usable_prices_are_listed_not_called_nothing_to_study(tmp_path, case):
    run = run_folder(tmp_path / "bt", "AAA")
    if case == "ticker missing":
        prices = price_file(tmp_path / "p.csv", ("BBB", "CCC", "DDD"))
    elif case == "ticker all NaN":
        nan = [{"date": d.strftime("%Y-%m-%d"), "ticker": "AAA", "close": float("nan")} for d in DAYS]
        prices = price_file(tmp_path / "p.csv", ("BBB", "CCC", "DDD"), nan)
    else:  # one bar, on the first surge's session: no return at any horizon
        prices = price_file(
            tmp_path / "p.csv", ("BBB", "CCC", "DDD"), [{"date": "2015-01-05", "ticker": "AAA", "close": 10}]
        )
    text = write_report(run, prices).read_text()
    assert "nothing to study" not in text
    assert "4 surges on 1 ticker had no usable prices: AAA (4: " in text
    numbers = json.loads((run / "eventstudy.json").read_text())
    assert numbers["events"] == 0 and numbers["ticker_surges_fired"] == 4
    assert numbers["left_out"]["surges_without_prices"] == 4
    assert numbers["left_out"]["surge_tickers_without_prices"]["AAA"]["surges"] == 4


def test_nothing_to_study_only_when_no_ticker_surge_fired(tmp_path):
    run = run_folder(tmp_path / "bt", None)
    text = write_report(run, price_file(tmp_path / "p.csv", ("AAA", "BBB", "CCC"))).read_text()
    assert "No ticker surges in this run: nothing to study." in text
    assert "Nothing: every price row, surge and item mention was used." in text


def test_dropped_price_rows_and_events_without_a_market_are_reported(tmp_path):
    run = run_folder(tmp_path / "bt", "AAA")
    bad = [
        {"date": "2015-01-06", "ticker": "AAA", "close": 0.0},  # a bad tick
        {"date": "2015-01-06", "ticker": "AAA", "close": 1.0},  # a second, different close for the 6th
    ]
    text = write_report(run, price_file(tmp_path / "p.csv", ("AAA",), bad)).read_text()
    numbers = json.loads((run / "eventstudy.json").read_text())
    rows = numbers["left_out"]["price_rows"]
    assert (rows["non_positive"], rows["conflicting"]) == (1, 2)
    assert "with a close &lt;= 0" in text
    # one ticker: no market to adjust by, for every event and horizon (it was an abnormal return of exactly 0)
    assert numbers["left_out"]["events_without_market"]["1"] == numbers["study"][0]["no_market"] == 4
    assert numbers["study"][0]["events"] == 0 and numbers["study"][0]["no_return"] == 0
    assert "market adjustment was impossible" in text


def test_a_run_without_items_says_so_instead_of_failing_on_its_dates(tmp_path):
    run = run_folder(tmp_path / "bt", None)
    pq.write_table(SCORE_SCHEMA.empty_table(), run / "scores.parquet")
    text = write_report(run, price_file(tmp_path / "p.csv", ("AAA", "BBB", "CCC"))).read_text()
    assert "No items in this run." in text and "nothing to study" in text
