"""Loopback socket helpers: a free port to bind, and whether something listens on one.

Every service binds 127.0.0.1 by default, so tests, the demo and the Kafka probe all ask these two
questions; they are answered here once.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now, for a service the caller starts soon.

    The port is drawn at random from below the kernel's ephemeral range, not with ``bind(port 0)``: a port
    from that range can be taken, between this answer and the service's own bind, by any outgoing connection
    or any ``bind(0)`` on the machine (CI once lost a demo that way: "address already in use" on a port the
    test had been handed a second before). Below the range only another explicit choice can collide.
    """
    low = _ephemeral_low()
    if low > _FIRST_PICKED + 1000:
        for _ in range(100):
            port = _pick.randrange(_FIRST_PICKED, low)
            if _bindable(host, port):
                return port
    with socket.socket() as s:  # an odd kernel range: fall back to the kernel's choice
        s.bind((host, 0))
        chosen: int = s.getsockname()[1]
        return chosen


_FIRST_PICKED = 20000  # above the well-known service ports (Prometheus 9090, Kafka 9092, ...)
_pick = random.SystemRandom()  # not the seeded ``random``: parallel test workers must not draw the same ports


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if ``host:port`` accepts a TCP connection within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
