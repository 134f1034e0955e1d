"""The receiver's state, owned in one object: the audit log, the metrics, who may write and read, and the follower
of ``finsent.alerts`` that fills the log's store of SurgeAlerts. Routes (``finsent.alerts.receiver_routes``) take
it from the app; ``finsent.alerts.receiver.build_app`` makes it, and its lifespan starts the follower and closes
the log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from finsent.alerts.audit import AuditLog
from finsent.alerts.cases import DISPOSITIONS, disposition_counts
from finsent.http import bearer_ok
from finsent.kafka import FollowSkippedCollector, follow_topics
from finsent.records import SurgeAlert
from finsent.settings import Receiver, Settings

log = logging.getLogger("finsent.alerts.receiver")


class CaseCollector:
    """Alert cases by state, and closed cases by key kind and disposition, computed at scrape time from the
    audit log (the client_python ``Collector`` pattern): the log is the one record, so there is no second
    count to keep in step, and a restart shows the right figures at once. The false-positive rate per key
    kind, what surge thresholds are tuned on, is ``false_positive`` over all dispositions of that kind."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    def collect(self) -> Iterator[GaugeMetricFamily]:
        cases = self.audit.cases()
        states = GaugeMetricFamily("finsent_receiver_cases", "Alert cases by state", labels=["state"])
        by_state = {"open": 0, "acknowledged": 0, "closed": 0}
        for case in cases.values():
            by_state[case.state] += 1
        for state, n in by_state.items():
            states.add_metric([state], n)
        yield states
        closed = GaugeMetricFamily(
            "finsent_receiver_case_dispositions",
            "Closed alert cases by key kind (dim: all, topic, ticker, none) and disposition",
            labels=["dim", "disposition"],
        )
        # every disposition of each key kind with a closed case, zeros included: a kind none of whose cases was a
        # false positive must show a false-positive share of 0, not drop out of the ratio's numerator
        counts = disposition_counts(cases.values())
        for dim in sorted({dim for dim, _ in counts}):
            for disposition in DISPOSITIONS:
                closed.add_metric([dim, disposition], counts.get((dim, disposition), 0))
        yield closed


class ReceiverMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.notifications = Counter(
            "finsent_receiver_notifications_total", "Alerts in accepted webhooks", ["status", "outcome"], registry=r
        )
        self.rejected = Counter("finsent_receiver_rejected_total", "Requests refused", ["reason"], registry=r)
        self.surges = Counter("finsent_receiver_surges_total", "SurgeAlerts read from finsent.alerts", registry=r)
        self.evidence = Counter(
            "finsent_receiver_evidence_total",
            "Surge notifications by how their SurgeAlert was found",
            ["match"],
            registry=r,
        )
        self.actions = Counter(
            "finsent_receiver_case_actions_total", "Compliance actions recorded", ["action"], registry=r
        )
        self.evidence_wait = Histogram(
            "finsent_receiver_evidence_wait_seconds",
            "Time a surge notification waited for its SurgeAlert",
            registry=r,
            buckets=(0, 0.1, 0.5, 1, 2, 5, 10),
        )


def evidence_tolerance(settings: Settings) -> float:
    """How far an alert's startsAt may lie from its surge's window. It must stay below the least gap between
    two surges of one key (the detector's cooldown), or a late SurgeAlert's predecessor would pass for it;
    and above the rule's delay (scrape, evaluation, ``for:``) plus the watermark a closed window waits."""
    if settings.receiver.evidence_tolerance_s is not None:
        return settings.receiver.evidence_tolerance_s
    return max(60.0, min(600.0, float(settings.surge.cooldown_s)))


@dataclass
class ReceiverState:
    settings: Settings
    audit: AuditLog
    metrics: ReceiverMetrics
    follow_alerts: bool = True  # False: tests that file SurgeAlerts into the log themselves

    @classmethod
    def open(cls, settings: Settings, follow_alerts: bool = True) -> ReceiverState:
        """The audit log (created when missing) and the metrics over it."""
        audit = AuditLog(settings.audit_db)
        metrics = ReceiverMetrics()
        metrics.registry.register(CaseCollector(audit))
        metrics.registry.register(FollowSkippedCollector("receiver"))
        return cls(settings, audit, metrics, follow_alerts)

    @property
    def cfg(self) -> Receiver:
        return self.settings.receiver

    @property
    def tolerance_s(self) -> float:
        return evidence_tolerance(self.settings)

    # -- answers ----------------------------------------------------------------------------------------------
    def refused(self, status: int, reason: str, message: str, **extra: Any) -> JSONResponse:
        """The receiver's answer to a request it refuses (``{"error": ...}``), counted by reason; the HTTP kit's
        middlewares (``finsent.http``: RequestGuard, BodyLimit) answer with it and log the refusal themselves."""
        self.metrics.rejected.labels(reason).inc()
        return JSONResponse({"error": message, **extra}, status_code=status)

    def error(self, status: int, reason: str, message: str, **extra: Any) -> JSONResponse:
        """``refused``, logged: for the refusals the routes decide themselves."""
        log.warning("request rejected", extra={"reason": reason, "detail": message[:300]})
        return self.refused(status, reason, message, **extra)

    def unauthorized_write(self, request: Request) -> Response | None:
        """401 when FINSENT_RECEIVER__TOKEN is set and the request does not carry it (webhook, case actions)."""
        return self._unauthorized(request, self.cfg.token, "unauthorized", "missing or wrong bearer token")

    def unauthorized_read(self, request: Request) -> Response | None:
        """401 when reads need FINSENT_RECEIVER__READ_TOKEN and the request does not carry it."""
        message = "missing or wrong bearer token (FINSENT_RECEIVER__READ_TOKEN)"
        return self._unauthorized(request, self.cfg.read_token, "unauthorized_read", message)

    def _unauthorized(self, request: Request, token: SecretStr | None, reason: str, message: str) -> Response | None:
        if token is None or bearer_ok(request.headers.get("authorization"), token.get_secret_value().encode()):
            return None
        return self.error(401, reason, message)

    # -- life -------------------------------------------------------------------------------------------------
    async def follow(self) -> None:
        """Tail finsent.alerts into the store (from the beginning: the store ignores what it has). Each fetched
        batch is written in one transaction in a worker thread: at start the whole topic is replayed, and a
        write per record on the event loop would hold up the webhooks arriving meanwhile."""
        pending: list[SurgeAlert] = []

        def handle(topic: str, value: bytes | None, offset: int) -> None:
            pending.append(SurgeAlert.from_json(value or b""))

        async def store() -> None:
            if pending:
                batch = pending.copy()
                pending.clear()
                await asyncio.to_thread(self.audit.add_surges, batch, datetime.now(UTC))
                self.metrics.surges.inc(len(batch))

        s = self.settings
        await follow_topics(
            s.kafka, [s.topics.alerts.name], handle, "receiver", s.stream.fetch_max_wait_ms, after_batch=store
        )

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        task = asyncio.create_task(self.follow()) if self.follow_alerts else None
        try:
            yield
        finally:
            if task:
                task.cancel()
            self.audit.close()


def receiver_state(request: Request) -> ReceiverState:
    state: ReceiverState = request.app.state.receiver
    return state


__all__ = ["CaseCollector", "ReceiverMetrics", "ReceiverState", "evidence_tolerance", "receiver_state"]
