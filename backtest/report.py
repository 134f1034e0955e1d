"""The backtest's self-contained HTML report: plots embedded as PNG (matplotlib), no CDN, opens offline.

Reads a backtest folder (``scores.parquet``, ``alerts.jsonl``, ``run.json``) and a price file, runs the
event study and writes ``report.html`` plus ``eventstudy.json`` (the numbers, for a notebook).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from finsent.backtest import eventstudy as es


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def load_alerts(path: Path, changelog: Path | None = None, watermark_delay_s: float = 0.0) -> pd.DataFrame:
    """The final alerts, each with ``known_at``: when the live stream would have raised it, which is what the event
    study times it by. A surge first raised early (``trigger="early"`` in the changelog, while its window was
    open) was known by its window's end; one raised when its window closed only once the watermark passed that end,
    ``windows.watermark_delay_s`` later (an hour in the StockNet config: a surge of a window ending at 15:00 was
    known after New York's close, and was studied from that day's close: a look-ahead)."""
    rows = _jsonl(path)
    df = pd.DataFrame(
        rows,
        columns=["key", "state", "severity", "zscore", "window_end", "negative_share", "count"] if not rows else None,
    )
    if len(df):
        df["window_end"] = pd.to_datetime(df["window_end"], utc=True)
        early = {
            r.get("alert_id")
            for r in (_jsonl(changelog) if changelog else rows)
            if r.get("state") == "firing" and r.get("trigger") == "early"
        }
        late_by = pd.to_timedelta(
            [0.0 if a in early else watermark_delay_s for a in df.get("alert_id", [None] * len(df))], unit="s"
        )
        df["known_at"] = df["window_end"] + late_by
    return df


def analyse(
    run_dir: Path,
    prices_path: Path,
    cols: es.PriceColumns = es.PriceColumns(),
    prices: tuple[pd.DataFrame, dict[str, int]] | None = None,
    exchange: es.Exchange = es.NEW_YORK,
) -> dict:
    """The event study's tables and what each step left out. ``prices``: ``es.read_prices``'s result when the
    caller loaded (and so checked) the file already."""
    scores = pd.read_parquet(run_dir / "scores.parquet")
    windows = json.loads((run_dir / "run.json").read_text()).get("settings", {}).get("windows", {})
    delay = windows.get("watermark_delay_s", 0)  # a run.json without it (hand-made): timed by the window end
    alerts = load_alerts(run_dir / "alerts.jsonl", run_dir / "alerts-changelog.jsonl", delay)
    bars, dropped = es.read_prices(prices_path, cols) if prices is None else prices
    returns = es.forward_returns(bars)
    mentions = es.item_sessions(scores, bars, exchange)
    daily = es.daily_sentiment(scores, bars, mentions)
    surges = es.surge_events(alerts, bars, returns, exchange)
    events = surges.events
    table = es.study(events, returns) if len(events) else pd.DataFrame()
    return {
        "scores": scores,
        "alerts": alerts,
        "prices": bars,
        "price_rows_dropped": dropped,
        "returns": returns,
        "daily": daily,
        "mentions": mentions,
        "surges": surges,
        "events": events,
        "study": table,
        "correlation": es.sentiment_return_correlation(daily, returns),
        "confusion": es.alert_vs_large_moves(events, returns) if len(events) else {},
    }


def left_out(a: dict) -> dict:
    """Everything the study could not use, counted (eventstudy.json's ``left_out``; the report lists it)."""
    surges: es.SurgeEvents = a["surges"]
    lost = surges.left_out
    by_ticker = {
        str(t): {"surges": len(g), "reasons": {str(r): int(n) for r, n in g["reason"].value_counts().items()}}
        for t, g in lost.groupby("ticker")
    }
    mentions = a["mentions"]
    table = a["study"]
    return {
        "price_rows": a["price_rows_dropped"],
        "surges_without_prices": len(lost),
        "surge_tickers_without_prices": by_ticker,
        "surges_without_prices_list": [
            {"ticker": t, "window_end": str(w), "reason": r}
            for t, w, r in zip(lost["ticker"], lost["window_end"], lost["reason"])
        ],
        "surges_folded_into_one_event": surges.merged,
        "events_without_return": {int(r["horizon"]): int(r["no_return"]) for r in table.to_dict("records")},
        "events_without_market": {int(r["horizon"]): int(r["no_market"]) for r in table.to_dict("records")},
        "min_other_tickers_for_market": es.MIN_PEERS,
        "item_mentions": len(mentions),
        "item_mentions_without_bar": {str(r): int(n) for r, n in mentions["reason"].value_counts().items()},
    }


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _left_out_html(lo: dict) -> list[str]:
    """The report's "What this report left out": one line per kind, each with its count."""
    esc = html.escape
    lines = []
    rows = lo["price_rows"]
    if rows["unreadable"] or rows["non_positive"] or rows["conflicting"]:
        lines.append(
            f"Price rows: {rows['unreadable'] + rows['non_positive'] + rows['conflicting']:,} of "
            f"{rows['rows_read']:,} dropped: {rows['unreadable']:,} without a readable ticker, date or close, "
            f"{rows['non_positive']:,} with a close &lt;= 0, {rows['conflicting']:,} of a (ticker, date) with "
            f"two different closes (neither used); {rows['repeated']:,} exact copies kept once."
        )
    if lo["surges_without_prices"]:
        tickers = lo["surge_tickers_without_prices"]
        shown = "; ".join(
            f"{esc(t)} ({v['surges']}: {esc(', '.join(v['reasons']))})" for t, v in list(tickers.items())[:30]
        )
        more = f"; … and {len(tickers) - 30} more tickers (all in eventstudy.json)" if len(tickers) > 30 else ""
        lines.append(
            f"{_plural(lo['surges_without_prices'], 'surge')} on {_plural(len(tickers), 'ticker')} had no usable "
            f"prices: {shown}{more}."
        )
    if lo["surges_folded_into_one_event"]:
        lines.append(
            f"{_plural(lo['surges_folded_into_one_event'], 'surge')} fell on a ticker and session that had a "
            "stronger surge already: counted as one event."
        )
    for key, why in (
        ("events_without_return", "the ticker has no bar that many sessions later"),
        (
            "events_without_market",
            f"fewer than {lo['min_other_tickers_for_market']} other tickers had a return over those sessions, "
            "so market adjustment was impossible",
        ),
    ):
        per = {h: n for h, n in lo[key].items() if n}
        if per:
            lines.append(
                "Events without an abnormal return, by horizon: "
                + ", ".join(f"{h} session{'s' if h > 1 else ''}: {n}" for h, n in per.items())
                + f" ({why})."
            )
    if lo["item_mentions_without_bar"]:
        n = sum(lo["item_mentions_without_bar"].values())
        why = ", ".join(f"{v:,} {esc(k)}" for k, v in lo["item_mentions_without_bar"].items())
        lines.append(
            f"Item mentions of a ticker: {n:,} of {lo['item_mentions']:,} left out of the daily sentiment ({why})."
        )
    if not lines:
        return ["<p>Nothing: every price row, surge and item mention was used.</p>"]
    return ["<ul>", *(f"<li>{line}</li>" for line in lines), "</ul>"]


def _ticker_plots(a: dict, n: int = 4) -> list[tuple[str, str]]:
    daily, prices, events = a["daily"], a["prices"], a["events"]
    top = daily.groupby("ticker")["items"].sum().sort_values(ascending=False).head(n).index
    out = []
    for t in top:
        d = daily[daily["ticker"] == t].set_index("date")
        p = prices[prices["ticker"] == t].set_index("date")
        p = p[(p.index >= d.index.min() - pd.Timedelta(days=30)) & (p.index <= d.index.max() + pd.Timedelta(days=30))]
        fig, ax = plt.subplots(figsize=(10, 3.2))
        ax.bar(
            d.index,
            d["mean_score"],
            width=1.0,
            color=["#c0392b" if v < 0 else "#27ae60" for v in d["mean_score"]],
            alpha=0.6,
        )
        ax.set_ylabel("daily mean sentiment")
        ax.set_ylim(-1, 1)
        ax2 = ax.twinx()
        ax2.plot(p.index, p["close"], color="#2c3e50", lw=1)
        ax2.set_ylabel("adjusted close")
        ev = events[events["ticker"] == t]
        if len(ev):
            marks = p.reindex(pd.to_datetime(ev["date"]))["close"]
            ax2.scatter(marks.index, marks.values, marker="v", color="#e74c3c", s=40, zorder=5, label="negative surge")
            ax2.legend(loc="upper left")
        ax.set_title(f"{t}: sentiment, price and surges")
        out.append((t, _png(fig)))
    return out


def _study_plot(table: pd.DataFrame) -> str | None:
    if table.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    h = table["horizon"]
    ax.errorbar(
        h - 0.08,
        table["mean_ar"] * 100,
        yerr=[(table["mean_ar"] - table["ci_low"]) * 100, (table["ci_high"] - table["mean_ar"]) * 100],
        fmt="o-",
        color="#c0392b",
        capsize=4,
        label="after a negative surge",
    )
    ax.errorbar(
        h + 0.08,
        table["baseline_mean_ar"] * 100,
        yerr=[
            (table["baseline_mean_ar"] - table["baseline_ci_low"]) * 100,
            (table["baseline_ci_high"] - table["baseline_mean_ar"]) * 100,
        ],
        fmt="s--",
        color="#7f8c8d",
        capsize=4,
        label="same tickers, other sessions",
    )
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("horizon (sessions after the event session's close)")
    ax.set_ylabel("mean abnormal return (%)")
    ax.set_title("Event study: market-adjusted returns, 95 % bootstrap CIs")
    ax.legend()
    return _png(fig)


def _scatter(a: dict) -> str | None:
    d = (
        a["daily"][a["daily"]["items"] >= 3]
        .merge(a["returns"][["ticker", "date", "ar1"]], on=["ticker", "date"])
        .dropna()
    )
    if d.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter(d["mean_score"], d["ar1"] * 100, s=4, alpha=0.3)
    ax.set_xlabel("session mean sentiment (≥3 items)")
    ax.set_ylabel("next-session abnormal return (%)")
    ax.set_ylim(-10, 10)
    ax.set_title("Sentiment vs next-session abnormal return")
    return _png(fig)


def write_report(
    run_dir: Path,
    prices_path: Path,
    cols: es.PriceColumns = es.PriceColumns(),
    prices: tuple[pd.DataFrame, dict[str, int]] | None = None,
    exchange: es.Exchange = es.NEW_YORK,
) -> Path:
    """``prices``: ``es.read_prices(prices_path, cols)`` when the caller checked the file before the backtest."""
    a = analyse(run_dir, prices_path, cols, prices, exchange)
    run = json.loads((run_dir / "run.json").read_text())
    table, corr, conf = a["study"], a["correlation"], a["confusion"]
    lo = left_out(a)
    surges: es.SurgeEvents = a["surges"]
    numbers = {
        "study": table.to_dict(orient="records"),
        "correlation": corr,
        "confusion": conf,
        "events": len(a["events"]),
        "ticker_surges_fired": surges.fired,
        "ticker_sessions_with_items": len(a["daily"]),
        "left_out": lo,
        "exchange": {"tz": exchange.tz, "close": exchange.close.isoformat("minutes")},
    }
    (run_dir / "eventstudy.json").write_text(json.dumps(numbers, indent=2, default=str))
    sha = hashlib.sha256(prices_path.read_bytes()).hexdigest()
    esc = html.escape
    published = a["scores"]["published"]
    span = (
        f"Items published {published.min():%Y-%m-%d %H:%M} .. {published.max():%Y-%m-%d %H:%M} UTC."
        if len(published)
        else "No items in this run."
    )
    parts = [
        f"""<!doctype html><html><head><meta charset="utf-8"><title>finsent backtest</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}table{{border-collapse:collapse}}
table{{font-size:12px;display:block;overflow-x:auto}}td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}th{{background:#f4f4f4}}img{{max-width:100%}}
.note{{background:#fff8e1;padding:8px 12px;border-left:4px solid #f1c40f}}</style></head><body>
<h1>finsent backtest</h1>
<p>Model <b>{esc(run["model"])}</b>; {run["items"]:,} items ({run["inferred"]:,} scored, {run["cached"]:,} from cache);
{run["windows"]:,} windows closed; {run["firing"]} surges fired (all keys), {surges.fired} of them on tickers. {span}</p>
<p class="note">How to read this: events are negative-sentiment surges of a ticker, timed by when the live stream would have
raised them (the end of their window when first raised early; else that end plus the watermark delay, when the
window closed) and mapped to the first session whose close ({esc(exchange.close.isoformat("minutes"))} {esc(exchange.tz)})
came after (no look-ahead); a surge whose ticker has no bar
on that session is left out, not moved to a later bar. Sessions are the dates any ticker in the price file has a bar
on. Returns run from the event session's close to the close h sessions later (none when the ticker has no bar then);
abnormal = minus the equal-weighted mean of the other tickers' returns over the same sessions (none with fewer than
{es.MIN_PEERS} others). Baseline = the same tickers' other sessions within ±60 sessions. Confidence intervals are
percentile bootstrap (2,000 resamples, 95 %). Few events make wide intervals: read the CIs, not the point
estimates. "What this report left out" below counts everything that did not make it into these numbers.</p>"""
    ]
    parts.append(f"<h2>Event study ({len(a['events'])} surge events)</h2>")
    if not table.empty:
        img = _study_plot(table)
        parts.append(f'<img alt="event study" src="data:image/png;base64,{img}">')
        show = table.copy()
        for c in ("mean_ar", "ci_low", "ci_high", "baseline_mean_ar", "baseline_ci_low", "baseline_ci_high"):
            show[c] = (show[c] * 100).map("{:+.2f} %".format)
        for c in ("hit_rate", "baseline_hit_rate"):
            show[c] = show[c].map("{:.0%}".format)
        parts.append(show.to_html(index=False, escape=True))
    elif surges.fired == 0:
        parts.append("<p>No ticker surges in this run: nothing to study.</p>")
    else:
        parts.append(
            f"<p>None of the {_plural(surges.fired, 'ticker surge')} could be studied: "
            "see What this report left out below.</p>"
        )
    parts.append("<h2>What this report left out</h2>")
    parts.extend(_left_out_html(lo))
    parts.append("<h2>Sentiment vs next-session return</h2>")
    parts.append(
        f"<p>Sessions with ≥3 items: n = {corr['n']:,}; Pearson r = {corr['pearson']:+.3f}, "
        f"Spearman ρ = {corr['spearman']:+.3f}.</p>"
    )
    if (img := _scatter(a)) is not None:
        parts.append(f'<img alt="sentiment vs return" src="data:image/png;base64,{img}">')
    if conf:
        parts.append(
            "<h2>Surge sessions vs large moves (|next-session abnormal return| &gt; 2σ of the ticker)</h2><table>"
            "<tr><th></th><th>large move</th><th>no large move</th></tr>"
            f"<tr><th>surge</th><td>{conf['alert=True,large=True']}</td><td>{conf['alert=True,large=False']}</td></tr>"
            f"<tr><th>no surge</th><td>{conf['alert=False,large=True']}</td><td>{conf['alert=False,large=False']}</td></tr></table>"
        )
    parts.append("<h2>Tickers with the most items</h2>")
    for t, img in _ticker_plots(a):
        parts.append(f'<img alt="{esc(t)}" src="data:image/png;base64,{img}">')
    parts.append(f"""<h2>Settings and provenance</h2><pre>{esc(json.dumps(run["settings"], indent=2))}</pre>
<p>Prices: {esc(str(prices_path))} (sha256 {sha[:16]}…), {a["prices"]["ticker"].nunique()} tickers,
{a["prices"]["date"].min():%Y-%m-%d} .. {a["prices"]["date"].max():%Y-%m-%d}. Run folder: {esc(str(run_dir))}.</p></body></html>""")
    out = run_dir / "report.html"
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


__all__ = ["analyse", "write_report"]
