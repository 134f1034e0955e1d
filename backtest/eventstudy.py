"""Event study: do negative surges (and daily sentiment) come before abnormal returns?

Pure functions over tables (pandas), so any timestamped text scored by the backtest and any OHLC CSV
work, not only StockNet.

No look-ahead, by construction:

* every item and alert is assigned to an **event session**: its trading day in the exchange's time
  zone if it was published (an alert: raised, ``known_at``) before the close, else the next trading day of
  the price file's **session calendar** (the union of the dates of all tickers);
* returns are measured **from that session's close** (the first bar whose price an investor could
  trade after the information) to the close ``h`` sessions later on that calendar; a ticker without
  a bar on either session has no return (never one spanning a gap in its prices);
* **abnormal** return = the ticker's return minus the equal-weighted mean return of the *other*
  tickers over the same sessions (market-adjusted with the cross-section, leave-one-out: a ticker
  must not be its own market), and only when at least ``MIN_PEERS`` others have a return then;
* the **baseline** for a surge is the same ticker's sessions without a surge within ±``window``
  sessions; means come with percentile-bootstrap confidence intervals.

Nothing is dropped silently: the price rows that cannot be used, the surges and items that found no
bar, and the events without a return or a market are counted (``clean_prices``, ``surge_events``,
``item_sessions``, ``study``) so that the report can say what it left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import time as dtime
from pathlib import Path

import numpy as np
import pandas as pd

from finsent.errors import ConfigError, PriceFileError

HORIZONS = (1, 3, 5, 10)
# Fewer other tickers with a return on a session than this, and that session's cross-sectional "market" is
# one or two stocks, not a market: its abnormal return is NaN (and counted) rather than a pair difference.
MIN_PEERS = 2
# An event more than this many calendar days before the next session of the price file is in a hole of the
# file (no ticker has bars then), not on a weekend or a holiday: mapping it past the hole would be look-ahead.
MAX_CLOSED_DAYS = 5

# Why a surge or an item found no usable bar (the report's words).
NO_PRICES = "no usable prices for the ticker"
OUTSIDE = "outside the price file's sessions"
NO_BAR = "no bar for the ticker on its event session"
NO_RETURN = "no later bar for the ticker (no return at any horizon)"


@dataclass(frozen=True)
class PriceColumns:
    date: str = "date"
    ticker: str = "ticker"
    close: str = "adj_close"  # split/dividend-adjusted close when the file has one

    @classmethod
    def parse(cls, pairs: Iterable[str]) -> PriceColumns:
        """``FIELD=COLUMN`` pairs (the CLI's ``--price-map``); ``ConfigError`` names a bad pair or field."""
        mapping: dict[str, str] = {}
        for pair in pairs:
            field, sep, column = pair.partition("=")
            if not sep or not field.strip() or not column.strip():
                raise ConfigError(f"--price-map takes FIELD=COLUMN (got {pair!r})")
            mapping[field.strip()] = column.strip()
        unknown = set(mapping) - {"date", "ticker", "close"}
        if unknown:
            raise ConfigError(f"--price-map fields must be date, ticker, close (got {sorted(unknown)})")
        return cls(**mapping)


def _timestamps(values: pd.Series) -> pd.Series:
    """Local times (no zone); unreadable → NaT. A time given with a zone offset is that zone's local time (an
    exchange's bar dated ``2015-01-05T00:00-05:00`` is the 5th, not the 5th at 05:00 UTC)."""
    try:
        parsed = pd.to_datetime(values, errors="coerce")
    except (ValueError, TypeError):  # mixed offsets (summer and winter time): the ISO date in front of each
        parsed = pd.to_datetime(values.astype("string").str.slice(0, 10), errors="coerce")
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        parsed = parsed.dt.tz_localize(None)
    return parsed.astype("datetime64[ns]")


def _dates(values: pd.Series) -> pd.Series:
    """Calendar dates (midnight, no zone) of ``_timestamps``."""
    return _timestamps(values).dt.normalize()


def clean_prices(raw: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """``raw`` (columns ticker, date, close, any types) → one row per (ticker, date) with a positive close, and
    the counts of what was dropped and why: ``unreadable`` (no ticker, date or finite close), ``non_positive``
    (a close <= 0 is a bad tick: kept, it makes a -100 % return), ``conflicting`` (rows of a (ticker, date) with
    two different closes: neither can be trusted, and keeping the first would hide the choice), ``repeated``
    (exact copies, kept once)."""
    ticker = raw["ticker"].where(raw["ticker"].notna()).astype("string").str.strip().str.upper()
    p = pd.DataFrame(
        {
            "ticker": ticker,
            "date": _dates(raw["date"]),
            "close": pd.to_numeric(raw["close"], errors="coerce").astype(float),
        }
    )
    unreadable = p["ticker"].isna() | (p["ticker"] == "") | p["date"].isna() | ~np.isfinite(p["close"])
    p = p[~unreadable.to_numpy(dtype=bool)]
    non_positive = (p["close"] <= 0).to_numpy()
    p = p[~non_positive]
    before = len(p)
    p = p.drop_duplicates(["ticker", "date", "close"])
    repeated = before - len(p)
    conflict = p.duplicated(["ticker", "date"], keep=False).to_numpy()
    p = p[~conflict]
    p = p.assign(ticker=p["ticker"].astype(str)).sort_values(["ticker", "date"]).reset_index(drop=True)
    dropped = {
        "rows_read": len(raw),
        "unreadable": int(unreadable.sum()),
        "non_positive": int(non_positive.sum()),
        "conflicting": int(conflict.sum()),
        "repeated": repeated,
    }
    return p, dropped


def read_prices(path: Path, cols: PriceColumns = PriceColumns()) -> tuple[pd.DataFrame, dict[str, int]]:
    """Daily bars (CSV or Parquet) → ``clean_prices``. ``PriceFileError`` (one line naming the file) when it is
    missing or cannot be read as a table, when columns are missing or when no row is usable (a wrong
    ``--price-map`` looks like that)."""
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except FileNotFoundError:
        raise PriceFileError(f"--prices {path}: no such file") from None
    except (OSError, ValueError) as err:  # unreadable, or not CSV/Parquet (pandas' and pyarrow's are ValueErrors)
        raise PriceFileError(f"--prices {path}: {' '.join(str(err).split())[:400]}") from None
    close = cols.close if cols.close in df.columns or cols.close != "adj_close" else "close"
    missing = [c for c in (cols.date, cols.ticker, close) if c not in df.columns]
    if missing:
        raise PriceFileError(f"--prices {path}: missing price columns {missing} (have {list(df.columns)})")
    stamps = _timestamps(df[cols.date])  # parsed once: for the intraday check, then cut to the day
    _refuse_intraday(path, df[cols.ticker], stamps)
    prices, dropped = clean_prices(pd.DataFrame({"ticker": df[cols.ticker], "date": stamps, "close": df[close]}))
    if prices.empty:
        raise PriceFileError(
            f"--prices {path}: no usable price rows ({dropped['rows_read']} read: {dropped['unreadable']} without a "
            f"readable ticker, date or close, {dropped['non_positive']} with a close <= 0, {dropped['conflicting']} "
            "conflicting)"
        )
    return prices, dropped


def _refuse_intraday(path: Path, tickers: pd.Series, stamps: pd.Series) -> None:
    """Bars at several times of one day (hourly, minute) are not daily closes: cut to the day they all "conflicted"
    and the file was refused as "no usable price rows (… N conflicting)", which hid what was wrong with it.
    ``stamps``: the date column as ``_timestamps`` reads it."""
    if stamps.isna().all():
        return
    per_day = pd.DataFrame({"ticker": tickers, "day": stamps.dt.normalize(), "at": stamps}).dropna()
    times = per_day.groupby(["ticker", "day"])["at"].nunique()
    if len(times) and (times > 1).mean() > 0.5:
        raise PriceFileError(
            f"--prices {path}: intraday bars (several times a day per ticker): the event study takes daily bars, "
            "one close per ticker and day (resample to the day's last close first)"
        )


def load_prices(path: Path, cols: PriceColumns = PriceColumns()) -> pd.DataFrame:
    """Daily bars → one row per (ticker, date) with ``close`` (``read_prices`` without the counts)."""
    return read_prices(path, cols)[0]


@dataclass(frozen=True)
class Exchange:
    """Where the prices trade: an item at or after ``close`` (local time in ``tz``) counts for the next session.
    New York's 16:00 by default; early-close days are not known (an item between an early close and 16:00 counts
    for that day: document your calendar's early closes or leave those days out)."""

    tz: str = "America/New_York"
    close: dtime = dtime(16, 0)

    @classmethod
    def parse(cls, tz: str, close: str) -> Exchange:
        """From ``--exchange-tz`` / ``--exchange-close`` (HH:MM); ``ConfigError`` for either that cannot work."""
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"--exchange-tz {tz!r} is not an IANA time zone (e.g. Europe/London)") from None
        try:
            at = dtime.fromisoformat(close)
        except ValueError:
            raise ConfigError(
                f"--exchange-close {close!r}: give the local closing time as HH:MM (e.g. 16:30)"
            ) from None
        return cls(tz, at)


NEW_YORK = Exchange()


def session_calendar(prices: pd.DataFrame) -> pd.DatetimeIndex:
    """The trading sessions: every date any ticker has a bar on (a ticker's own gaps are not holidays)."""
    return pd.DatetimeIndex(np.unique(prices["date"].to_numpy(dtype="datetime64[ns]")))


def forward_returns(prices: pd.DataFrame, horizons=HORIZONS, min_peers: int = MIN_PEERS) -> pd.DataFrame:
    """Per (ticker, date) of ``prices`` (one row each, as ``clean_prices`` gives): ``r{h}``, the return from this
    close to the close ``h`` calendar sessions on (NaN when the ticker has no bar then); ``ar{h}``, minus the
    mean ``r{h}`` of the other tickers that have one (NaN with fewer than ``min_peers``); ``peers{h}``, how many
    they were; ``session``, the date's index in the calendar."""
    calendar = session_calendar(prices)
    p = prices.copy()
    p["date"] = p["date"].astype("datetime64[ns]")
    wide = p.pivot(index="date", columns="ticker", values="close").reindex(calendar)
    rows = calendar.get_indexer(p["date"])
    cols = wide.columns.get_indexer(p["ticker"])
    for h in horizons:
        r = (wide.shift(-h) / wide - 1.0).to_numpy()  # a missing bar at either end → NaN: no return over a gap
        has = ~np.isnan(r)
        n = has.sum(axis=1, keepdims=True)
        total = np.nansum(r, axis=1, keepdims=True)
        peers = n - has  # the other tickers with a return over the same sessions
        market = np.divide(total - np.where(has, r, 0.0), peers, out=np.full_like(r, np.nan), where=peers > 0)
        ar = np.where(peers >= min_peers, r - market, np.nan)
        p[f"r{h}"] = r[rows, cols]
        p[f"ar{h}"] = ar[rows, cols]
        p[f"peers{h}"] = peers[rows, cols]
    p["session"] = rows
    return p


def session_of(
    times: pd.Series,
    tickers: pd.Series,
    prices: pd.DataFrame,
    tz: str = "America/New_York",
    close: dtime = dtime(16, 0),
) -> pd.DataFrame:
    """Per (time, ticker): ``date``, the session it counts for (its day before the close, else the next session
    of the calendar), and ``reason`` (None, or why it has no bar: ``NO_PRICES``, ``OUTSIDE``, ``NO_BAR``; its
    ``date`` is then NaT). An event is never moved to a later bar of its ticker: a gap in the ticker's prices
    leaves it out, counted, instead of timing it by a session weeks after it."""
    local = pd.to_datetime(times, utc=True).dt.tz_convert(tz)
    day = local.dt.tz_localize(None).dt.normalize()
    after_close = local.dt.time >= close
    day = day + pd.to_timedelta(after_close.astype(int), unit="D")  # earliest session it can count for
    want = day.to_numpy(dtype="datetime64[ns]")
    calendar = session_calendar(prices).to_numpy()
    reason = np.full(len(want), None, dtype=object)
    session = np.full(len(want), np.datetime64("NaT"), dtype="datetime64[ns]")
    known = tickers.isin(set(prices["ticker"])).to_numpy()
    reason[~known] = NO_PRICES
    if len(calendar):
        pos = np.searchsorted(calendar, want, side="left")  # first session on or after
        at = calendar[np.minimum(pos, len(calendar) - 1)]
        inside = (want >= calendar[0]) & (pos < len(calendar)) & (at - want <= np.timedelta64(MAX_CLOSED_DAYS, "D"))
        reason[known & ~inside] = OUTSIDE
        bars = pd.MultiIndex.from_arrays([prices["ticker"], prices["date"].astype("datetime64[ns]")])
        on_bar = pd.MultiIndex.from_arrays([tickers.to_numpy(), at]).isin(bars)
        reason[known & inside & ~on_bar] = NO_BAR
        ok = known & inside & on_bar
        session[ok] = at[ok]
    else:
        reason[:] = NO_PRICES
    return pd.DataFrame({"date": session, "reason": reason}, index=times.index)


def event_sessions(
    times: pd.Series,
    tickers: pd.Series,
    prices: pd.DataFrame,
    tz: str = "America/New_York",
    close: dtime = dtime(16, 0),
) -> pd.Series:
    """The trading day each (time, ticker) counts for (``session_of``); NaT where the ticker has no bar then."""
    return session_of(times, tickers, prices, tz, close)["date"]


def item_sessions(scores: pd.DataFrame, prices: pd.DataFrame, exchange: Exchange = NEW_YORK) -> pd.DataFrame:
    """One row per (item, ticker it names) with its event session ``date`` and ``reason`` (``session_of``)."""
    s = scores.explode("tickers").dropna(subset=["tickers"]).rename(columns={"tickers": "ticker"})
    s["ticker"] = s["ticker"].astype(str).str.upper()
    s = s.reset_index(drop=True)
    return s.join(session_of(s["published"], s["ticker"], prices, exchange.tz, exchange.close))


def daily_sentiment(scores: pd.DataFrame, prices: pd.DataFrame, sessions: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (ticker, event session): item count, mean score, negative share. ``scores`` has one row per item
    with a list column ``tickers`` (as the backtest writes it); ``sessions``: its ``item_sessions`` if known.
    Mentions without a bar are left out here (``item_sessions`` counts them)."""
    s = item_sessions(scores, prices) if sessions is None else sessions
    s = s[s["reason"].isna()]
    return (
        s.groupby(["ticker", "date"])
        .agg(
            items=("item_id", "size"),
            mean_score=("score", "mean"),
            negative_share=("sentiment", lambda x: float((x == "negative").mean())),
        )
        .reset_index()
    )


@dataclass
class SurgeEvents:
    """Firing ticker surges as events. ``fired``: the surges; ``events``: one per (ticker, session) (the
    strongest); ``merged``: surges folded into an event of the same ticker and session; ``left_out``: the
    surges with no usable bar (ticker, window_end, reason)."""

    fired: int
    events: pd.DataFrame
    merged: int
    left_out: pd.DataFrame


def surge_events(
    alerts: pd.DataFrame, prices: pd.DataFrame, returns: pd.DataFrame | None = None, exchange: Exchange = NEW_YORK
) -> SurgeEvents:
    """Firing ticker surges → one event per (ticker, session), timed by when the live stream would have raised it
    (``known_at``, ``report.load_alerts``; the window end where that is not given). With ``returns``, a surge whose
    bar has no later bar at any horizon is left out too (``NO_RETURN``)."""
    columns = ["ticker", "date", "zscore", "severity"]
    if alerts.empty:
        empty = pd.DataFrame(columns=columns)
        return SurgeEvents(0, empty, 0, pd.DataFrame(columns=["ticker", "window_end", "reason"]))
    a = alerts[(alerts["state"] == "firing") & alerts["key"].str.startswith("ticker:")].reset_index(drop=True)
    a["ticker"] = a["key"].str.split(":", n=1).str[1].astype(str).str.upper()
    known = a["known_at"] if "known_at" in a else a["window_end"]
    a = a.join(session_of(known, a["ticker"], prices, exchange.tz, exchange.close))
    if returns is not None and len(a):
        rcols = [c for c in returns.columns if c.startswith("r") and c[1:].isdigit()]
        any_return = returns[rcols].notna().any(axis=1).to_numpy()
        with_return = set(zip(returns["ticker"][any_return], returns["date"][any_return]))
        none = a["reason"].isna() & ~pd.Series(
            [(t, d) in with_return for t, d in zip(a["ticker"], a["date"])], index=a.index, dtype=bool
        )
        a.loc[none, "reason"] = NO_RETURN
    left = a[a["reason"].notna()][["ticker", "window_end", "reason"]].reset_index(drop=True)
    kept = a[a["reason"].isna()].sort_values("zscore", ascending=False)
    events = kept.drop_duplicates(["ticker", "date"])[columns].reset_index(drop=True)
    return SurgeEvents(len(a), events, len(kept) - len(events), left)


def alert_events(alerts: pd.DataFrame, prices: pd.DataFrame) -> pd.DataFrame:
    """``surge_events(...).events``: the events only."""
    return surge_events(alerts, prices).events


def bootstrap_ci(values: np.ndarray, n: int = 2000, level: float = 0.95, seed: int = 7) -> tuple[float, float]:
    if len(values) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(n, len(values)), replace=True).mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def study(events: pd.DataFrame, returns: pd.DataFrame, horizons=HORIZONS, window: int = 60) -> pd.DataFrame:
    """Mean abnormal return after events vs the same tickers' other sessions (±``window`` calendar sessions).
    Per horizon, ``events`` counts the events with an abnormal return; ``no_return`` those whose ticker has no
    bar ``h`` sessions on; ``no_market`` those with a return but too few other tickers to adjust it by."""
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
                "no_return": int(ev[f"r{h}"].isna().sum()),
                "no_market": int((ev[f"r{h}"].notna() & ev[col].isna()).sum()),
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
    "MAX_CLOSED_DAYS",
    "MIN_PEERS",
    "NO_BAR",
    "NO_PRICES",
    "NO_RETURN",
    "OUTSIDE",
    "PriceColumns",
    "SurgeEvents",
    "alert_events",
    "alert_vs_large_moves",
    "bootstrap_ci",
    "clean_prices",
    "daily_sentiment",
    "event_sessions",
    "forward_returns",
    "item_sessions",
    "load_prices",
    "read_prices",
    "sentiment_return_correlation",
    "session_calendar",
    "session_of",
    "study",
    "surge_events",
]
