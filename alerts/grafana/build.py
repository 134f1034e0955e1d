"""Grafana dashboards as code: three dashboards generated from this file into ``dashboards/*.json``.

    python -m finsent.alerts.grafana.build        # rewrite the JSON (tests fail when it is stale)

A small builder instead of a generator library: a dashboard here is a list of panels, each a title, a
kind and PromQL. Every query is run against a real Prometheus scraping a real worker in the tests
(``tests/integration/test_dashboards.py``), because Grafana itself cannot be installed on these machines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DASHBOARDS_DIR = HERE / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "finsent-prometheus"}


@dataclass
class Panel:
    title: str
    queries: list[tuple[str, str]]  # (PromQL, legend)
    kind: str = "timeseries"  # timeseries | stat | table
    unit: str = "short"
    width: int = 12
    height: int = 8
    description: str = ""


@dataclass
class Dashboard:
    uid: str
    title: str
    panels: list[Panel]
    variables: list[dict] = field(default_factory=list)
    tags: tuple[str, ...] = ("finsent",)

    def to_json(self) -> dict:
        panels, x, y, row_h = [], 0, 0, 0
        for i, p in enumerate(self.panels, start=1):
            if x + p.width > 24:
                x, y = 0, y + row_h
                row_h = 0
            panels.append(
                {
                    "id": i,
                    "type": p.kind,
                    "title": p.title,
                    "description": p.description,
                    "datasource": DATASOURCE,
                    "gridPos": {"x": x, "y": y, "w": p.width, "h": p.height},
                    "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                    "options": {"legend": {"displayMode": "list", "placement": "bottom"}}
                    if p.kind == "timeseries"
                    else {},
                    "targets": [
                        {
                            "refId": chr(65 + j),
                            "datasource": DATASOURCE,
                            "expr": expr,
                            "legendFormat": legend,
                            **({"instant": True, "format": "table"} if p.kind == "table" else {}),
                        }
                        for j, (expr, legend) in enumerate(p.queries)
                    ],
                }
            )
            x += p.width
            row_h = max(row_h, p.height)
        return {
            "uid": self.uid,
            "title": self.title,
            "tags": list(self.tags),
            "timezone": "utc",
            "schemaVersion": 39,
            "version": 1,
            "editable": True,
            "refresh": "10s",
            "time": {"from": "now-1h", "to": "now"},
            "templating": {"list": self.variables},
            "annotations": {
                "list": [
                    {
                        "name": "finsent surges",
                        "enable": True,
                        "iconColor": "red",
                        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                        "target": {"type": "tags", "tags": ["finsent", "surge"], "limit": 100, "matchAny": False},
                    }
                ]
            },
            "panels": panels,
        }


def query_variable(name: str, query: str, label: str, multi: bool = False) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": False,
    }


WIDTH = query_variable("width", "label_values(finsent_window_count, width)", "window (s)")


def overview() -> Dashboard:
    return Dashboard(
        "finsent-overview",
        "finsent — overview",
        [
            Panel(
                "Headlines per topic (window)",
                [('sum by (name) (finsent_window_count{dim="topic", width="$width"})', "{{name}}")],
            ),
            Panel(
                "Negative share per topic",
                [('max by (name) (finsent_window_negative_share{dim="topic", width="$width"})', "{{name}}")],
                unit="percentunit",
            ),
            Panel(
                "Mean sentiment per topic (p(pos) - p(neg))",
                [('max by (name) (finsent_window_mean_score{dim="topic", width="$width"})', "{{name}}")],
            ),
            Panel(
                "All news: volume and negative share",
                [
                    ('max(finsent_window_count{dim="all", width="$width"})', "headlines"),
                    ('max(finsent_window_negative_share{dim="all", width="$width"})', "negative share"),
                ],
            ),
            Panel(
                "Active surges",
                [("sum(finsent_surge_active)", "active")],
                kind="stat",
                width=6,
                description="Keys whose negative share is a surge right now (the worker's detector).",
            ),
            Panel(
                "Surge z-scores (highest first)",
                [("sort_desc(max by (dim, name) (finsent_surge_zscore))", "")],
                kind="table",
                width=9,
            ),
            Panel(
                "Top tickers by volume",
                [('topk(10, max by (name) (finsent_window_count{dim="ticker", width="$width"}))', "{{name}}")],
                kind="table",
                width=9,
            ),
        ],
        variables=[WIDTH],
    )


def ticker() -> Dashboard:
    sel = 'dim="ticker", name="$ticker"'
    return Dashboard(
        "finsent-ticker",
        "finsent — ticker drill-down",
        [
            Panel("Headlines", [(f"max by (width) (finsent_window_count{{{sel}}})", "{{width}} s window")]),
            Panel(
                "Negative share",
                [(f"max by (width) (finsent_window_negative_share{{{sel}}})", "{{width}} s window")],
                unit="percentunit",
            ),
            Panel("Mean sentiment", [(f"max by (width) (finsent_window_mean_score{{{sel}}})", "{{width}} s window")]),
            Panel(
                "Surge z-score and state",
                [
                    (f"max(finsent_surge_zscore{{{sel}}})", "z-score"),
                    (f"max(finsent_surge_active{{{sel}}})", "surge active"),
                ],
            ),
        ],
        variables=[query_variable("ticker", 'label_values(finsent_window_count{dim="ticker"}, name)', "ticker")],
    )


def pipeline() -> Dashboard:
    return Dashboard(
        "finsent-pipeline",
        "finsent — pipeline health",
        [
            Panel("Services up", [('up{job=~"ingest|worker|receiver|api"}', "{{job}}")], kind="stat", width=8),
            Panel(
                "Feed items (new) per second",
                [('sum by (feed) (rate(finsent_feed_items_total{status="new"}[5m]))', "{{feed}}")],
                width=8,
            ),
            Panel(
                "Seconds since each feed's last success",
                [("time() - finsent_feed_last_success_timestamp_seconds", "{{feed}}")],
                unit="s",
                width=8,
            ),
            Panel(
                "Feed errors per second",
                [("sum by (feed) (rate(finsent_feed_errors_total[5m])) or vector(0)", "{{feed}}")],
                width=8,
            ),
            Panel(
                "Items in / scored per second",
                [
                    ("sum(rate(finsent_worker_items_in_total[1m]))", "in"),
                    ("sum(rate(finsent_worker_items_scored_total[1m]))", "scored"),
                ],
                width=8,
            ),
            Panel("Consumer lag (records)", [("sum by (topic) (finsent_worker_consumer_lag)", "{{topic}}")], width=8),
            Panel(
                "Micro-batch size (p50 / p95)",
                [
                    ("histogram_quantile(0.5, sum by (le) (rate(finsent_worker_batch_size_bucket[5m])))", "p50"),
                    ("histogram_quantile(0.95, sum by (le) (rate(finsent_worker_batch_size_bucket[5m])))", "p95"),
                ],
                width=8,
            ),
            Panel(
                "Inference seconds per batch (p50 / p99)",
                [
                    ("histogram_quantile(0.5, sum by (le) (rate(finsent_worker_inference_seconds_bucket[5m])))", "p50"),
                    (
                        "histogram_quantile(0.99, sum by (le) (rate(finsent_worker_inference_seconds_bucket[5m])))",
                        "p99",
                    ),
                ],
                unit="s",
                width=8,
            ),
            Panel(
                "Kafka -> scored seconds (p50 / p99)",
                [
                    ("histogram_quantile(0.5, sum by (le) (rate(finsent_worker_e2e_seconds_bucket[5m])))", "p50"),
                    ("histogram_quantile(0.99, sum by (le) (rate(finsent_worker_e2e_seconds_bucket[5m])))", "p99"),
                ],
                unit="s",
                width=8,
            ),
            Panel(
                "Where a record's Kafka -> scored time goes (mean seconds by worker stage)",
                [
                    (
                        "sum by (stage) (rate(finsent_worker_stage_seconds_sum[5m]))"
                        " / sum by (stage) (rate(finsent_worker_stage_seconds_count[5m]))",
                        "{{stage}}",
                    )
                ],
                unit="s",
                width=8,
            ),
            Panel(
                "Dead letters per second (by reason)",
                [("sum by (reason) (rate(finsent_worker_items_failed_total[5m])) or vector(0)", "{{reason}}")],
                width=8,
            ),
            Panel(
                "Late (counted, windows revised) / rejected / duplicate items per second",
                [
                    ("sum(rate(finsent_window_late_items_total[5m]))", "late, counted"),
                    (
                        "sum by (reason) (rate(finsent_window_rejected_items_total[5m])) or vector(0)",
                        "rejected {{reason}}",
                    ),
                    ("sum(rate(finsent_window_revisions_total[5m]))", "window revisions"),
                    ("sum(rate(finsent_window_retimed_items_total[5m]))", "too late, counted in the open window"),
                    ("sum(rate(finsent_window_duplicate_items_total[5m]))", "duplicate"),
                ],
                width=8,
            ),
            Panel(
                "Audit log: notifications recorded per second",
                [
                    (
                        'sum by (status) (rate(finsent_receiver_notifications_total{outcome="recorded"}[5m])) or vector(0)',
                        "{{status}}",
                    ),
                    (
                        'sum(rate(finsent_receiver_notifications_total{outcome="duplicate"}[5m])) or vector(0)',
                        "duplicates (Alertmanager's repeats, not recorded again)",
                    ),
                ],
                width=8,
            ),
            Panel(
                "Alert cases: false-positive share of closed cases, by key kind (tune surge thresholds on it)",
                [
                    (
                        '(sum by (dim) (finsent_receiver_case_dispositions{disposition="false_positive"})'
                        " / sum by (dim) (finsent_receiver_case_dispositions)) or vector(0)",
                        "{{dim}}",
                    ),
                    ("sum by (state) (finsent_receiver_cases)", "cases {{state}}"),
                ],
                width=8,
            ),
            Panel(
                "API answers per second (by route, status)",
                [
                    (
                        'sum by (route, status) (rate(finsent_api_requests_total{route!="/metrics"}[5m]))',
                        "{{route}} {{status}}",
                    ),
                ],
                width=8,
            ),
            Panel(
                "API latency p99 (by route)",
                [
                    (
                        'histogram_quantile(0.99, sum by (le, route) (rate(finsent_api_request_seconds_bucket{route!="/metrics"}[5m])))',
                        "{{route}}",
                    ),
                ],
                unit="s",
                width=8,
            ),
            Panel(
                "Live dashboards open / texts classified per second",
                [
                    ("sum(finsent_api_live_clients)", "dashboards open"),
                    ("sum(rate(finsent_api_classified_texts_total[5m]))", "classified/s"),
                ],
                width=8,
            ),
        ],
    )


def dashboards() -> list[Dashboard]:
    return [overview(), ticker(), pipeline()]


def render(path: Path = DASHBOARDS_DIR) -> list[Path]:
    path.mkdir(parents=True, exist_ok=True)
    out = []
    for d in dashboards():
        target = path / f"{d.uid}.json"
        target.write_text(json.dumps(d.to_json(), indent=2, sort_keys=True) + "\n")
        out.append(target)
    return out


if __name__ == "__main__":
    for p in render():
        print(p)
