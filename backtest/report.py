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


def load_alerts(path: Path) -> pd.DataFrame:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    df = pd.DataFrame(
        rows,
        columns=["key", "state", "severity", "zscore", "window_end", "negative_share", "count"] if not rows else None,
    )
    if len(df):
        df["window_end"] = pd.to_datetime(df["window_end"], utc=True)
    return df


def analyse(run_dir: Path, prices_path: Path, cols: es.PriceColumns = es.PriceColumns()) -> dict:
    scores = pd.read_parquet(run_dir / "scores.parquet")
    alerts = load_alerts(run_dir / "alerts.jsonl")
    prices = es.load_prices(prices_path, cols)
    returns = es.forward_returns(prices)
    daily = es.daily_sentiment(scores, prices)
    events = (
        es.alert_events(alerts, prices)
        if len(alerts)
        else pd.DataFrame(columns=["ticker", "date", "zscore", "severity"])
    )
    table = es.study(events, returns) if len(events) else pd.DataFrame()
    return {
        "scores": scores,
        "alerts": alerts,
        "prices": prices,
        "returns": returns,
        "daily": daily,
        "events": events,
        "study": table,
        "correlation": es.sentiment_return_correlation(daily, returns),
        "confusion": es.alert_vs_large_moves(events, returns) if len(events) else {},
    }


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


def write_report(run_dir: Path, prices_path: Path, cols: es.PriceColumns = es.PriceColumns()) -> Path:
    a = analyse(run_dir, prices_path, cols)
    run = json.loads((run_dir / "run.json").read_text())
    table, corr, conf = a["study"], a["correlation"], a["confusion"]
    numbers = {
        "study": table.to_dict(orient="records"),
        "correlation": corr,
        "confusion": conf,
        "events": len(a["events"]),
        "ticker_sessions_with_items": len(a["daily"]),
    }
    (run_dir / "eventstudy.json").write_text(json.dumps(numbers, indent=2, default=str))
    sha = hashlib.sha256(prices_path.read_bytes()).hexdigest()
    esc = html.escape
    parts = [
        f"""<!doctype html><html><head><meta charset="utf-8"><title>finsent backtest</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}table{{border-collapse:collapse}}
table{{font-size:12px;display:block;overflow-x:auto}}td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}th{{background:#f4f4f4}}img{{max-width:100%}}
.note{{background:#fff8e1;padding:8px 12px;border-left:4px solid #f1c40f}}</style></head><body>
<h1>finsent backtest</h1>
<p>Model <b>{esc(run["model"])}</b>; {run["items"]:,} items ({run["inferred"]:,} scored, {run["cached"]:,} from cache);
{run["windows"]:,} windows closed; {run["firing"]} surges fired (all keys). Items published
{a["scores"]["published"].min():%Y-%m-%d %H:%M} .. {a["scores"]["published"].max():%Y-%m-%d %H:%M} UTC.</p>
<p class="note">How to read this: events are negative-sentiment surges of a ticker, timed by the end of the window that
raised them and mapped to the first session whose close came after (no look-ahead). Returns run from that close;
abnormal = minus the equal-weighted cross-section of all tickers. Baseline = the same tickers' other sessions within
±60 sessions. Confidence intervals are percentile bootstrap (2,000 resamples, 95 %). Few events make wide intervals:
read the CIs, not the point estimates.</p>"""
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
    else:
        parts.append("<p>No ticker surges in this run: nothing to study.</p>")
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
