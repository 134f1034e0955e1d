"""Tokens and passwords in settings: a known placeholder is refused, an empty value means unset.

The deploy examples used to ship ``change-me``; a copied example then "protected" the receiver, the API's writes
and Kafka with a value anyone can read in the repo. Every secret setting (found the way the TOML guard finds them,
so a new one is covered too) refuses the placeholders with one line naming its environment variable.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import SecretStr

from finsent.errors import ConfigError, SettingsError
from finsent.settings import Settings, _secret_fields, load

SECRET_PATHS = _secret_fields(Settings)


def env_name(path: tuple[str, ...]) -> str:
    return "FINSENT_" + "__".join(p.upper() for p in path)


def test_every_token_and_password_setting_is_covered():
    names = {env_name(p) for p in SECRET_PATHS}
    assert {
        "FINSENT_RECEIVER__TOKEN",
        "FINSENT_RECEIVER__READ_TOKEN",
        "FINSENT_WEB__TOKEN",
        "FINSENT_GRAFANA__TOKEN",
        "FINSENT_KAFKA__SASL_PASSWORD",
        "FINSENT_SERVICES__ALERTMANAGER_PASSWORD",
    } <= names


@pytest.mark.parametrize("path", SECRET_PATHS, ids=env_name)
@pytest.mark.parametrize("placeholder", ["change-me", "changeme", " Change-Me "])
def test_a_placeholder_token_or_password_is_refused(monkeypatch, path, placeholder):
    monkeypatch.setenv(env_name(path), placeholder)
    with pytest.raises(SettingsError) as err:
        load()
    assert isinstance(err.value, ConfigError)
    lines = [line for line in str(err.value).splitlines() if line.startswith("  ")]
    assert len(lines) == 1 and f"{'.'.join(path)} ({env_name(path)})" in lines[0] and "placeholder" in lines[0]


@pytest.mark.parametrize("path", SECRET_PATHS, ids=env_name)
def test_an_empty_token_or_password_means_unset_and_a_real_one_is_kept(monkeypatch, path):
    def value(settings: Settings):
        node = settings
        for part in path:
            node = getattr(node, part)
        return node

    monkeypatch.setenv(env_name(path), "")
    assert value(load()) is None  # `FINSENT_WEB__TOKEN=` as a copied example leaves it: not a token of ""
    monkeypatch.setenv(env_name(path), "kX3-real-secret")
    secret = value(load())
    assert isinstance(secret, SecretStr) and secret.get_secret_value() == "kX3-real-secret"


def test_a_placeholder_passed_in_code_is_refused_too():
    with pytest.raises(SettingsError, match="placeholder"):
        load(web={"token": SecretStr("change-me")})


def test_the_cli_names_the_placeholder_setting_in_one_line():
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
    env["FINSENT_RECEIVER__TOKEN"] = "change-me"
    run = subprocess.run(
        [sys.executable, "-m", "finsent.cli", "receiver", "verify"], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2, run.stderr
    detail = [line for line in run.stderr.splitlines() if "FINSENT_RECEIVER__TOKEN" in line]
    assert len(detail) == 1 and "placeholder" in detail[0], run.stderr
