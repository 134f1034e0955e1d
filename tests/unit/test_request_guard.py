"""The one request guard (``finsent.http.RequestGuard``) under both services' policies: a foreign Host refused on
every request; a cross-origin request refused on every request (the receiver) or on writes only (the web API,
a page people reach by links from other sites). A bare ASGI app behind it, driven by Starlette's test client."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from finsent.http import BodyLimit, RequestGuard, allowed_hosts


async def ok(request):
    await request.body()
    return PlainTextResponse("ok")


def client(origin_on_reads: bool, refuse=None, max_bytes: int = 1024) -> TestClient:
    extra = {} if refuse is None else {"refuse": refuse}
    app = Starlette(routes=[Route("/x", ok, methods=["GET", "POST"])])
    app = BodyLimit(app, max_bytes=max_bytes, **extra)
    app = RequestGuard(app, allowed_hosts("127.0.0.1", []), "svc.allowed_hosts", origin_on_reads, **extra)
    return TestClient(app, base_url="http://127.0.0.1")


FOREIGN_ORIGIN = {"Origin": "http://evil.example"}


@pytest.mark.parametrize("origin_on_reads", [True, False], ids=["receiver", "web"])
def test_a_foreign_host_is_refused_on_reads_and_writes_naming_the_setting(origin_on_reads):
    c = client(origin_on_reads)
    for method in ("GET", "POST"):
        r = c.request(method, "/x", headers={"Host": "evil.example"})
        assert r.status_code == 403 and "svc.allowed_hosts" in r.json()["detail"], (method, r.text)
    assert c.get("/x").text == "ok"


def test_a_cross_origin_read_is_refused_only_under_the_receivers_policy():
    receiver, web = client(origin_on_reads=True), client(origin_on_reads=False)
    for headers in (FOREIGN_ORIGIN, {"Sec-Fetch-Site": "same-site"}):
        assert receiver.get("/x", headers=headers).status_code == 403
        assert web.get("/x", headers=headers).status_code == 200  # a link from Grafana opens the dashboard
        assert web.post("/x", headers=headers).status_code == 403  # but a write from there is refused
    assert web.post("/x", headers={"Origin": "http://127.0.0.1"}).status_code == 200  # the page's own write


def test_a_service_words_the_refusals_of_both_middlewares_its_own_way():
    """The receiver answers ``{"error": ...}`` and counts each refusal by reason: the guard's and the body limit's
    go through the same ``refuse``, and the body limit's close the connection."""
    seen: list[tuple[int, str]] = []

    def refuse(status: int, reason: str, message: str):
        seen.append((status, reason))
        return JSONResponse({"error": message}, status_code=status)

    c = client(origin_on_reads=True, refuse=refuse, max_bytes=10)
    assert c.get("/x", headers={"Host": "evil.example"}).json()["error"].startswith("Host 'evil.example'")
    assert c.get("/x", headers=FOREIGN_ORIGIN).status_code == 403
    big = c.post("/x", content=b"x" * 11)
    assert big.status_code == 413 and big.headers["connection"] == "close" and "10 bytes" in big.json()["error"]
    bad = c.post("/x", content=b"{}", headers={"content-length": "2x"})
    assert bad.status_code == 400 and bad.headers["connection"] == "close" and "Content-Length" in bad.json()["error"]
    assert seen == [(403, "bad_host"), (403, "cross_origin"), (413, "too_large"), (400, "bad_length")]
