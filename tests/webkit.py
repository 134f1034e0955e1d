"""A real uvicorn server on 127.0.0.1 in a background thread, for tests that need real HTTP (SSE, schemathesis)."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager

import httpx
import uvicorn

from finsent.net import free_port


class ThreadServer:
    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=3)
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    def call(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the server's event loop (the views are not thread-safe, like in production)."""
        self.loop.call_soon_threadsafe(fn, *args)


@contextmanager
def serve_in_thread(app, ready_path: str = "/readyz", timeout_s: float = 60):
    srv = ThreadServer(app)
    srv.thread.start()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(srv.url + ready_path, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"server not ready in {timeout_s:.0f} s"
        time.sleep(0.1)
    try:
        yield srv
    finally:
        srv.server.should_exit = True
        srv.thread.join(timeout=10)
