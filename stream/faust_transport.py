"""Faust's aiokafka transport with one knob Faust does not expose: the consumer's fetch long-poll wait.

Faust hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer. Apache Kafka answers a waiting fetch
as soon as data arrives, so the value only bounds idle polling there; Tansu (the embedded broker) holds
the fetch for the whole wait, which measured as 400 ms median / 730 ms max delivery latency at 1500 ms
against 7 ms / 28 ms at 100 ms (aiokafka consumer, 40 records at 20/s). So the worker sets it from
``stream.fetch_max_wait_ms``.

It also takes ``before_commit``: a blocking check run (in a thread) before every offset commit. The worker
uses it to refuse committing positions of one log into another: Tansu keeps its log in memory, so a
restarted broker has new, empty topics, and a worker still holding positions of the old log would
otherwise commit them there and make its successor skip the new log's first records. The check returns
False to skip this commit (Faust commits again on its next interval) and may end the process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from faust.transport.drivers import aiokafka as driver

from finsent.osthreads import name_os_thread


def transport_class(fetch_max_wait_ms: int, before_commit: Callable[[], bool] | None = None) -> type[driver.Transport]:
    class ConsumerThread(driver.AIOKafkaConsumerThread):
        async def on_thread_started(self) -> None:
            name_os_thread("finsent-consume")  # so a CPU profile can tell Faust's fetching from the rest
            await super().on_thread_started()

        def _create_worker_consumer(self, transport):
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_max_wait_ms  # read when the consumer starts its fetcher
            return consumer

        async def _commit(self, offsets):
            if before_commit is not None and not await asyncio.to_thread(before_commit):
                return False
            return await super()._commit(offsets)

    class Consumer(driver.Consumer):
        def _new_consumer_thread(self):
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(driver.Transport):
        pass

    Transport.Consumer = Consumer
    return Transport


__all__ = ["transport_class"]
