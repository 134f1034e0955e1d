"""Alert cases: what compliance works on, folded from the audit log's rows (notifications and actions).

Why a fold and not a table of states: the audit log is append-only and hash-chained; a person's action
(acknowledge, assign, note, close) is one more row in it, never an edit. The current state of every case is
what this pure function computes from the rows in order, so the log stays the one record of who did what when.

A **case** opens with a firing notification of an alert that has no open case; further notifications of that
alert, firing again or resolved, attach to the open case instead of raising a new one, until a person closes it
with a disposition. "That alert" is the alert name and the finsent key (``dim``, ``name``) when it has one, so a
surge that escalates from warning to critical (another severity label, hence another Alertmanager fingerprint)
or is re-exported by an aggregator on another instance stays one case; an alert with no key (the pipeline's) is
its fingerprint.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from finsent.errors import CaseError
from finsent.records import PersonName

Action = Literal["acknowledge", "assign", "note", "close"]
Disposition = Literal["escalated", "no_action", "false_positive"]
CaseFilter = Literal["all", "open", "closed"]  # ``open`` also lists acknowledged cases
ACTIONS: tuple[str, ...] = get_args(Action)
DISPOSITIONS: tuple[str, ...] = get_args(Disposition)
CASE_FILTERS: tuple[str, ...] = get_args(CaseFilter)


class ActionRequest(BaseModel):
    """The body of ``POST /cases/{id}/{action}`` (the receiver's, and the dashboard's that forwards to it)."""

    model_config = ConfigDict(extra="forbid")
    who: PersonName
    assignee: PersonName | None = None
    note: str | None = Field(default=None, max_length=4000)
    disposition: Disposition | None = None


@dataclass
class Case:
    case_id: int  # the seq of the notification that opened it
    alertname: str
    fingerprint: str
    dim: str | None
    name: str | None
    severity: str | None
    opened_at: str
    alert_status: str = "firing"  # firing while any of its alert's fingerprints fires, else resolved
    notifications: int = 0
    acknowledged_by: str | None = None
    acknowledged_at: str | None = None
    assignee: str | None = None
    closed_by: str | None = None
    closed_at: str | None = None
    disposition: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    # the fingerprints of this case's alert now firing: an escalated surge's warning may resolve after its
    # critical fired, and the case still fires
    firing: set[str] = field(default_factory=set)
    # the seq of its newest firing notification: the one whose evidence headlines and links the case shows (read
    # for the cases listed only, ``AuditLog.case_details``: the fold stays over the log's narrow columns)
    latest_firing: int | None = None

    @property
    def state(self) -> str:
        if self.closed_at is not None:
            return "closed"
        return "acknowledged" if self.acknowledged_at is not None else "open"

    @property
    def key(self) -> str | None:
        if not self.dim:
            return None
        return "all" if self.dim == "all" else f"{self.dim}:{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "state": self.state,
            "alertname": self.alertname,
            "key": self.key,
            "severity": self.severity,
            "opened_at": self.opened_at,
            "alert_status": self.alert_status,
            "notifications": self.notifications,
            "acknowledged_by": self.acknowledged_by,
            "acknowledged_at": self.acknowledged_at,
            "assignee": self.assignee,
            "closed_by": self.closed_by,
            "closed_at": self.closed_at,
            "disposition": self.disposition,
            "events": self.events,
        }


def alert_identity(alertname: str, fingerprint: str, dim: str | None, name: str | None) -> tuple[str, ...]:
    """What makes two notifications the same alert for a case: the finsent key when there is one, else the
    fingerprint (see the module docstring)."""
    return (alertname, "key", dim, name or "") if dim else (alertname, "fingerprint", fingerprint)


def fold(rows: Iterable[dict[str, Any]]) -> dict[int, Case]:
    """Every case, by id, from the audit rows in seq order (notification rows have ``action`` None)."""
    cases: dict[int, Case] = {}
    open_by_alert: dict[tuple[str, ...], int] = {}
    for row in rows:
        if row.get("action") is None:
            _notification(row, cases, open_by_alert)
        else:
            case = cases.get(int(row["case_seq"]))
            if case is not None:
                apply_action(case, row)
                if case.closed_at is not None:
                    open_by_alert.pop(alert_identity(case.alertname, case.fingerprint, case.dim, case.name), None)
    return cases


def _notification(row: dict[str, Any], cases: dict[int, Case], open_by_alert: dict[tuple[str, ...], int]) -> None:
    alert = alert_identity(row["alertname"], row["fingerprint"], row.get("dim"), row.get("name"))
    case_id = open_by_alert.get(alert)
    if case_id is None:
        if row["status"] != "firing":
            return  # a resolution of an alert whose case was closed already: nothing to act on
        case_id = row["seq"]
        cases[case_id] = Case(
            case_id,
            row["alertname"],
            row["fingerprint"],
            row.get("dim"),
            row.get("name"),
            row.get("severity"),
            row["received_at"],
        )
        open_by_alert[alert] = case_id
    case = cases[case_id]
    case.notifications += 1
    if row["status"] == "firing":
        case.firing.add(row["fingerprint"])
        case.latest_firing = row["seq"]
    else:
        case.firing.discard(row["fingerprint"])
    case.alert_status = "firing" if case.firing else "resolved"
    if row.get("severity") == "critical":
        case.severity = "critical"
    case.events.append({"seq": row["seq"], "at": row["received_at"], "event": f"notification:{row['status']}"})


def apply_action(case: Case, row: dict[str, Any]) -> None:
    """One action row (``action``, ``actor``, ``received_at``, ``seq`` and its extras) applied to its case."""
    action, who, at = row["action"], row["actor"], row["received_at"]
    if action == "acknowledge" and case.acknowledged_at is None:
        case.acknowledged_by, case.acknowledged_at = who, at
    elif action == "assign":
        case.assignee = row["assignee"]
    elif action == "close":
        case.closed_by, case.closed_at, case.disposition = who, at, row["disposition"]
    event = {"seq": row["seq"], "at": at, "event": action, "who": who}
    for extra in ("assignee", "note", "disposition"):
        if row.get(extra) is not None:
            event[extra] = row[extra]
    case.events.append(event)


def check_action(
    case: Case | None, action: str, assignee: str | None, disposition: str | None, note: str | None = None
) -> None:
    """Raise CaseError unless ``action`` may be taken on ``case`` now, with these fields. The log is permanent,
    so what would be a meaningless row (an empty note, a disposition on an acknowledgement, which the fold would
    drop) is refused, not written."""
    if case is None:
        raise CaseError("unknown", "no such case")
    if action not in ACTIONS:
        raise CaseError("invalid", f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    if note is not None and not note.strip():
        raise CaseError("invalid", "the note is empty: leave it out, or write something")
    if action == "note" and note is None:
        raise CaseError("invalid", "note needs a note")
    if assignee is not None and action != "assign":
        raise CaseError("invalid", f"{action} takes no assignee (assign does)")
    if disposition is not None and action != "close":
        raise CaseError("invalid", f"{action} takes no disposition (close does)")
    if case.state == "closed":
        raise CaseError("closed", f"case {case.case_id} is closed ({case.disposition}); a new firing opens a new case")
    if action == "assign" and not assignee:
        raise CaseError("invalid", "assign needs an assignee")
    if action == "close" and disposition not in DISPOSITIONS:
        raise CaseError("invalid", f"close needs a disposition: one of {', '.join(DISPOSITIONS)}")


def case_of_notification(cases: Iterable[Case]) -> dict[int, Case]:
    """Notification seq -> the case it belongs to (a resolution of an already closed case has none)."""
    return {e["seq"]: case for case in cases for e in case.events if str(e["event"]).startswith("notification:")}


def disposition_counts(cases: Iterable[Case]) -> dict[tuple[str, str], int]:
    """Closed cases by (key kind, disposition): what the false-positive rate per key kind is computed from."""
    out: dict[tuple[str, str], int] = {}
    for case in cases:
        if case.disposition is not None:
            kind = case.dim or "none"
            out[(kind, case.disposition)] = out.get((kind, case.disposition), 0) + 1
    return out
