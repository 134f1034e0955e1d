"""Faust's aiokafka transport with one knob Faust does not expose: the consumer's fetch long-poll wait.

Faust hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer. Apache Kafka answers a waiting fetch
as soon as data arrives, so the value only bounds idle polling there; Tansu (the embedded broker) holds
the fetch for the whole wait, which measured as 400 ms median / 730 ms max delivery latency at 1500 ms
against 7 ms / 28 ms at 100 ms (aiokafka consumer, 40 records at 20/s). So the worker sets it from
``stream.fetch_max_wait_ms``.
"""

from __future__ import annotations

from faust.transport.drivers import aiokafka as driver


def transport_class(fetch_max_wait_ms: int) -> type[driver.Transport]:
    class ConsumerThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport):
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_max_wait_ms  # read when the consumer starts its fetcher
            return consumer

    class Consumer(driver.Consumer):
        def _new_consumer_thread(self):
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(driver.Transport):
        pass

    Transport.Consumer = Consumer
    return Transport


__all__ = ["transport_class"]
