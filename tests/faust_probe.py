"""A minimal Faust app used by test_broker.py: consume N values from a topic into a file, then exit.

It runs as its own process (as a real worker would) against the embedded broker, with the lowered
group timeouts Tansu needs (joins otherwise wait ~30 s).
"""

import os
import sys
from pathlib import Path

import faust

bootstrap, topic_name, out_path, expected = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
app = faust.App(
    f"probe-{os.getpid()}",
    broker=f"kafka://{bootstrap}",
    value_serializer="raw",
    web_enabled=False,
    topic_disable_leader=True,
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=6,
    broker_heartbeat_interval=1,
    broker_rebalance_timeout=6,
    store="memory://",
    datadir=str(out_path.parent / "faust-data"),
)
topic = app.topic(topic_name, value_type=bytes, internal=False)
seen: list[bytes] = []


@app.agent(topic)
async def collect(stream):
    async for value in stream:
        seen.append(value)
        if len(seen) >= expected:
            out_path.write_bytes(b"\n".join(seen))
            os._exit(0)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()
