"""The compliance audit log: every accepted Alertmanager notification, append-only, in SQLite (WAL).

Append-only is enforced by the database itself (triggers abort any UPDATE or DELETE), not just by
this module's manners. One row per alert per notification state: Alertmanager's retries and repeat
notifications of the same alert in the same state carry the same fingerprint and start time, so they
map to the same ``dedup_key`` and are recorded once. The SurgeAlerts read from ``finsent.alerts``
are kept in a second table, so evidence can be attached after a restart too.

Tamper evidence: triggers stop mistakes, not someone with the file and ``sqlite3``. So every row also
holds ``row_hash`` = sha256(previous row's hash + the row's canonical content), a chain from
:data:`GENESIS`; :func:`verify_chain` recomputes it and names the first row that does not fit (an
edited row, or one removed or moved before it). The head hash it prints can be copied elsewhere, which
also makes a truncated tail visible. A log written before the chain existed is chained from its
current rows the first time it is opened (logged), since nothing older can be vouched for.

The table is a list of events (today one kind: a notification); later kinds (acknowledge, assign,
close) are new rows, never edits. Columns added later must be nullable with no default: NULL cells are
left out of the canonical content, so adding a column keeps every existing row's hash valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import quote

from finsent.alerts.cases import Case, apply_action, check_action, fold
from finsent.errors import StateStoreError
from finsent.records import SurgeAlert

log = logging.getLogger("finsent.alerts.audit")

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
    evidence TEXT NOT NULL,
    evidence_match TEXT,
    row_hash TEXT
);
CREATE INDEX IF NOT EXISTS notifications_received ON notifications (received_at);
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

TRIGGERS = (  # one statement each: executescript would commit the migration's transaction half-way
    "CREATE TRIGGER IF NOT EXISTS notifications_no_update BEFORE UPDATE ON notifications"
    " BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS notifications_no_delete BEFORE DELETE ON notifications"
    " BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
)

COLUMNS = (
    "seq",
    "received_at",
    "receiver",
    "status",
    "alertname",
    "fingerprint",
    "starts_at",
    "ends_at",
    "severity",
    "dim",
    "name",
    "labels",
    "annotations",
    "surge_alert_id",
    "evidence",
    "evidence_match",
    "row_hash",
)
ACTION_COLUMNS = ("action", "actor", "assignee", "note", "disposition", "case_seq")
_JSON_FIELDS = ("labels", "annotations", "evidence")
# absent from logs written before them: added on open (nullable, so older rows' hashes stay valid)
_ADDED_COLUMNS = ("evidence_match", "row_hash", "action", "actor", "assignee", "note", "disposition", "case_seq")
_NOTIFICATIONS_ONLY = " AND action IS NULL"  # the JSON listing and the count are of notifications, not actions

GENESIS = "0" * 64  # the "previous hash" of the first row
_MISMATCH = "hash does not match: this row was edited, or one before it removed or reordered"
MatchStatus = Literal["matched", "retracted", "stale", "missing"]


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
    def surge_alert_id(self) -> str | None:
        """The SurgeAlert id when the Prometheus alert carries one (label or annotation ``alert_id``)."""
        return self.labels.get("alert_id") or self.annotations.get("alert_id") or None

    @property
    def dedup_key(self) -> str:
        parts = [self.receiver, self.fingerprint, self.status, self.starts_at]
        if self.status == "resolved":
            parts.append(self.ends_at or "")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()


class SurgeMatch(NamedTuple):
    """Which SurgeAlert a notification is about: ``matched`` (``surge`` set), ``retracted`` (``surge`` set: a
    provisional firing its complete window withdrew, which Prometheus had already seen), ``stale`` (the key has
    surges, none of this alert's time or id: ``nearest`` names the closest) or ``missing`` (none at all)."""

    status: MatchStatus
    surge: SurgeAlert | None = None
    nearest: str | None = None


class ChainReport(NamedTuple):
    """What :func:`verify_chain` found: ``bad_seq`` is None when every row fits."""

    rows: int
    head: str
    bad_seq: int | None = None
    reason: str = ""


# -- the hash chain -----------------------------------------------------------------------------------
def canonical(row: dict) -> bytes:
    """A row's content as hashed: every column but ``row_hash``, NULLs left out (so later columns do not
    change older rows' hashes), sorted keys, no whitespace."""
    content = {k: v for k, v in row.items() if k != "row_hash" and v is not None}
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(previous: str, row: dict) -> str:
    return hashlib.sha256(previous.encode() + canonical(row)).hexdigest()


def verify_chain(path: Path) -> ChainReport:
    """Recompute the chain over the whole log, read-only; stops at the first row that does not fit. A log that is
    missing, not readable as one, or not chained yet raises ``StateStoreError`` naming the file."""
    if not path.exists():
        raise StateStoreError(f"no audit log at {path}")
    try:
        db = _read_only(path)
        try:
            return _verify(db, path)
        finally:
            db.close()
    except sqlite3.Error as err:
        raise StateStoreError(f"audit log {path} cannot be read: {err}") from None


def _verify(db: sqlite3.Connection, path: Path) -> ChainReport:
    cur = db.execute("SELECT * FROM notifications ORDER BY seq")
    names = [d[0] for d in cur.description]
    if "row_hash" not in names:
        raise StateStoreError(f"{path} has no hash chain yet (the receiver adds one when it next opens the log)")
    previous, rows = GENESIS, 0
    while batch := cur.fetchmany(1000):
        for values in batch:
            row = dict(zip(names, values))
            if row["seq"] != rows + 1:  # seqs are handed out one by one: a gap is a removed row
                return ChainReport(rows, previous, row["seq"], f"expected seq {rows + 1}: rows were removed")
            if row["row_hash"] != chain_hash(previous, row):
                return ChainReport(rows, previous, row["seq"], "no hash" if row["row_hash"] is None else _MISMATCH)
            previous, rows = row["row_hash"], rows + 1
    return ChainReport(rows, previous)


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, isolation_level=None)


def _fold_cases(db: sqlite3.Connection) -> dict[int, Case]:
    names = ("seq", "received_at", "status", "alertname", "fingerprint", "severity", "dim", "name", *ACTION_COLUMNS)
    cur = db.execute(f"SELECT {', '.join(names)} FROM notifications ORDER BY seq")
    return fold(dict(zip(names, row)) for batch in iter(lambda: cur.fetchmany(1000), []) for row in batch)


def _decode(row: dict) -> dict:
    for field in _JSON_FIELDS:
        row[field] = json.loads(row[field])
    return row


class AuditLog:
    def __init__(self, path: Path, create: bool = True):
        """Open the log at ``path``, creating it unless ``create`` is False (an export or a check of a log that is
        not there must say so, not make an empty one). A file that cannot serve as the log (not SQLite, unreadable,
        locked, on a full disk or a read-only folder), or a missing one with ``create=False``, raises
        ``StateStoreError`` naming it: one line from the CLI, for the receiver as for its commands."""
        if not create and not path.exists():
            raise StateStoreError(f"no audit log at {path}")
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except (sqlite3.Error, OSError) as err:
            raise StateStoreError(f"audit log {path} cannot be opened: {err}") from None
        try:
            self._db.executescript(SCHEMA)
            self._db.execute("PRAGMA synchronous=FULL")  # an accepted notification survives a power cut
            self._migrate()
        except sqlite3.Error as err:
            self._db.close()
            raise StateStoreError(f"audit log {path} cannot be opened: {err}") from None
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    # -- schema migration -------------------------------------------------------------------------
    def _migrate(self) -> None:
        """Add the columns a log written by an older receiver lacks, in one transaction; a log without
        ``row_hash`` gets its chain computed from the rows it has now."""
        with self._lock, self._transaction():  # a second process opening the same old log waits, then sees it done
            have = {r[1] for r in self._db.execute("PRAGMA table_info(notifications)")}
            missing = [c for c in _ADDED_COLUMNS if c not in have]
            for column in missing:
                self._db.execute(f"ALTER TABLE notifications ADD COLUMN {column} TEXT")
            chained = self._chain_existing_rows() if "row_hash" in missing else None
            for trigger in TRIGGERS:
                self._db.execute(trigger)
        if chained is not None:
            log.warning(
                "audit log had no hash chain: chained from its current rows (nothing older can be vouched for)",
                extra={"audit_db": str(self.path), "rows_chained": chained},
            )
        elif missing:
            log.info("audit log migrated", extra={"audit_db": str(self.path), "columns_added": missing})

    def _chain_existing_rows(self) -> int:
        """The one time rows are updated: the append-only trigger is lifted inside the migration's transaction
        (and put back before it commits)."""
        self._db.execute("DROP TRIGGER IF EXISTS notifications_no_update")
        cur = self._db.execute("SELECT * FROM notifications ORDER BY seq")
        names = [d[0] for d in cur.description]
        previous, hashes = GENESIS, []
        for values in cur.fetchall():
            previous = chain_hash(previous, dict(zip(names, values)))
            hashes.append((previous, values[names.index("seq")]))
        self._db.executemany("UPDATE notifications SET row_hash = ? WHERE seq = ?", hashes)
        return len(hashes)

    # -- notifications ----------------------------------------------------------------------------
    def record(
        self, n: Notification, received_at: datetime, surge: SurgeAlert | None, match: MatchStatus | None = None
    ) -> bool:
        """Append one notification, chained to the last row; False when it was already recorded (a
        duplicate delivery). ``match`` says how ``surge`` was found (None: not a surge notification)."""
        row = {
            "dedup_key": n.dedup_key,
            "received_at": received_at.isoformat(),
            "receiver": n.receiver,
            "status": n.status,
            "alertname": n.alertname,
            "fingerprint": n.fingerprint,
            "starts_at": n.starts_at,
            "ends_at": n.ends_at,
            "severity": n.labels.get("severity"),
            "dim": n.labels.get("dim"),
            "name": n.labels.get("name"),
            "labels": json.dumps(n.labels, sort_keys=True),
            "annotations": json.dumps(n.annotations, sort_keys=True),
            "surge_alert_id": surge.alert_id if surge else None,
            "evidence": json.dumps([e.to_dict() for e in surge.evidence] if surge else []),
            "evidence_match": match,
        }
        with self._lock, self._transaction():
            if self._db.execute("SELECT 1 FROM notifications WHERE dedup_key = ?", (row["dedup_key"],)).fetchone():
                return False
            self._append(row)
        return True

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction (taken at once: IMMEDIATE), committed when the block ends, rolled back on
        any exception. Callers hold ``_lock``."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _append(self, row: dict) -> None:
        """Insert ``row`` as the next seq with its chained hash (inside the caller's write transaction)."""
        last = self._db.execute("SELECT seq, row_hash FROM notifications ORDER BY seq DESC LIMIT 1").fetchone()
        used = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'notifications'").fetchone()
        row["seq"] = max(last[0] if last else 0, used[0] if used else 0) + 1  # AUTOINCREMENT: never reuse a seq
        previous = (last[1] if last else None) or GENESIS  # a last row stripped of its hash: verify names it
        row["row_hash"] = chain_hash(previous, row)
        self._db.execute(
            f"INSERT INTO notifications ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values())
        )

    def query(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        status: str | None = None,
        limit: int = 1000,
        after: int = 0,
        actions: bool = False,
    ) -> list[dict]:
        """One page: at most ``limit`` rows with ``seq > after``, oldest first (``after`` is the cursor); with
        ``actions``, compliance's case actions too (each row then has the ``ACTION_COLUMNS``)."""
        sql, args, names = self._select(start, end, status, None, after, actions)
        with self._lock:
            rows = self._db.execute(sql + " LIMIT ?", [*args, limit]).fetchall()
        return [_decode(dict(zip(names, row))) for row in rows]

    def iter_rows(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        status: str | None = None,
        alertname: str | None = None,
        batch: int = 500,
        actions: bool = False,
    ) -> Iterator[dict]:
        """Every matching row, oldest first, streamed from a cursor on a connection of its own: memory stays
        at one batch whatever the log's size, the export is one consistent snapshot, and the receiver's
        writes are not held up (WAL readers do not block the writer). ``actions`` as for ``query``."""
        db = _read_only(self.path)
        try:
            db.execute("BEGIN")  # one snapshot for the whole export
            sql, args, names = self._select(start, end, status, alertname, 0, actions)
            cur = db.execute(sql, args)
            while rows := cur.fetchmany(batch):
                for row in rows:
                    yield _decode(dict(zip(names, row)))
        finally:
            db.close()

    @staticmethod
    def _select(start, end, status, alertname, after, actions=False) -> tuple[str, list, tuple[str, ...]]:
        names = (*COLUMNS, *ACTION_COLUMNS) if actions else COLUMNS
        only = "" if actions else _NOTIFICATIONS_ONLY
        sql, args = f"SELECT {', '.join(names)} FROM notifications WHERE seq > ?{only}", [after]
        for clause, value in (
            (" AND received_at >= ?", start.isoformat() if start else None),
            (" AND received_at < ?", end.isoformat() if end else None),
            (" AND status = ?", status),
            (" AND alertname = ?", alertname),
        ):
            if value is not None:
                sql += clause
                args.append(value)
        return sql + " ORDER BY seq", args, names

    def count(self) -> int:
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM notifications WHERE 1{_NOTIFICATIONS_ONLY}").fetchone()[0]

    # -- cases: compliance's actions, each a new row ------------------------------------------------
    def cases(self) -> dict[int, Case]:
        """Every alert case as it stands now (folded from the whole log, notifications and actions), read from
        a snapshot on a connection of its own: a fold of a long log takes seconds, and holding the writer's
        lock that long would hold up the webhooks being recorded (WAL readers do not block the writer)."""
        db = _read_only(self.path)
        try:
            db.execute("BEGIN")
            return _fold_cases(db)
        finally:
            db.close()

    def case_details(self, seqs: Iterable[int]) -> dict[int, dict[str, Any]]:
        """``evidence`` (the headlines) and ``annotations`` of the notification rows ``seqs``, by seq: what a case
        shows of its newest firing, read for the cases listed rather than decoded for every row of the fold."""
        wanted = sorted(set(seqs))
        out: dict[int, dict[str, Any]] = {}
        db = _read_only(self.path)
        try:
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                rows = db.execute(
                    f"SELECT seq, evidence, annotations FROM notifications WHERE seq IN ({', '.join('?' * len(chunk))})",
                    chunk,
                )
                for seq, evidence, annotations in rows:
                    out[seq] = {"evidence": json.loads(evidence), "annotations": json.loads(annotations)}
        finally:
            db.close()
        return out

    def record_action(
        self,
        case_id: int,
        action: str,
        actor: str,
        at: datetime,
        assignee: str | None = None,
        note: str | None = None,
        disposition: str | None = None,
    ) -> Case:
        """Append one action on a case (checked against the case as it stands, inside the write transaction,
        so two people closing at once cannot both succeed); returns the case after it. CaseError otherwise."""
        with self._lock, self._transaction():
            case = self._cases_in_transaction().get(case_id)
            check_action(case, action, assignee, disposition, note)
            assert case is not None
            row = {
                "dedup_key": f"action:{uuid.uuid4().hex}",
                "received_at": at.isoformat(),
                "receiver": "compliance",
                "status": action,
                "alertname": case.alertname,
                "fingerprint": case.fingerprint,
                "starts_at": case.opened_at,
                "labels": "{}",
                "annotations": "{}",
                "evidence": "[]",
                "dim": case.dim,
                "name": case.name,
                "action": action,
                "actor": actor,
                "assignee": assignee if action == "assign" else None,
                "note": note or None,
                "disposition": disposition if action == "close" else None,
                "case_seq": str(case_id),  # a TEXT column: hashed as it is stored
            }
            self._append(row)  # sets row["seq"]
        apply_action(case, row)  # the case as the fold would now give it, without reading the log again
        return case

    def _cases_in_transaction(self) -> dict[int, Case]:
        return _fold_cases(self._db)

    # -- surges from finsent.alerts ---------------------------------------------------------------
    def add_surges(self, alerts: Iterable[SurgeAlert], received_at: datetime) -> None:
        """``finsent.alerts`` is a changelog of transitions: the newest record of each one replaces the
        last (a provisional firing confirmed with the complete window's evidence, or retracted). This
        table is a cache of that topic, not the audit log: replacing rows here rewrites no history. One
        transaction per call (autocommit would sync to disk once per row)."""
        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO surges (alert_id, state, severity, key, window_end, received_at, record)"
                " VALUES (?,?,?,?,?,?,?)",
                [
                    (
                        a.alert_id,
                        a.state,
                        a.severity,
                        a.key,
                        a.window_end.isoformat(),
                        received_at.isoformat(),
                        a.to_json().decode(),
                    )
                    for a in alerts
                ],
            )

    def firing_surges(self, key: str, limit: int = 500) -> list[SurgeAlert]:
        """The firing SurgeAlerts of ``key``, retracted ones included, newest window first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT record FROM surges WHERE key = ? AND state = 'firing' ORDER BY window_end DESC, received_at DESC"
                " LIMIT ?",
                (key, limit),
            ).fetchall()
        return [SurgeAlert.from_json(record) for (record,) in rows]

    def surge_filed_with_firing(self, n: Notification) -> str | None:
        """The SurgeAlert id the firing notification of the same alert (receiver, fingerprint, start) was filed
        with: its resolution is about that surge, whatever arrived on the topic since."""
        with self._lock:
            row = self._db.execute(
                "SELECT surge_alert_id FROM notifications WHERE fingerprint = ? AND starts_at = ? AND receiver = ?"
                " AND status = 'firing' AND surge_alert_id IS NOT NULL ORDER BY seq DESC LIMIT 1",
                (n.fingerprint, n.starts_at, n.receiver),
            ).fetchone()
        return row[0] if row else None

    def match_surge(
        self,
        key: str,
        starts_at: datetime | None,
        tolerance_s: float,
        severity: str | None = None,
        alert_id: str | None = None,
        filed_with: str | None = None,
    ) -> SurgeMatch:
        """The SurgeAlert a notification is about: see :func:`match_surge`."""
        return match_surge(self.firing_surges(key), starts_at, tolerance_s, severity, alert_id, filed_with)


def match_surge(
    firing: list[SurgeAlert],
    starts_at: datetime | None,
    tolerance_s: float,
    severity: str | None = None,
    alert_id: str | None = None,
    filed_with: str | None = None,
) -> SurgeMatch:
    """Pick the surge a notification is about, never simply the newest of its key: the newest may be an
    earlier surge (its headlines would be filed as this alert's evidence) when this one's SurgeAlert has not
    arrived yet. In order:

    1. ``alert_id``, carried by the alert itself: that surge.
    2. ``filed_with``, the surge a resolution's firing notification was filed with, while it stands.
    3. By time: Prometheus starts the alert while the worker's surge gauge is up, i.e. during the firing
       window or shortly after it closed, so the alert's ``startsAt`` must lie within ``tolerance_s`` of
       the window [window_start, window_end]. A standing surge before a retracted one, then the nearest,
       same severity first: when an early firing is withdrawn and the complete window next to it fires,
       the one Prometheus alert was held up by both, and the confirmed surge is what it was about. For a
       resolution whose firing was filed (``filed_with``), standing surges only: another withdrawn surge
       is no better an answer than the one the page went out with.
    4. ``filed_with`` though retracted.

    A retracted surge is an answer (status ``retracted``), not a miss: its early firing was on the worker's
    gauge long enough to page, and compliance must see which headlines that page was about, and that the
    complete window withdrew it."""
    by_id = {a.alert_id: a for a in sorted(firing, key=lambda a: (not a.retracted, a.severity == severity))}
    best = None
    if alert_id is not None:
        best = by_id.get(alert_id)
    elif filed_with in by_id and not by_id[filed_with].retracted:
        best = by_id[filed_with]
    elif starts_at is not None:
        near = [
            (bool(a.retracted), d, a.severity != severity, -a.window_end.timestamp(), i)
            for i, a in enumerate(firing)
            if (d := _distance(a, starts_at)) <= timedelta(seconds=tolerance_s)
            and not (filed_with is not None and a.retracted)
        ]
        best = firing[min(near)[-1]] if near else None
    if best is None and filed_with is not None and alert_id is None:
        best = by_id.get(filed_with)
    if best is not None:
        return SurgeMatch("retracted" if best.retracted else "matched", best)
    if firing:
        return SurgeMatch("stale", None, firing[0].alert_id)
    return SurgeMatch("missing")


def _distance(a: SurgeAlert, t: datetime) -> timedelta:
    """How far ``t`` lies outside the surge's window (zero inside it)."""
    return max(timedelta(0), a.window_start - t, t - a.window_end)


__all__ = [
    "AuditLog",
    "ChainReport",
    "Notification",
    "SurgeMatch",
    "canonical",
    "chain_hash",
    "match_surge",
    "verify_chain",
]
