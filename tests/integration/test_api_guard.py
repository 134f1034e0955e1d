"""Who may write through the web API, and hostile input it must answer as bad input, over real HTTP (uvicorn on
127.0.0.1). With no FINSENT_WEB__TOKEN (the demo) the guard is all that stands between a page on another site and
the feedback store that fine-tuning trains on."""

import httpx
import pytest
from conftest import make_settings
from factories import news_item, scored_item
from webkit import serve_in_thread

from finsent.model.feedback_store import read_store
from finsent.web.api import build_api
from finsent.web.views import StreamViews


class _NoModel:
    version = "none@test"


@pytest.fixture
def api(tmp_path):
    views = StreamViews()
    views.add_item(scored_item(news_item("n1", "Oil plunges as OPEC talks collapse"), "neutral"))
    settings = make_settings(tmp_path, kafka={"bootstrap": "127.0.0.1:1"})
    with serve_in_thread(build_api(settings, lambda: _NoModel(), views, follow_topics=False)) as srv:
        srv.settings = settings
        yield srv


def _stored(srv) -> list:
    path = srv.settings.paths.feedback_store
    return read_store(path)[0] if path.exists() else []


FEEDBACK = {"item_id": "n1", "sentiment": "negative", "who": "analyst"}


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "evil.example:9185", "Origin": "http://evil.example:9185"},  # DNS rebinding: same-origin to the page
        {"Origin": "http://evil.example"},  # a page on another site
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # another port of 127.0.0.1: Grafana, Alertmanager, a stray dev server
    ],
    ids=["rebinding", "foreign-origin", "cross-site", "same-site"],
)
def test_a_write_from_another_origin_is_refused_and_stores_nothing(api, headers):
    r = httpx.post(api.url + "/feedback", json=FEEDBACK, headers=headers, timeout=10)
    assert r.status_code == 403, r.text
    assert _stored(api) == []
    # a case action is refused the same way, before any token is lent to the receiver
    r = httpx.post(api.url + "/cases/1/acknowledge", json={"who": "analyst"}, headers=headers, timeout=10)
    assert r.status_code == 403


def test_the_dashboards_own_write_and_a_link_from_another_site_are_let_through(api):
    origin = api.url  # what a browser sends on the page's own POST
    r = httpx.post(api.url + "/feedback", json=FEEDBACK, headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 201, r.text
    assert [fb.who for fb in _stored(api)] == ["analyst"]
    # a navigation from an alert's link in Grafana / Alertmanager (another port: same-site) opens the dashboard
    assert httpx.get(api.url + "/", headers={"Sec-Fetch-Site": "same-site"}).status_code == 200


def test_a_foreign_host_is_refused_on_reads_too(api):
    """DNS rebinding lets a page read what its own origin serves: the live headlines and alerts."""
    assert httpx.get(api.url + "/items", headers={"Host": "evil.example"}).status_code == 403
    assert httpx.get(api.url + "/items", headers={"Host": "localhost"}).status_code == 200


def test_blank_names_and_lone_surrogates_are_422_not_stored_nor_500(api):
    assert httpx.post(api.url + "/feedback", json={**FEEDBACK, "who": "   "}).status_code == 422
    body = b'{"item_id": "n1", "sentiment": "negative", "who": "a", "comment": "\\ud800"}'
    r = httpx.post(api.url + "/feedback", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "comment" in r.text
    r = httpx.post(
        api.url + "/classify", content=b'{"texts": ["\\ud800 oil"]}', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert _stored(api) == []


def test_a_last_event_id_that_is_not_an_ascii_number_starts_from_the_beginning(api):
    with httpx.stream("GET", api.url + "/events", headers={"Last-Event-ID": b"\xb2"}, timeout=10) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert next(lines) == "retry: 2000"
        assert next(line for line in lines if line.startswith("id:")) == "id: 1"  # the backlog, from the start


def test_off_loopback_without_a_token_writes_are_refused(tmp_path):
    """As the receiver refuses to take writes off loopback without its token (it will not even start)."""
    from fastapi import HTTPException

    from finsent.web.guard import check_write

    check_write(None, "127.0.0.1", None)  # the demo
    for bound in ("0.0.0.0", "10.0.0.5"):
        with pytest.raises(HTTPException) as err:
            check_write(None, bound, None)
        assert err.value.status_code == 403 and "FINSENT_WEB__TOKEN" in err.value.detail
    with pytest.raises(HTTPException) as err:
        check_write(b"s3cret", "0.0.0.0", "Bearer wrong")
    assert err.value.status_code == 401
    check_write(b"s3cret", "0.0.0.0", "Bearer s3cret")
