"""The worker's Faust app connects like every other finsent client: the SASL/TLS options and the client id of
``settings.kafka`` (``finsent.kafka.faust_broker_options``). It was built by hand from the bootstrap list alone, so
on a SASL/TLS cluster it connected unauthenticated, as ``faust-<version>``. No broker here: what the app would hand
to aiokafka is read from the app itself."""

from __future__ import annotations

import ssl
from unittest.mock import MagicMock

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from finsent.settings import load
from finsent.stream.worker import build_app


def app_for(tmp_path, monkeypatch, **kafka):
    monkeypatch.setenv("FINSENT_KAFKA__SASL_PASSWORD", "s3cret")  # secrets come from the environment only
    settings = load(paths={"state_dir": str(tmp_path / "state")}, kafka={"client_id": "finsent-prod", **kafka})
    return build_app(settings, MagicMock(), aggregate=False)


def test_a_sasl_ssl_scram_cluster_gets_the_credentials_and_the_client_id(tmp_path, monkeypatch):
    app = app_for(
        tmp_path,
        monkeypatch,
        bootstrap="kafka-1:9093,kafka-2:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc-finsent",
    )
    assert app.conf.broker_client_id == "finsent-prod-worker"
    assert [str(u) for u in app.conf.broker] == ["kafka://kafka-1:9093", "kafka://kafka-2:9093"]
    # What Faust's consumer and producer pass to aiokafka (both go through credentials_to_aiokafka_auth).
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials)
    assert isinstance(auth.pop("ssl_context"), ssl.SSLContext)
    assert auth == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc-finsent",
        "sasl_plain_password": "s3cret",
    }
    producer = app.producer
    assert producer.client_id == "finsent-prod-worker"
    assert producer._settings_auth()["security_protocol"] == "SASL_SSL"


@pytest.mark.parametrize(
    ("protocol", "expected"),
    [
        ("SASL_PLAINTEXT", {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "ssl_context": None}),
        ("SSL", {"security_protocol": "SSL"}),
    ],
)
def test_sasl_without_tls_and_tls_without_sasl(tmp_path, monkeypatch, protocol, expected):
    app = app_for(tmp_path, monkeypatch, security_protocol=protocol, sasl_username="svc-finsent")
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials)
    assert {k: auth[k] for k in expected} == expected
    if protocol == "SSL":
        assert isinstance(auth["ssl_context"], ssl.SSLContext) and "sasl_mechanism" not in auth


def test_plaintext_passes_no_credentials(tmp_path, monkeypatch):
    app = app_for(tmp_path, monkeypatch)
    assert app.conf.broker_credentials is None
    assert app.conf.broker_client_id == "finsent-prod-worker"
