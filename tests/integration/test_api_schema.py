"""Schemathesis against the API's own OpenAPI document, with the real app and the shipped model.

Generated valid and invalid requests for every operation; each answer must be no server error, a status
code the schema documents, the documented content type, and a body matching the response schema.

In-process (ASGI), not over a socket: schemathesis' HTTP transport is requests, which breaks on the
urllib3-future package another dependency installs in place of urllib3. The app, its middleware and
its limits are the same objects `finsent serve` runs; the socket path is covered by test_api's SSE test.
"""

import pytest
import schemathesis
from conftest import make_settings
from hypothesis import HealthCheck, given, settings
from starlette.testclient import TestClient

from finsent.web.api import build_api
from finsent.web.views import StreamViews

OPERATIONS = {
    "POST /classify",
    "GET /items",
    "GET /windows",
    "GET /windows/keys",
    "GET /alerts",
    "POST /feedback",
    "GET /feedback/stats",
    "GET /review",
    "GET /healthz",
    "GET /readyz",
    "GET /dashboard/config",
    "GET /windows/heatmap",
    "GET /cases",
    "POST /cases/{case_id}/{action}",
}


@pytest.mark.filterwarnings("ignore")
def test_every_operation_honours_its_schema(tmp_path):
    """(schemathesis' pytest plugin does not load under this pytest, so its engine is driven directly: one
    hypothesis run per operation.)"""
    from webkit import serve_in_thread

    from finsent.alerts.receiver import build_app
    from finsent.model import Classifier

    # The case routes forward to a real receiver (uvicorn on 127.0.0.1, its own SQLite audit log).
    receiver_settings = make_settings(tmp_path, kafka={"bootstrap": "127.0.0.1:1"}, receiver={"evidence_wait_s": 0})
    with serve_in_thread(build_app(receiver_settings, follow_alerts=False), ready_path="/healthz") as receiver:
        s = make_settings(
            tmp_path,
            web={
                "max_batch": 4,
                "max_text_chars": 200,
                "max_body_bytes": 8192,
                "receiver_url": receiver.url,
                "allowed_hosts": ["testserver"],  # schemathesis' ASGI client names this Host
            },
            kafka={"bootstrap": "127.0.0.1:1"},
        )
        tested = _run_every_operation(build_api(s, Classifier.load, StreamViews(), follow_topics=False))
    assert set(tested) >= OPERATIONS, tested


def _run_every_operation(app) -> list[str]:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    tested = []
    with TestClient(app):  # runs the lifespan (loads the model) for the calls below
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        for result in schema.get_all_operations():
            operation = result.ok()

            @given(case=operation.as_strategy())
            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def run(case):
                case.call_and_validate(checks=checks)

            run()
            tested.append(operation.label)
    return tested


def test_the_document_lists_the_refusals(tmp_path):
    """Clients learn from the schema that a body may be refused (413, 400) and /classify may be busy (503)."""
    app = build_api(make_settings(tmp_path), lambda: None, StreamViews(), follow_topics=False)
    paths = app.openapi()["paths"]
    assert {"400", "413", "503"} <= set(paths["/classify"]["post"]["responses"])
    assert {"400", "413"} <= set(paths["/feedback"]["post"]["responses"])
