"""What the API serves about the live stream: bounded in-memory views of the output topics.

A background task follows ``finsent.news.scored``, ``finsent.windows`` and ``finsent.alerts`` (from the
beginning of what the broker holds, newest kept) into these views. Pure containers: the Kafka shell
(``follow``) only calls ``add_*``, so the views are tested without a broker and the API without Kafka.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

from finsent.kafka import follow_topics
from finsent.records import Record, ScoredItem, SurgeAlert, WindowStat
from finsent.settings import Settings


class StreamViews:
    """``feed`` numbers every new item and alert (``seq``) so that a live client (the dashboard's server-sent
    events) asks for "everything after N" and resumes after a reconnect without gaps or repeats."""

    def __init__(self, max_items: int = 50_000, max_points: int = 2_000, max_feed: int = 5_000):
        self.items: OrderedDict[str, ScoredItem] = OrderedDict()  # item id -> newest scoring, arrival order
        self.max_items = max_items
        self.windows: dict[tuple[str, int], deque[WindowStat]] = {}
        self.max_points = max_points
        self.alerts: OrderedDict[tuple[str, str, str], SurgeAlert] = OrderedDict()  # (alert id, state, severity)
        self.seq = 0
        self.feed: deque[tuple[int, str, ScoredItem | SurgeAlert]] = deque(maxlen=max_feed)

    def _publish(self, kind: str, record: ScoredItem | SurgeAlert) -> None:
        self.seq += 1
        self.feed.append((self.seq, kind, record))

    def feed_after(self, seq: int, backlog: int = 100) -> list[tuple[int, str, ScoredItem | SurgeAlert]]:
        """Feed entries newer than ``seq`` (at most ``backlog`` of the newest when the client is new or too far behind)."""
        if seq <= 0 or seq > self.seq or (self.feed and seq < self.feed[0][0] - 1):  # new, restarted server, or gap
            return list(self.feed)[-backlog:] if backlog else []
        return [e for e in self.feed if e[0] > seq] if self.seq > seq else []

    def add_item(self, s: ScoredItem) -> None:
        self.items.pop(s.item.id, None)
        self.items[s.item.id] = s
        while len(self.items) > self.max_items:
            self.items.popitem(last=False)
        self._publish("item", s)

    def add_window(self, w: WindowStat) -> None:
        """Keeps the highest revision of each (key, start, end): late items publish a window again.

        Each series holds the newest ``max_points`` windows in end order. A late window the view never saw (its
        key had no headlines in it when it closed) is inserted in order; in a full series the oldest window makes
        room (``deque.insert`` on a full bounded deque raises, which stopped the follower), and a window older
        than everything a full series holds is not kept."""
        width = int((w.end - w.start).total_seconds())
        series = self.windows.setdefault((w.key, width), deque(maxlen=self.max_points))
        if series and series[-1].end >= w.end:  # a revision, or a window re-published after a restart
            for i in range(len(series) - 1, -1, -1):
                if series[i].end == w.end:
                    if w.revision >= series[i].revision:
                        series[i] = w
                    return
                if series[i].end < w.end:  # a window never seen (it had no headlines when it closed)
                    if len(series) == series.maxlen:
                        series.popleft()  # the oldest makes room; w is newer than it, so it goes after it
                        i -= 1
                    series.insert(i + 1, w)
                    return
            if len(series) < (series.maxlen or 0):
                series.appendleft(w)
            return
        series.append(w)

    def add_alert(self, a: SurgeAlert) -> None:
        """Newest record per transition; a retraction removes it (the alerts topic is a changelog)."""
        self.alerts.pop(a.transition, None)
        if not a.retracted:
            self.alerts[a.transition] = a
        while len(self.alerts) > 10_000:
            self.alerts.popitem(last=False)
        self._publish("alert", a)

    def window_keys(self) -> list[dict]:
        """Every key with windows, with its widths and the newest window's count (busiest first)."""
        keys: dict[str, dict] = {}
        for (key, width), series in self.windows.items():
            if not series:
                continue
            k = keys.setdefault(key, {"key": key, "widths": [], "latest_count": 0, "latest_end": None})
            k["widths"].append(width)
            last = series[-1]
            if k["latest_end"] is None or last.end >= k["latest_end"]:
                k["latest_end"], k["latest_count"] = last.end, last.count
        for k in keys.values():
            k["widths"].sort()
        return sorted(keys.values(), key=lambda k: (-k["latest_count"], k["key"]))

    def query_items(
        self,
        topic: str | None = None,
        ticker: str | None = None,
        sentiment: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        text: str | None = None,
    ) -> list[ScoredItem]:
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
    handlers: dict[str, tuple[type[Record], Callable[[Any], None]]] = {
        t.scored.name: (ScoredItem, views.add_item),
        t.windows.name: (WindowStat, views.add_window),
        t.alerts.name: (SurgeAlert, views.add_alert),
    }

    def handle(topic: str, value: bytes | None, offset: int) -> None:
        record_type, add = handlers[topic]
        add(record_type.from_json(value or b""))

    await follow_topics(settings.kafka, handlers, handle, "web", settings.stream.fetch_max_wait_ms)


__all__ = ["StreamViews", "follow"]
