"""Tail Kafka topics from the beginning, forever, reconnecting after broker failures.

The receiver (evidence from ``finsent.alerts``) and the web API (views of the output topics) both keep
a local copy of small topics; this is that loop, once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from finsent.records import RecordError

log = logging.getLogger("finsent.follow")


async def follow_topics(bootstrap: str, topics: Iterable[str], handle: Callable[[str, bytes | None, int], None],
                        client_id: str, fetch_max_wait_ms: int = 100) -> None:
    """Call ``handle(topic, value, offset)`` for every record; a record ``handle`` rejects with RecordError or
    ValueError is logged and skipped. Runs until cancelled."""
    from aiokafka import AIOKafkaConsumer

    topics = list(topics)
    delay = 1.0
    while True:
        consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                    client_id=client_id, fetch_max_wait_ms=fetch_max_wait_ms)
        try:
            await consumer.start()
            delay = 1.0
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                for tp, messages in batch.items():
                    for msg in messages:
                        try:
                            handle(tp.topic, msg.value, msg.offset)
                        except (RecordError, ValueError) as err:
                            log.warning("unreadable record skipped", extra={"topic": tp.topic, "offset": msg.offset,
                                                                            "error": str(err)[:200]})
        except asyncio.CancelledError:
            raise
        except Exception as err:  # broker down or unreachable: keep serving, reconnect later
            log.warning("topics unavailable, retrying", extra={"topics": topics, "error": f"{type(err).__name__}: {err}",
                                                                "retry_in_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        finally:
            try:
                await consumer.stop()
            except Exception:  # noqa: BLE001 (stopping a consumer of a dead broker)
                pass


__all__ = ["follow_topics"]
