"""The HTTP API with the real app and the shipped model (starlette's test client runs the app in-process)."""

from datetime import UTC, datetime, timedelta

import pytest
from conftest import make_settings
from factories import news_item, scored_item, surge_alert, window_stat
from starlette.testclient import TestClient

from finsent.web.api import build_api
from finsent.web.views import StreamViews

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


VIEWS = StreamViews()


def scored(i, title, sentiment="negative", topic="Energy | Oil", tickers=("XOM",), minutes=0):
    item = news_item(f"n{i}", title, at=T0 + timedelta(minutes=minutes), tickers=tickers)
    return scored_item(
        item,
        sentiment,
        topic,
        sentiment_confidence=0.8,
        topic_confidence=None,
        model="finsent-minilm@test",
        latency_s=1.0,
    )


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from finsent.model import Classifier

    settings = make_settings(
        tmp_path_factory.mktemp("api"),
        web={"max_batch": 8, "max_text_chars": 300, "max_body_bytes": 4096},
        kafka={"bootstrap": "127.0.0.1:1"},
    )  # no broker: feedback is stored, not published
    VIEWS.add_item(scored(1, "Oil plunges as OPEC talks collapse", minutes=1))
    VIEWS.add_item(
        scored(2, "Apple beats estimates <script>alert(1)</script>", "positive", "Earnings", ("AAPL",), minutes=2)
    )
    VIEWS.add_item(scored(3, "Exxon shares steady", "neutral", tickers=("XOM",), minutes=3))
    for m in range(3):
        VIEWS.add_window(
            window_stat("topic:Energy | Oil", at=T0 + timedelta(minutes=m), count=10, negative=6, mean_score=-0.5)
        )
    with TestClient(build_api(settings, Classifier.load, VIEWS, follow_topics=False), base_url="http://127.0.0.1") as c:
        c.settings = settings
        yield c


def test_classify_returns_topic_and_sentiment_with_probabilities_and_the_model_version(client):
    r = client.post(
        "/classify", json={"texts": ["Oil prices plunge as OPEC talks collapse", "", "Apple beats earnings estimates"]}
    )
    assert r.status_code == 200
    body = r.json()
    assert body["model"].startswith("finsent-minilm@") and len(body["results"]) == 3
    oil, empty, apple = body["results"]
    assert oil["sentiment"] == "negative" and abs(sum(oil["sentiment_probs"].values()) - 1) < 1e-4
    assert len(oil["topic_probs"]) == 20 and oil["topic"] in oil["topic_probs"]
    assert empty["flag"] == "empty" and apple["sentiment"] == "positive"


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"texts": []}, "texts"),
        ({"texts": ["x"] * 9}, "texts"),  # over max_batch
        ({"texts": ["x" * 301]}, "texts.0"),  # over max_text_chars
        ({"texts": "not a list"}, "texts"),
        ({}, "texts"),
    ],
)
def test_invalid_requests_get_422_naming_the_field(client, payload, field):
    r = client.post("/classify", json=payload)
    assert r.status_code == 422
    locs = [".".join(str(p) for p in e["loc"][1:]) for e in r.json()["detail"]]
    assert field in locs


def test_an_oversized_body_gets_413_before_any_work(client):
    r = client.post(
        "/classify", content=b'{"texts": ["' + b"x" * 5000 + b'"]}', headers={"content-type": "application/json"}
    )
    assert r.status_code == 413


def test_health_readiness_and_openapi(client):
    assert client.get("/healthz").json() == {"ok": True}
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["model"].startswith("finsent-minilm@")
    schema = client.get("/openapi.json").json()
    assert "/classify" in schema["paths"] and "ClassifyResponse" in schema["components"]["schemas"]


def test_items_filter_paginate_and_keep_markup_as_text(client):
    all_items = client.get("/items").json()
    assert all_items["total"] == 3 and [i["item"]["id"] for i in all_items["items"]] == ["n3", "n2", "n1"]
    assert [i["item"]["id"] for i in client.get("/items", params={"ticker": "xom"}).json()["items"]] == ["n3", "n1"]
    assert [i["item"]["id"] for i in client.get("/items", params={"sentiment": "negative"}).json()["items"]] == ["n1"]
    assert client.get("/items", params={"topic": "Earnings", "q": "apple"}).json()["total"] == 1
    page = client.get("/items", params={"limit": 1, "offset": 1}).json()
    assert page["total"] == 3 and [i["item"]["id"] for i in page["items"]] == ["n2"]
    since = (T0 + timedelta(minutes=2)).isoformat()
    assert client.get("/items", params={"from": since}).json()["total"] == 2
    assert (
        "<script>" in client.get("/items", params={"q": "apple"}).json()["items"][0]["item"]["title"]
    )  # data, escaped by the UI
    assert client.get("/items", params={"topic": "Nonsense"}).status_code == 422
    assert client.get("/items", params={"from": "2026-11-22T12:00:00"}).status_code == 422  # no zone
    assert client.get("/items", params={"limit": 501}).status_code == 422


def test_windows_series_per_width(client):
    body = client.get("/windows", params={"key": "topic:Energy | Oil"}).json()
    assert list(body["series"]) == ["300"] and len(body["series"]["300"]) == 3
    assert client.get("/windows", params={"key": "ticker:NONE"}).json()["series"] == {}


def test_feedback_is_stored_for_fine_tuning_and_counted(client):
    r = client.post("/feedback", json={"item_id": "n3", "sentiment": "negative", "who": "analyst@desk"})
    assert r.status_code == 201 and r.json() == {"stored": True, "published": False}  # no broker in this test
    from finsent.model.feedback_store import read_store

    (fb,), bad = read_store(client.settings.paths.feedback_store)
    assert (fb.item_id, fb.sentiment, fb.who, fb.model, bad) == (
        "n3",
        "negative",
        "analyst@desk",
        "finsent-minilm@test",
        0,
    )
    assert (fb.model_topic, fb.model_sentiment) == ("Energy | Oil", "neutral")  # what the model said, kept with it
    stats = client.get("/feedback/stats").json()
    assert stats["corrections"] == 1 and stats["sentiment"] == {
        "corrections": 1,
        "compared": 1,
        "model_agreed": 0,
        "corrected_by_model_label": {"neutral": 1},
    }
    VIEWS.items.pop("n3")  # the item leaves the live view (or the API restarts): agreement still counts
    try:
        assert client.get("/feedback/stats").json()["sentiment"]["model_agreed"] == 0
    finally:
        VIEWS.add_item(scored(3, "Exxon shares steady", "neutral", tickers=("XOM",), minutes=3))
    assert client.post("/feedback", json={"item_id": "nope", "sentiment": "negative", "who": "a"}).status_code == 404
    assert client.post("/feedback", json={"item_id": "n1", "sentiment": "bearish", "who": "a"}).status_code == 422
    assert client.post("/feedback", json={"item_id": "n1", "who": "a"}).status_code == 422  # corrects nothing


def test_views_follow_the_real_output_topics(broker, tmp_path):
    """The background follower reads finsent.news.scored/windows/alerts from the broker into the API."""
    import time

    from streamkit import publish

    settings = make_settings(
        tmp_path,
        kafka={"bootstrap": broker},
        topics={t: {"name": f"api-{tmp_path.name}.{t}"} for t in ("scored", "windows", "alerts")},
    )
    publish(
        broker,
        settings.topics.scored.name,
        [(b"n9", scored(9, "Gold rallies on safe-haven demand", "positive").to_json())],
    )
    with TestClient(build_api(settings, lambda: None, follow_topics=True), base_url="http://127.0.0.1") as c:
        deadline = time.monotonic() + 20
        while c.get("/items").json()["total"] == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [i["item"]["id"] for i in c.get("/items").json()["items"]] == ["n9"]


def test_the_dashboard_is_served_from_this_process_with_a_strict_csp_and_no_cdn(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert 'src="/static/app.js"' in page.text and "<script>" not in page.text  # no inline script
    for name in ("app.js", "app.css"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and len(r.text) > 500
    import re

    from finsent.web.api import STATIC_DIR

    for f in STATIC_DIR.iterdir():  # nothing loaded from elsewhere: the dashboard works offline
        text = f.read_text()
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), f.name
        assert not re.search(r"""(import\s*\(|fetch\()\s*["'`]https?:""", text), f.name
    assert client.get("/static/../api.py").status_code == 404
    assert client.get("/dashboard/config").json()["surge_window_s"] == client.settings.surge.window_s


def test_window_keys_list_every_series_busiest_first(client):
    keys = client.get("/windows/keys").json()["keys"]
    assert keys == [
        {
            "key": "topic:Energy | Oil",
            "widths": [300],
            "latest_count": 10,
            "latest_end": (T0 + timedelta(minutes=7)).isoformat().replace("+00:00", "Z"),
        }
    ] or [(k["key"], k["widths"], k["latest_count"]) for k in keys] == [("topic:Energy | Oil", [300], 10)]


def test_feed_numbers_entries_and_resumes_after_a_cursor():
    views = StreamViews(max_feed=5)
    assert views.feed_after(0) == []
    for i in range(3):
        views.add_item(scored(100 + i, f"headline {i}"))
    assert [seq for seq, _, _ in views.feed_after(0)] == [1, 2, 3]  # a new client gets the backlog
    assert [seq for seq, _, _ in views.feed_after(2)] == [3]
    assert views.feed_after(3) == []
    for i in range(4):
        views.add_item(scored(200 + i, f"more {i}"))
    assert [seq for seq, _, _ in views.feed_after(1)] == [3, 4, 5, 6, 7]  # fell behind the bounded feed: newest kept
    assert [seq for seq, _, _ in views.feed_after(99)] == [3, 4, 5, 6, 7]  # cursor from before a server restart
    assert [s.item.id for _, _, s in views.feed_after(0, backlog=2)] == ["n202", "n203"]


def _sse_events(response, n: int, timeout_s: float = 15) -> list[dict]:
    import json
    import time

    events, current, deadline = [], {}, time.monotonic() + timeout_s
    for line in response.iter_lines():
        if line.startswith("id: "):
            current["id"] = int(line[4:])
        elif line.startswith("event: "):
            current["event"] = line[7:]
        elif line.startswith("data: "):
            current["data"] = json.loads(line[6:])
        elif line == "" and "event" in current:
            events.append(current)
            current = {}
            if len(events) == n:
                return events
        assert time.monotonic() < deadline, f"only {len(events)} events in {timeout_s} s"
    return events


def test_live_events_push_new_items_and_alerts_and_resume_after_last_event_id(tmp_path):
    """Real HTTP (uvicorn on 127.0.0.1): the dashboard's EventSource gets the backlog, then new entries as they
    arrive, and a reconnect with Last-Event-ID continues without repeats."""
    import httpx
    from webkit import serve_in_thread

    views = StreamViews()
    views.add_item(scored(300, "Backlog headline"))
    settings = make_settings(tmp_path, kafka={"bootstrap": "127.0.0.1:1"})
    with serve_in_thread(build_api(settings, lambda: _NoModel(), views, follow_topics=False)) as srv:
        with httpx.stream("GET", srv.url + "/events", timeout=20) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            srv.call(views.add_item, scored(301, "Live <b>headline</b>"))
            alert = surge_alert("topic:Energy | Oil", at=T0, alert_id="topic:Energy | Oil@1", raised_at=T0, evidence=())
            srv.call(views.add_alert, alert)
            got = _sse_events(r, 3)
        assert [(e["id"], e["event"]) for e in got] == [(1, "item"), (2, "item"), (3, "alert")]
        assert got[1]["data"]["item"]["title"] == "Live <b>headline</b>" and got[2]["data"]["zscore"] == 4.2
        srv.call(views.add_item, scored(302, "After the reconnect"))
        with httpx.stream("GET", srv.url + "/events", headers={"Last-Event-ID": "3"}, timeout=20) as r:
            (resumed,) = _sse_events(r, 1)
        assert resumed["id"] == 4 and resumed["data"]["item"]["id"] == "n302"
        with httpx.stream("GET", srv.url + "/events", params={"after": 4}, timeout=20) as r:
            srv.call(views.add_item, scored(303, "Only this one"))
            (only,) = _sse_events(r, 1)
        assert only["id"] == 5


class _NoModel:
    version = "none@test"


def test_metrics_name_the_model_backend_and_graph_the_api_serves(client):
    """What /classify serves, as the worker's ``finsent_worker_model_info`` names it: a benchmark of the API checks
    its server scores with the backend its bare reference ran."""
    clf = client.app.state.api.classifier
    (line,) = [m for m in client.get("/metrics").text.splitlines() if m.startswith("finsent_api_model_info{")]
    labels, value = line.removeprefix("finsent_api_model_info{").rsplit("} ", 1)
    b = clf.backend
    want = {"model": clf.version, "backend": b.name, "recipe": b.recipe, "accepted": str(b.accepted).lower()}
    assert dict(pair.split("=", 1) for pair in labels.split(",")) == {k: f'"{v}"' for k, v in want.items()}
    assert float(value) == 1 and b.recipe.startswith(("fp", "int8"))


def test_metrics_count_answers_per_route_and_status_and_classified_texts(client):
    def value(name, **labels):
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in client.get("/metrics").text.splitlines():
            if line.startswith(f"{name}{{{want}}}" if labels else f"{name} "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = (
        value("finsent_api_requests_total", route="/items", status="422"),
        value("finsent_api_classified_texts_total"),
    )
    assert client.get("/items", params={"topic": "Nonsense"}).status_code == 422
    assert client.post("/classify", json={"texts": ["Oil slumps", "Gold rallies"]}).status_code == 200
    after = (
        value("finsent_api_requests_total", route="/items", status="422"),
        value("finsent_api_classified_texts_total"),
    )
    assert after[0] == before[0] + 1 and after[1] == before[1] + 2
    assert "finsent_api_request_seconds_bucket" in client.get("/metrics").text
    # a scrape is labelled as the /metrics route (the dashboards leave it out by that label), not as "other"
    scrapes, others = (value("finsent_api_requests_total", route=r, status="200") for r in ("/metrics", "other"))
    assert value("finsent_api_requests_total", route="/metrics", status="200") == scrapes + 2  # both reads above
    assert value("finsent_api_requests_total", route="other", status="200") == others
    assert client.post("/metrics").status_code == 405


# ---------------------------------------------------------------------------------------------- overload bounds


def test_an_open_event_stream_is_measured_at_its_start_with_the_security_headers(tmp_path):
    """Real HTTP. An ``/events`` stream is counted when it opens, with the security headers, not when it closes
    hours later (the middleware observes the answer's start)."""
    import httpx
    from webkit import serve_in_thread

    settings = make_settings(tmp_path, kafka={"bootstrap": "127.0.0.1:1"})
    app = build_api(settings, lambda: _NoModel(), StreamViews(), follow_topics=False)
    with serve_in_thread(app) as srv, httpx.stream("GET", srv.url + "/events", timeout=20) as stream:
        assert stream.status_code == 200 and "script-src 'self'" in stream.headers["content-security-policy"]
        assert _metric(srv.url, "finsent_api_request_seconds_count", route="/events") == 1
        assert _metric(srv.url, "finsent_api_requests_total", route="/events", status="200") == 1


def _metric(base_url: str, name: str, **labels) -> float:
    import httpx

    want = f"{name}{{{','.join(f'{k}={chr(34)}{v}{chr(34)}' for k, v in labels.items())}}}" if labels else name
    for line in httpx.get(base_url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(want + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_chunked_upload_over_the_limit_is_cut_off_with_413_long_before_it_ends(tmp_path):
    """Real HTTP: a generator body has no Content-Length (chunked). 50 MB are offered in 64 KiB chunks to a
    4 KiB limit; the server counts the bytes as they arrive and answers 413 after a few socket buffers'
    worth, never holding the whole body (the old check, on Content-Length only, read and parsed all of it)."""
    import httpx
    from webkit import serve_in_thread

    settings = make_settings(tmp_path, web={"max_body_bytes": 4096}, kafka={"bootstrap": "127.0.0.1:1"})
    total, offered = 50 * 1024 * 1024, []

    def body():
        chunk = b"x" * 65536
        for _ in range(total // len(chunk)):
            offered.append(len(chunk))
            yield chunk

    with serve_in_thread(build_api(settings, lambda: _NoModel(), StreamViews(), follow_topics=False)) as srv:
        try:
            r = httpx.post(
                srv.url + "/classify", content=body(), headers={"content-type": "application/json"}, timeout=20
            )
            assert r.status_code == 413 and r.headers["connection"] == "close", r.text
        except httpx.TransportError:  # the server may close before the client reads the answer: also a refusal
            pass
        assert sum(offered) < total / 4, f"{sum(offered)} of {total} bytes sent before the server stopped reading"
        assert _metric(srv.url, "finsent_api_requests_total", route="/classify", status="413") == 1


def test_a_content_length_that_is_not_a_number_is_400(client):
    r = client.post(
        "/classify", content=b'{"texts": ["x"]}', headers={"content-type": "application/json", "content-length": "16x"}
    )
    assert r.status_code == 400 and "content-security-policy" in r.headers


class _SlowModel:
    """Stands in for the classifier: each predict waits until the test lets it go (``release``)."""

    version = "slow@test"

    def __init__(self):
        import threading

        self.release = threading.Event()

    def predict(self, texts):
        from types import SimpleNamespace

        assert self.release.wait(30)
        return [
            SimpleNamespace(topic="Energy | Oil", topic_probs={}, sentiment="neutral", sentiment_probs={}, flag=None)
            for _ in texts
        ]


def test_classify_waiters_are_bounded_and_the_next_gets_503_with_retry_after(tmp_path):
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from webkit import serve_in_thread

    model = _SlowModel()
    settings = make_settings(
        tmp_path, web={"max_classify_waiting": 2, "busy_retry_after_s": 7}, kafka={"bootstrap": "127.0.0.1:1"}
    )
    with (
        serve_in_thread(build_api(settings, lambda: model, StreamViews(), follow_topics=False)) as srv,
        ThreadPoolExecutor(2) as pool,
    ):
        post = lambda: httpx.post(srv.url + "/classify", json={"texts": ["Oil slumps"]}, timeout=30)  # noqa: E731
        held = [pool.submit(post) for _ in range(2)]  # one in the model, one waiting for it
        deadline = time.monotonic() + 10
        while _metric(srv.url, "finsent_api_classify_waiting") < 2:
            assert time.monotonic() < deadline, "the two requests never got in"
            time.sleep(0.05)
        refused = httpx.post(srv.url + "/classify", json={"texts": ["Gold rallies"]}, timeout=5)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "7", refused.text
        assert _metric(srv.url, "finsent_api_busy_refusals_total", route="/classify") == 1
        model.release.set()
        assert [f.result().status_code for f in held] == [200, 200]
        assert _metric(srv.url, "finsent_api_classify_waiting") == 0
        assert httpx.post(srv.url + "/classify", json={"texts": ["Gold rallies"]}, timeout=5).status_code == 200


def test_event_streams_are_bounded_and_stream_n_plus_one_gets_503(tmp_path):
    """Real HTTP: N open /events streams hold every slot; the next one is refused with 503 + Retry-After and
    counted; when a dashboard goes away its slot is free again."""
    import time
    from contextlib import ExitStack

    import httpx
    from webkit import serve_in_thread

    n = 3
    settings = make_settings(tmp_path, web={"max_event_streams": n}, kafka={"bootstrap": "127.0.0.1:1"})
    with (
        serve_in_thread(build_api(settings, lambda: _NoModel(), StreamViews(), follow_topics=False)) as srv,
        ExitStack() as streams,
    ):
        opened = []  # each response with its line iterator: a dropped iterator closes its connection
        for _ in range(n):
            r = streams.enter_context(httpx.stream("GET", srv.url + "/events", timeout=20))
            lines = r.iter_lines()
            assert r.status_code == 200 and next(lines) == "retry: 2000"
            opened.append((r, lines))
        assert _metric(srv.url, "finsent_api_live_clients") == n
        refused = httpx.get(srv.url + "/events", timeout=5)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5", refused.text
        assert _metric(srv.url, "finsent_api_busy_refusals_total", route="/events") == 1
        opened[0][0].close()  # a dashboard goes away: its stream ends on the server's next disconnect check
        deadline = time.monotonic() + 10
        while _metric(srv.url, "finsent_api_live_clients") > n - 1:
            assert time.monotonic() < deadline, "the closed stream's slot was never given back"
            time.sleep(0.05)
        with httpx.stream("GET", srv.url + "/events", timeout=20) as again:
            assert again.status_code == 200


# ---------------------------------------------------------------------------------------------- dynamic batching


def _histogram(base_url: str, name: str) -> dict[str, float]:
    """A histogram's buckets by ``le`` plus its ``count`` and ``sum``, read from /metrics."""
    import httpx

    out = {}
    for line in httpx.get(base_url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(f'{name}_bucket{{le="'):
            out[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith((f"{name}_count ", f"{name}_sum ")):
            out[line.split(" ")[0][len(name) + 1 :]] = float(line.rsplit(" ", 1)[1])
    return out


@pytest.mark.parametrize("calls_at_once", [1, 2])
def test_concurrent_single_headline_requests_share_a_model_call_and_each_gets_its_own_answer(
    tmp_path, tiny_model_dir, calls_at_once
):
    """Real HTTP, the real tiny model: 8 clients post one distinct headline each at the same moment. Each gets
    exactly the prediction the model makes for its headline alone, and /metrics shows they were coalesced. With
    two model calls at once (web.classify_concurrency) the model is called from two threads, and a bulk request
    is cut between both: its answers still come back whole and in order."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import pytest as _pytest
    from webkit import serve_in_thread

    from finsent.model import Classifier

    clf = Classifier.load(tiny_model_dir)
    headlines = [
        "Oil plunges as OPEC talks collapse",
        "Apple beats earnings estimates",
        "Fed holds rates steady",
        "Exxon shares slide on weak refining margins",
        "Gold rallies on safe-haven demand",
        "Tesla recalls 2 million cars",
        "Bank stocks soar after stress test",
        "Chipmaker merger talks end",
    ]
    alone = [clf.predict([h])[0] for h in headlines]
    distinct = {tuple(round(p, 4) for p in a.topic_probs.values()) for a in alone}
    assert len(distinct) == len(headlines), "the model must tell the headlines apart, or a mix-up goes unseen"
    settings = make_settings(
        tmp_path,
        web={"classify_max_wait_ms": 250, "classify_concurrency": calls_at_once},
        kafka={"bootstrap": "127.0.0.1:1"},
    )
    start = threading.Barrier(len(headlines))

    def post(client: httpx.Client, headline: str) -> httpx.Response:
        start.wait(10)
        return client.post("/classify", json={"texts": [headline]})

    with (
        serve_in_thread(build_api(settings, lambda: clf, StreamViews(), follow_topics=False)) as srv,
        ThreadPoolExecutor(len(headlines)) as pool,
    ):
        clients = [httpx.Client(base_url=srv.url, timeout=30) for _ in headlines]
        try:
            for c in clients:  # connections open before the race, so the posts arrive together
                assert c.get("/healthz").status_code == 200
            answers = list(pool.map(post, clients, headlines))
            batches = _histogram(srv.url, "finsent_api_classify_batch_texts")
            bulk = clients[0].post("/classify", json={"texts": headlines * 2})
            after_bulk = _histogram(srv.url, "finsent_api_classify_batch_texts")
        finally:
            for c in clients:
                c.close()
    assert bulk.status_code == 200, bulk.text
    assert [(r["topic"], r["sentiment"]) for r in bulk.json()["results"]] == [(a.topic, a.sentiment) for a in alone * 2]
    assert after_bulk["sum"] - batches["sum"] == 16
    assert after_bulk["count"] - batches["count"] == calls_at_once  # one call, or cut in two side by side
    for headline, want, r in zip(headlines, alone, answers):
        assert r.status_code == 200, r.text
        (got,) = r.json()["results"]
        assert (got["topic"], got["sentiment"]) == (want.topic, want.sentiment), headline
        assert got["topic_probs"] == _pytest.approx(want.topic_probs, abs=1e-5), headline
        assert got["sentiment_probs"] == _pytest.approx(want.sentiment_probs, abs=1e-5), headline
    assert batches["sum"] == len(headlines) and batches["count"] < len(headlines), batches  # fewer model calls
    assert batches["count"] - batches["1.0"] >= 1, batches  # at least one call held more than one request's text


class _FailingModel:
    """Raises on the text "boom", answers the rest."""

    version = "failing@test"

    def predict(self, texts):
        from types import SimpleNamespace

        if "boom" in texts:
            raise ValueError("model failed")
        return [
            SimpleNamespace(topic="Energy | Oil", topic_probs={}, sentiment="neutral", sentiment_probs={}, flag=None)
            for _ in texts
        ]


def test_a_model_error_answers_500_to_its_batch_and_the_api_keeps_serving(tmp_path):
    import httpx
    from webkit import serve_in_thread

    settings = make_settings(tmp_path, kafka={"bootstrap": "127.0.0.1:1"})
    with serve_in_thread(build_api(settings, lambda: _FailingModel(), StreamViews(), follow_topics=False)) as srv:
        assert httpx.post(srv.url + "/classify", json={"texts": ["boom"]}, timeout=10).status_code == 500
        # the error left the route unanswered (the server's error handler answers outside the middleware): counted
        assert _metric(srv.url, "finsent_api_requests_total", route="/classify", status="500") == 1
        ok = httpx.post(srv.url + "/classify", json={"texts": ["Oil slumps"]}, timeout=10)
        assert ok.status_code == 200 and ok.json()["results"][0]["topic"] == "Energy | Oil"
        assert _metric(srv.url, "finsent_api_classify_waiting") == 0  # the failed request gave its slot back


def test_the_review_queue_ranks_the_live_views(client):
    queue = client.get("/review", params={"limit": 3}).json()["items"]
    assert 0 < len(queue) <= 3 and all({"margin", "entropy", "behind_alert", "item"} <= set(q) for q in queue)
    ranked = [(not q["behind_alert"], q["margin"]) for q in queue]
    assert ranked == sorted(ranked)
    assert client.get("/review", params={"limit": 0}).status_code == 422


_REVIEW_LOOP_WITHOUT_TORCH = """
import sys
from pathlib import Path

from starlette.testclient import TestClient

sys.path.insert(0, sys.argv[2])  # the tests' factories
from factories import news_item, scored_item  # noqa: E402

from finsent.settings import load  # noqa: E402
from finsent.web.api import build_api  # noqa: E402
from finsent.web.views import StreamViews  # noqa: E402


class NoModel:
    version = "none@test"


tmp = Path(sys.argv[1])
settings = load(paths={"state_dir": str(tmp / "state")}, kafka={"bootstrap": "127.0.0.1:1"})
views = StreamViews()
views.add_item(scored_item(news_item("x", "Oil falls"), "neutral"))
with TestClient(build_api(settings, NoModel, views, follow_topics=False), base_url="http://127.0.0.1") as c:
    r = c.post("/feedback", json={"item_id": "x", "sentiment": "negative", "who": "analyst"})
    assert r.status_code == 201, r.text
    assert c.get("/feedback/stats").json()["corrections"] == 1
    assert c.get("/review").status_code == 200
print("torch imported:", "torch" in sys.modules)
"""


def test_the_review_loop_never_imports_torch_inside_a_request(tmp_path):
    """Importing torch takes seconds on a busy machine; done inside a request it held the API's one event loop,
    so every other request (the page's first load, the event stream) waited behind it. The review loop's routes
    need only the feedback store. A fresh interpreter, because this test run has long imported torch."""
    import subprocess
    import sys
    from pathlib import Path

    from conftest import environ_without_finsent

    out = subprocess.run(
        [sys.executable, "-c", _REVIEW_LOOP_WITHOUT_TORCH, str(tmp_path), str(Path(__file__).parents[1])],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ_without_finsent(),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("torch imported: False"), out.stdout


def test_a_feedback_store_with_a_line_cut_mid_utf8_still_serves_stats_and_review(tmp_path):
    """A crash mid-append leaves a line cut inside a UTF-8 sequence, the next correction appended after it on the
    same line. Decoding the whole store at once made /feedback/stats and /review answer 500 from then on; the cut
    line is now one bad line, counted, and every other line still counts."""

    class NoModel:
        version = "none@test"

    settings = make_settings(tmp_path, kafka={"bootstrap": "127.0.0.1:1"})
    store = settings.paths.feedback_store
    store.parent.mkdir(parents=True)
    good = b'{"v":2,"item_id":"a1","text":"Oil slumps","sentiment":"negative","who":"ana","at":"2026-01-01T00:00:00Z"}'
    cut = '{"v":2,"item_id":"a2","text":"Soci\u00e9t\u00e9'.encode()[:-1]  # inside the last "é"
    later = good.replace(b'"a1"', b'"a3"')
    store.write_bytes(good + b"\n" + cut + later + b"\n" + later.replace(b'"a3"', b'"a4"') + b"\n")
    views = StreamViews()
    views.add_item(scored_item(news_item("x", "Oil falls"), "neutral"))
    with TestClient(build_api(settings, NoModel, views, follow_topics=False), base_url="http://127.0.0.1") as c:
        stats = c.get("/feedback/stats")
        assert stats.status_code == 200, stats.text
        assert (stats.json()["corrections"], stats.json()["bad_lines"]) == (2, 1)
        assert c.get("/review").status_code == 200
