"""Event study: do negative surges (and daily sentiment) come before abnormal returns?

Pure functions over tables (pandas), so any timestamped text scored by the backtest and any OHLC CSV
work, not only StockNet.

No look-ahead, by construction:

* every item and alert is assigned to an **event session**: its trading day in the exchange's time
  zone if it was published before the close, else the ticker's next trading day;
* returns are measured **from that session's close** (the first bar whose price an investor could
  trade after the information) to the close ``h`` sessions later;
* **abnormal** return = the ticker's return minus the equal-weighted mean return of all tickers over
  the same sessions (market-adjusted with the cross-section);
* the **baseline** for a surge is the same ticker's sessions without a surge within ±``window``
  sessions; means come with percentile-bootstrap confidence intervals.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import time as dtime
from pathlib import Path

import numpy as np
import pandas as pd

HORIZONS = (1, 3, 5, 10)


@dataclass(frozen=True)
class PriceColumns:
    date: str = "date"
    ticker: str = "ticker"
    close: str = "adj_close"  # split/dividend-adjusted close when the file has one

    @classmethod
    def parse(cls, pairs: Iterable[str]) -> PriceColumns:
        """``FIELD=COLUMN`` pairs (the CLI's ``--price-map``); ValueError names a bad field."""
        mapping = dict(pair.split("=", 1) for pair in pairs)
        unknown = set(mapping) - {"date", "ticker", "close"}
        if unknown:
            raise ValueError(f"--price-map fields must be date, ticker, close (got {sorted(unknown)})")
        return cls(**mapping)


def load_prices(path: Path, cols: PriceColumns = PriceColumns()) -> pd.DataFrame:
    """Daily bars → one row per (ticker, date) with ``close``; CSV or Parquet."""
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    close = cols.close if cols.close in df.columns or cols.close != "adj_close" else "close"
    missing = [c for c in (cols.date, cols.ticker, close) if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing price columns {missing} (have {list(df.columns)})")
    out = pd.DataFrame(
        {
            "ticker": df[cols.ticker].astype(str).str.upper(),
            "date": pd.to_datetime(df[cols.date]).dt.normalize(),
            "close": pd.to_numeric(df[close], errors="coerce"),
        }
    )
    return out.dropna().drop_duplicates(["ticker", "date"]).sort_values(["ticker", "date"]).reset_index(drop=True)


def forward_returns(prices: pd.DataFrame, horizons=HORIZONS) -> pd.DataFrame:
    """Per (ticker, date): raw and market-adjusted returns from this close to the close h sessions on."""
    p = prices.copy()
    g = p.groupby("ticker")["close"]
    for h in horizons:
        p[f"r{h}"] = g.shift(-h) / p["close"] - 1.0
    for h in horizons:
        market = p.groupby("date")[f"r{h}"].transform("mean")
        p[f"ar{h}"] = p[f"r{h}"] - market
    p["session"] = p.groupby("ticker").cumcount()
    return p


def event_sessions(
    times: pd.Series,
    tickers: pd.Series,
    prices: pd.DataFrame,
    tz: str = "America/New_York",
    close: dtime = dtime(16, 0),
) -> pd.Series:
    """The trading day each (time, ticker) counts for: same day before the close, else the next session."""
    local = pd.to_datetime(times, utc=True).dt.tz_convert(tz)
    day = local.dt.tz_localize(None).dt.normalize()
    after_close = local.dt.time >= close
    day = day + pd.to_timedelta(after_close.astype(int), unit="D")  # earliest session it can count for
    out = pd.Series(pd.NaT, index=times.index, dtype="datetime64[ns]")
    for ticker, idx in tickers.groupby(tickers).groups.items():
        days = prices.loc[prices["ticker"] == ticker, "date"].to_numpy(dtype="datetime64[ns]")
        if len(days) == 0:
            continue
        want = day.loc[idx].to_numpy(dtype="datetime64[ns]")
        pos = np.searchsorted(days, want, side="left")  # first trading day on or after
        ok = pos < len(days)
        res = np.full(len(want), np.datetime64("NaT"), dtype="datetime64[ns]")
        res[ok] = days[pos[ok]]
        out.loc[idx] = res
    return out


def daily_sentiment(scores: pd.DataFrame, prices: pd.DataFrame) -> pd.DataFrame:
    """Per (ticker, event session): item count, mean score, negative share. ``scores`` has one row per item
    with a list column ``tickers`` (as the backtest writes it)."""
    s = scores.explode("tickers").dropna(subset=["tickers"]).rename(columns={"tickers": "ticker"})
    s["ticker"] = s["ticker"].str.upper()
    s = s[s["ticker"].isin(set(prices["ticker"]))]
    s["date"] = event_sessions(s["published"], s["ticker"], prices)
    s = s.dropna(subset=["date"])
    return (
        s.groupby(["ticker", "date"])
        .agg(
            items=("item_id", "size"),
            mean_score=("score", "mean"),
            negative_share=("sentiment", lambda x: float((x == "negative").mean())),
        )
        .reset_index()
    )


def alert_events(alerts: pd.DataFrame, prices: pd.DataFrame) -> pd.DataFrame:
    """Firing ticker surges → one event per (ticker, session), timed by the window end (when it was known)."""
    a = alerts[(alerts["state"] == "firing") & alerts["key"].str.startswith("ticker:")].copy()
    if a.empty:
        return pd.DataFrame(columns=["ticker", "date", "zscore", "severity"])
    a["ticker"] = a["key"].str.split(":", n=1).str[1]
    a["date"] = event_sessions(a["window_end"], a["ticker"], prices)
    a = a.dropna(subset=["date"]).sort_values("zscore", ascending=False)
    return a.drop_duplicates(["ticker", "date"])[["ticker", "date", "zscore", "severity"]].reset_index(drop=True)


def bootstrap_ci(values: np.ndarray, n: int = 2000, level: float = 0.95, seed: int = 7) -> tuple[float, float]:
    if len(values) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(n, len(values)), replace=True).mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def study(events: pd.DataFrame, returns: pd.DataFrame, horizons=HORIZONS, window: int = 60) -> pd.DataFrame:
    """Mean abnormal return after events vs the same tickers' other sessions (±``window`` sessions)."""
    ev = events.merge(returns, on=["ticker", "date"], how="inner")
    baseline_rows = []  # the same for every horizon: each ticker's non-event sessions near its events
    for ticker, group in ev.groupby("ticker"):
        r = returns[returns["ticker"] == ticker]
        near = np.zeros(len(r), dtype=bool)
        for s in group["session"]:
            near |= (r["session"] >= s - window).to_numpy() & (r["session"] <= s + window).to_numpy()
        is_event = r["date"].isin(set(group["date"])).to_numpy()
        baseline_rows.append(r[near & ~is_event])
    baseline = pd.concat(baseline_rows) if baseline_rows else returns.iloc[0:0]
    rows = []
    for h in horizons:
        col = f"ar{h}"
        e = ev[col].dropna().to_numpy()
        b = baseline[col].dropna().to_numpy()
        lo, hi = bootstrap_ci(e)
        blo, bhi = bootstrap_ci(b)
        rows.append(
            {
                "horizon": h,
                "events": len(e),
                "mean_ar": float(e.mean()) if len(e) else float("nan"),
                "ci_low": lo,
                "ci_high": hi,
                "hit_rate": float((e < 0).mean()) if len(e) else float("nan"),
                "baseline_n": len(b),
                "baseline_mean_ar": float(b.mean()) if len(b) else float("nan"),
                "baseline_ci_low": blo,
                "baseline_ci_high": bhi,
                "baseline_hit_rate": float((b < 0).mean()) if len(b) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def sentiment_return_correlation(daily: pd.DataFrame, returns: pd.DataFrame, min_items: int = 3) -> dict:
    """Correlation of a session's mean sentiment with the next session's abnormal return (ar1 from that close)."""
    d = daily[daily["items"] >= min_items].merge(returns[["ticker", "date", "ar1"]], on=["ticker", "date"]).dropna()
    if len(d) < 3:
        return {"n": len(d), "pearson": float("nan"), "spearman": float("nan")}
    return {
        "n": len(d),
        "pearson": float(d["mean_score"].corr(d["ar1"])),
        "spearman": float(d["mean_score"].corr(d["ar1"], method="spearman")),
    }


def alert_vs_large_moves(events: pd.DataFrame, returns: pd.DataFrame, sigmas: float = 2.0) -> dict:
    """2×2 counts over (ticker, session): surge or not × next-session |abnormal return| above ``sigmas``·σ."""
    r = returns.dropna(subset=["ar1"]).copy()
    r["large"] = r["ar1"].abs() > sigmas * r.groupby("ticker")["ar1"].transform("std")
    keys = set(zip(events["ticker"], events["date"]))
    r["alert"] = [(t, d) in keys for t, d in zip(r["ticker"], r["date"])]
    r = r[r["ticker"].isin(set(events["ticker"]))] if len(events) else r
    return {
        f"alert={a},large={m}": int(((r["alert"] == a) & (r["large"] == m)).sum())
        for a in (True, False)
        for m in (True, False)
    }


__all__ = [
    "HORIZONS",
    "PriceColumns",
    "alert_events",
    "alert_vs_large_moves",
    "bootstrap_ci",
    "daily_sentiment",
    "event_sessions",
    "forward_returns",
    "load_prices",
    "sentiment_return_correlation",
    "study",
]
