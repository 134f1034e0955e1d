"""Where accepted items go: Kafka (``finsent.news.raw``) or a JSON-lines file (``--output``).

A sink returns the items it has *durably* accepted (broker ack with acks=all, or file written and
fsynced). The poller marks only those as seen and archives only those, so an outage delays items
but never loses or skips them.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Protocol

from finsent.errors import ConfigError
from finsent.files import append_lines
from finsent.kafka import KafkaLike, as_kafka, bootstrap_reachable, producer
from finsent.records import NewsItem

log = logging.getLogger("finsent.ingest.sinks")


class Sink(Protocol):
    async def send(self, items: list[NewsItem]) -> list[NewsItem]: ...

    async def close(self) -> None: ...


class JsonlSink:
    """``--output``: a failed write (full disk) acknowledges nothing and leaves the file as it was, as a dead broker
    does for ``KafkaSink``: the items stay pending and are written on a later poll, whole."""

    def __init__(self, path: Path):
        if path.exists() and not path.is_file():  # /dev/stdout, /dev/null, a FIFO: no fsync, no cutting back
            raise ConfigError(
                f"--output {path}: not a regular file; items count as sent only once fsynced to a file "
                "(write to a file and follow it: tail -f)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        append_lines(path, b"")  # creates it, and says now (one line at the CLI) if it cannot be written
        self.path = path

    async def send(self, items: list[NewsItem]) -> list[NewsItem]:
        if not items:
            return items
        try:
            await asyncio.to_thread(append_lines, self.path, b"".join(item.to_json() + b"\n" for item in items))
        except OSError as err:
            log.warning(
                "output file write failed", extra={"path": str(self.path), "error": str(err), "items": len(items)}
            )
            return []
        return items

    async def close(self) -> None:
        pass


class KafkaSink:
    """kafka-python producer, acks=all, keyed by item id; a dead broker means nothing is acked."""

    def __init__(self, kafka: KafkaLike, topic: str, role: str = "ingest", timeout_s: float = 10.0):
        self.kafka = as_kafka(kafka)
        self.bootstrap = self.kafka.bootstrap
        self.topic = topic
        self.role = role
        self.timeout_s = timeout_s
        self._producer = None

    def _ensure(self):
        if self._producer is None:
            if not bootstrap_reachable(self.bootstrap):
                raise ConnectionError(f"no broker at {self.bootstrap}")
            self._producer = producer(
                self.kafka,
                self.role,
                retries=5,
                linger_ms=5,
                max_block_ms=int(self.timeout_s * 1000),
                request_timeout_ms=int(self.timeout_s * 1000),
            )
        return self._producer

    def _send_blocking(self, items: list[NewsItem]) -> list[NewsItem]:
        try:
            producer = self._ensure()
            futures = [(item, producer.send(self.topic, key=item.id.encode(), value=item.to_json())) for item in items]
            producer.flush(timeout=self.timeout_s)
        except Exception as err:  # noqa: BLE001 - broker down, metadata timeout, …: nothing acked, try again later
            log.warning("publish failed", extra={"error": f"{type(err).__name__}: {err}", "items": len(items)})
            self._reset()
            return []
        acked = []
        for item, future in futures:
            try:
                future.get(timeout=0)
                acked.append(item)
            except Exception as err:  # noqa: BLE001 - a failed future is this item's, whatever it raised
                log.warning("item not acknowledged", extra={"item": item.id, "error": f"{type(err).__name__}: {err}"})
        if len(acked) < len(items):
            self._reset()
        return acked

    def _reset(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=1)
            except Exception:  # noqa: BLE001 - closing a producer of a dead broker
                pass
            self._producer = None

    async def send(self, items: list[NewsItem]) -> list[NewsItem]:
        if not items:
            return []
        return await asyncio.to_thread(self._send_blocking, items)

    async def close(self) -> None:
        await asyncio.to_thread(self._reset)
