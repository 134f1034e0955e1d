"""What the API serves about the live stream: bounded in-memory views of the output topics.

A background task follows ``finsent.news.scored``, ``finsent.windows`` and ``finsent.alerts`` (from the
beginning of what the broker holds, newest kept) into these views. Pure containers: the Kafka shell
(``follow``) only calls ``add_*``, so the views are tested without a broker and the API without Kafka.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from datetime import datetime

from finsent.follow import follow_topics
from finsent.records import ScoredItem, SurgeAlert, WindowStat
from finsent.settings import Settings


class StreamViews:
    def __init__(self, max_items: int = 50_000, max_points: int = 2_000):
        self.items: OrderedDict[str, ScoredItem] = OrderedDict()  # item id -> newest scoring, arrival order
        self.max_items = max_items
        self.windows: dict[tuple[str, int], deque[WindowStat]] = {}
        self.max_points = max_points
        self.alerts: OrderedDict[tuple[str, str, str], SurgeAlert] = OrderedDict()  # (alert id, state, severity)
        self.changed = asyncio.Event()  # set on every new item: live updates wait on it

    def add_item(self, s: ScoredItem) -> None:
        self.items.pop(s.item.id, None)
        self.items[s.item.id] = s
        while len(self.items) > self.max_items:
            self.items.popitem(last=False)
        self.changed.set()

    def add_window(self, w: WindowStat) -> None:
        width = int((w.end - w.start).total_seconds())
        series = self.windows.setdefault((w.key, width), deque(maxlen=self.max_points))
        if series and series[-1].end >= w.end:  # a re-published window (after a worker restart): replace
            if series[-1].end == w.end:
                series[-1] = w
            return
        series.append(w)

    def add_alert(self, a: SurgeAlert) -> None:
        self.alerts[(a.alert_id, a.state, a.severity)] = a
        while len(self.alerts) > 10_000:
            self.alerts.popitem(last=False)

    def query_items(self, topic: str | None = None, ticker: str | None = None, sentiment: str | None = None,
                    since: datetime | None = None, until: datetime | None = None, text: str | None = None) -> list[ScoredItem]:
        """Newest first (by publish time)."""
        out = []
        needle = text.lower() if text else None
        for s in self.items.values():
            it = s.item
            if (topic and s.topic != topic) or (sentiment and s.sentiment != sentiment):
                continue
            if ticker and ticker.upper() not in it.tickers:
                continue
            if (since and it.published < since) or (until and it.published >= until):
                continue
            if needle and needle not in it.title.lower():
                continue
            out.append(s)
        out.sort(key=lambda s: (s.item.published, s.item.id), reverse=True)
        return out


async def follow(settings: Settings, views: StreamViews) -> None:
    """Tail the three output topics into ``views`` (until cancelled)."""
    t = settings.topics
    handlers = {t.scored.name: (ScoredItem, views.add_item), t.windows.name: (WindowStat, views.add_window),
                t.alerts.name: (SurgeAlert, views.add_alert)}

    def handle(topic: str, value: bytes | None, offset: int) -> None:
        record_type, add = handlers[topic]
        add(record_type.from_json(value or b""))

    await follow_topics(settings.kafka.bootstrap, handlers, handle, "finsent-web", settings.stream.fetch_max_wait_ms)


__all__ = ["StreamViews", "follow"]
