"""Every Grafana panel's PromQL against a real Prometheus (Grafana itself cannot be installed here).

Used by the demo test on its live stack: each panel's query, with the dashboard variables resolved the way
Grafana resolves them, must return at least one series.
"""

from __future__ import annotations

import re

import httpx

from finsent.alerts.grafana.build import dashboards


def panel_queries() -> list[tuple[str, str, str]]:
    return [(d.uid, p["title"], t["expr"]) for d in dashboards() for p in d.to_json()["panels"] for t in p["targets"]]


def check_panels(prometheus: str) -> dict[str, int]:
    """Resolve the dashboard variables the way Grafana does, run every panel query, return series per query."""

    def label_values(label: str, match: str) -> list[str]:
        r = httpx.get(f"{prometheus}/api/v1/label/{label}/values", params={"match[]": match}, timeout=10).json()
        return r["data"]

    widths = label_values("width", "finsent_window_count")
    tickers = label_values("name", 'finsent_window_count{dim="ticker"}')
    assert widths and tickers, (widths, tickers)
    values = {"width": "300" if "300" in widths else widths[0], "ticker": tickers[0]}
    counts = {}
    for uid, title, expr in panel_queries():
        resolved = re.sub(r"\$(\w+)", lambda m: values[m.group(1)], expr)
        r = httpx.get(f"{prometheus}/api/v1/query", params={"query": resolved}, timeout=10).json()
        assert r["status"] == "success", (uid, title, resolved, r)
        counts[f"{uid} / {title} / {resolved}"] = len(r["data"]["result"])
    empty = [k for k, n in counts.items() if n == 0]
    assert not empty, f"panels whose query returns no series: {empty}"
    return counts
