"""The compliance audit log: every accepted Alertmanager notification, append-only, in SQLite (WAL).

Append-only is enforced by the database itself (triggers abort any UPDATE or DELETE), not just by
this module's manners. One row per alert per notification state: Alertmanager's retries and repeat
notifications of the same alert in the same state carry the same fingerprint and start time, so they
map to the same ``dedup_key`` and are recorded once. The SurgeAlerts read from ``finsent.alerts``
are kept in a second table, so evidence can be attached after a restart too.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from finsent.records import SurgeAlert

SCHEMA = """
PRAGMA journal_mode=WAL;
CREATE TABLE IF NOT EXISTS notifications (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    dedup_key TEXT NOT NULL UNIQUE,
    received_at TEXT NOT NULL,
    receiver TEXT NOT NULL,
    status TEXT NOT NULL,
    alertname TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    starts_at TEXT NOT NULL,
    ends_at TEXT,
    severity TEXT,
    dim TEXT,
    name TEXT,
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL,
    surge_alert_id TEXT,
    evidence TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_received ON notifications (received_at);
CREATE TRIGGER IF NOT EXISTS notifications_no_update BEFORE UPDATE ON notifications
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS notifications_no_delete BEFORE DELETE ON notifications
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE IF NOT EXISTS surges (
    alert_id TEXT NOT NULL,
    state TEXT NOT NULL,
    severity TEXT NOT NULL,
    key TEXT NOT NULL,
    window_end TEXT NOT NULL,
    received_at TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (alert_id, state, severity)
);
CREATE INDEX IF NOT EXISTS surges_key ON surges (key, received_at);
"""

COLUMNS = ("seq", "received_at", "receiver", "status", "alertname", "fingerprint", "starts_at", "ends_at",
           "severity", "dim", "name", "labels", "annotations", "surge_alert_id", "evidence")


@dataclass(frozen=True)
class Notification:
    """One alert of one webhook, as it will be recorded."""

    receiver: str
    status: str
    alertname: str
    fingerprint: str
    starts_at: str
    ends_at: str | None
    labels: dict
    annotations: dict

    @property
    def key(self) -> str | None:
        """The finsent dimension key of a surge alert (``all``, ``topic:…``, ``ticker:…``)."""
        dim, name = self.labels.get("dim"), self.labels.get("name")
        if not dim:
            return None
        return "all" if dim == "all" else f"{dim}:{name}"

    @property
    def dedup_key(self) -> str:
        parts = [self.receiver, self.fingerprint, self.status, self.starts_at]
        if self.status == "resolved":
            parts.append(self.ends_at or "")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()


class AuditLog:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.executescript(SCHEMA)
        self._db.execute("PRAGMA synchronous=FULL")  # an accepted notification survives a power cut
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    # -- notifications ----------------------------------------------------------------------------
    def record(self, n: Notification, received_at: datetime, surge: SurgeAlert | None) -> bool:
        """Append one notification; False when it was already recorded (a duplicate delivery)."""
        evidence = [e.to_dict() for e in surge.evidence] if surge else []
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO notifications (dedup_key, received_at, receiver, status, alertname, fingerprint,"
                " starts_at, ends_at, severity, dim, name, labels, annotations, surge_alert_id, evidence)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (n.dedup_key, received_at.isoformat(), n.receiver, n.status, n.alertname, n.fingerprint, n.starts_at,
                 n.ends_at, n.labels.get("severity"), n.labels.get("dim"), n.labels.get("name"),
                 json.dumps(n.labels, sort_keys=True), json.dumps(n.annotations, sort_keys=True),
                 surge.alert_id if surge else None, json.dumps(evidence)),
            )
            return cur.rowcount == 1

    def query(self, start: datetime | None = None, end: datetime | None = None, status: str | None = None,
              limit: int = 10_000) -> list[dict]:
        sql, args = f"SELECT {', '.join(COLUMNS)} FROM notifications WHERE 1=1", []
        if start is not None:
            sql += " AND received_at >= ?"
            args.append(start.isoformat())
        if end is not None:
            sql += " AND received_at < ?"
            args.append(end.isoformat())
        if status:
            sql += " AND status = ?"
            args.append(status)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        out = []
        for row in rows:
            d = dict(zip(COLUMNS, row))
            for field in ("labels", "annotations", "evidence"):
                d[field] = json.loads(d[field])
            out.append(d)
        return out

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM notifications").fetchone()[0]

    # -- surges from finsent.alerts ---------------------------------------------------------------
    def add_surges(self, alerts: Iterable[SurgeAlert], received_at: datetime) -> None:
        """``finsent.alerts`` is a changelog of transitions: the newest record of each one replaces the
        last (a provisional firing confirmed with the complete window's evidence, or retracted). This
        table is a cache of that topic, not the audit log: replacing rows here rewrites no history."""
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO surges (alert_id, state, severity, key, window_end, received_at, record)"
                " VALUES (?,?,?,?,?,?,?)",
                [(a.alert_id, a.state, a.severity, a.key, a.window_end.isoformat(), received_at.isoformat(),
                  a.to_json().decode()) for a in alerts],
            )

    def latest_surge(self, key: str) -> SurgeAlert | None:
        """The newest firing SurgeAlert of ``key`` that still stands (its evidence is what compliance needs)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT record FROM surges WHERE key = ? AND state = 'firing' ORDER BY window_end DESC, received_at DESC"
                " LIMIT 20", (key,)).fetchall()
        for (record,) in rows:
            alert = SurgeAlert.from_json(record)
            if not alert.retracted:
                return alert
        return None


__all__ = ["AuditLog", "Notification"]
