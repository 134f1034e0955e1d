"""``finsent grafana publish``: upload the dashboards and post surge annotations through grafana-client.

For a Grafana that is not provisioned from files (deploy/ provisions them; a desk's existing Grafana
may not). The API token comes from ``FINSENT_GRAFANA__TOKEN`` only. Annotations mark each surge of
the audit log (firing → resolved as a region) with tags ``finsent``, ``surge`` and the key, so the
dashboards' "finsent surges" annotation layer shows them. The audit rows are streamed (the whole log,
however long), and only one entry per surge is kept in memory.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterable
from datetime import datetime

from grafana_client import GrafanaApi

from finsent.alerts.grafana.build import dashboards

log = logging.getLogger("finsent.alerts.grafana")

SURGE_ALERT = "NegativeSentimentSurge"


def client(url: str, token: str, timeout: float = 10.0) -> GrafanaApi:
    return GrafanaApi.from_url(url, credential=token, timeout=timeout)


def publish_dashboards(api: GrafanaApi, folder_uid: str | None = None) -> list[str]:
    uids = []
    for d in dashboards():
        payload = {"dashboard": {**d.to_json(), "id": None}, "overwrite": True, "message": "finsent grafana publish"}
        if folder_uid:
            payload["folderUid"] = folder_uid
        api.dashboard.update_dashboard(payload)
        uids.append(d.uid)
        log.info("dashboard published", extra={"uid": d.uid})
    return uids


def surge_annotations(rows: Iterable[dict]) -> list[dict]:
    """Audit-log rows (any number, e.g. ``AuditLog.iter_rows``) → one annotation per surge (firing start to
    resolved end, or a point while open)."""
    surges: dict[str, dict] = {}
    for r in rows:
        if r["alertname"] != SURGE_ALERT:
            continue
        key = f"{r['dim']}:{r['name']}" if r["dim"] != "all" else "all"
        s = surges.setdefault(
            r["fingerprint"] + r["starts_at"],
            {"key": key, "severity": r["severity"], "start": r["starts_at"], "end": None, "titles": []},
        )
        if r["status"] == "resolved":
            s["end"] = r["ends_at"]
        s["titles"] = s["titles"] or [e["title"] for e in r["evidence"][:3]]
    out = []
    unreadable = 0
    for s in surges.values():
        try:
            start, end = _ms(s["start"]), _ms(s["end"]) if s["end"] else None
        except ValueError:  # a row a receiver before the webhook's time check took ("startsAt": "not a time")
            unreadable += 1
            continue
        # headlines are a stranger's text: escaped, next to the <br> that Grafana renders
        text = html.escape(f"Negative surge {s['key']} ({s['severity']})") + "".join(
            f"<br>• {html.escape(t)}" for t in s["titles"]
        )
        out.append(
            {
                "time_from": start,
                "time_to": end if end is not None else start,
                "tags": ["finsent", "surge", s["key"], s["severity"]],
                "text": text,
            }
        )
    if unreadable:
        log.warning("surges with a time that is not a time left out of the annotations", extra={"surges": unreadable})
    return out


def publish_annotations(api: GrafanaApi, rows: Iterable[dict]) -> int:
    annotations = surge_annotations(rows)
    for a in annotations:
        api.annotations.add_annotation(**a)
    return len(annotations)


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


__all__ = ["client", "publish_annotations", "publish_dashboards", "surge_annotations"]
