"""The HTTP API with the real app and the shipped model (starlette's test client runs the app in-process)."""

import pytest
from starlette.testclient import TestClient

from conftest import make_settings
from finsent.web.api import build_api


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from finsent.model import Classifier

    settings = make_settings(tmp_path_factory.mktemp("api"), web={"max_batch": 8, "max_text_chars": 300, "max_body_bytes": 4096})
    with TestClient(build_api(settings, Classifier.load)) as c:
        yield c


def test_classify_returns_topic_and_sentiment_with_probabilities_and_the_model_version(client):
    r = client.post("/classify", json={"texts": ["Oil prices plunge as OPEC talks collapse", "", "Apple beats earnings estimates"]})
    assert r.status_code == 200
    body = r.json()
    assert body["model"].startswith("finsent-minilm@") and len(body["results"]) == 3
    oil, empty, apple = body["results"]
    assert oil["sentiment"] == "negative" and abs(sum(oil["sentiment_probs"].values()) - 1) < 1e-4
    assert len(oil["topic_probs"]) == 20 and oil["topic"] in oil["topic_probs"]
    assert empty["flag"] == "empty" and apple["sentiment"] == "positive"


@pytest.mark.parametrize("payload, field", [
    ({"texts": []}, "texts"),
    ({"texts": ["x"] * 9}, "texts"),                 # over max_batch
    ({"texts": ["x" * 301]}, "texts.0"),             # over max_text_chars
    ({"texts": "not a list"}, "texts"),
    ({}, "texts"),
])
def test_invalid_requests_get_422_naming_the_field(client, payload, field):
    r = client.post("/classify", json=payload)
    assert r.status_code == 422
    locs = [".".join(str(p) for p in e["loc"][1:]) for e in r.json()["detail"]]
    assert field in locs


def test_an_oversized_body_gets_413_before_any_work(client):
    r = client.post("/classify", content=b'{"texts": ["' + b"x" * 5000 + b'"]}', headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_health_readiness_and_openapi(client):
    assert client.get("/healthz").json() == {"ok": True}
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["model"].startswith("finsent-minilm@")
    schema = client.get("/openapi.json").json()
    assert "/classify" in schema["paths"] and "ClassifyResponse" in schema["components"]["schemas"]
