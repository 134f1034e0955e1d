import json
import logging

import pytest

from finsent import logs
from finsent.errors import ConfigError


@pytest.fixture(autouse=True)
def restore_root_logger():
    """setup() binds a handler to the stderr pytest captures for this test; later tests must not log into
    that closed stream (it printed "Logging error ... I/O operation on closed file" in CI)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_structured_fields(capsys):
    logs.setup("INFO", json_output=True)
    logging.getLogger("finsent.test").info("fetched", extra={"feed": "fed", "items": 3})
    line = capsys.readouterr().err.strip().splitlines()[-1]
    doc = json.loads(line)
    assert doc["msg"] == "fetched" and doc["feed"] == "fed" and doc["items"] == 3
    assert doc["level"] == "info" and doc["logger"] == "finsent.test" and doc["ts"].endswith("+00:00")


def test_text_lines_for_terminals(capsys):
    logs.setup("INFO", json_output=False)
    logging.getLogger("finsent.test").warning("slow", extra={"ms": 12})
    err = capsys.readouterr().err
    assert "WARNING" in err and "slow  ms=12" in err


# Logging's options: --log-level / FINSENT_LOG_LEVEL and FINSENT_LOG_JSON take what they document, and anything else
# is one ConfigError naming where it came from, never a traceback from the logging module.


def test_without_a_level_the_environment_sets_it_else_info(monkeypatch):
    monkeypatch.setenv("FINSENT_LOG_LEVEL", "error")
    logs.setup(None, json_output=True)
    assert logging.getLogger().level == logging.ERROR
    logs.setup("debug", json_output=True)  # the option, when given, wins
    assert logging.getLogger().level == logging.DEBUG
    monkeypatch.delenv("FINSENT_LOG_LEVEL")
    logs.setup(None, json_output=True)
    assert logging.getLogger().level == logging.INFO


def test_the_command_line_without_log_level_leaves_it_to_the_environment(monkeypatch):
    """The CLI's ``--log-level`` once defaulted to INFO, so FINSENT_LOG_LEVEL never reached ``logs.setup``."""
    from typer.testing import CliRunner

    from finsent.cli import app

    monkeypatch.setenv("FINSENT_LOG_LEVEL", "ERROR")
    assert CliRunner().invoke(app, ["topics", "--help"]).exit_code == 0
    assert logging.getLogger().level == logging.ERROR


@pytest.mark.parametrize(
    ("level", "env", "source"),
    [("verbose", None, "--log-level"), (None, "nonsense", "FINSENT_LOG_LEVEL"), ("warn", None, "--log-level")],
)
def test_a_level_logging_does_not_know_is_one_config_error(monkeypatch, level, env, source):
    """``--log-level verbose`` ended in a ValueError traceback from ``Logger.setLevel``."""
    if env is not None:
        monkeypatch.setenv("FINSENT_LOG_LEVEL", env)
    root = logging.getLogger()
    handlers, before = root.handlers[:], root.level
    with pytest.raises(ConfigError) as err:
        logs.setup(level)
    message = str(err.value)
    assert "\n" not in message and message.startswith(source) and "DEBUG, INFO, WARNING, ERROR, CRITICAL" in message
    assert root.handlers == handlers and root.level == before  # nothing half-configured


@pytest.mark.parametrize(
    ("value", "is_json"),
    [("1", True), ("true", True), ("True", True), ("yes", True), ("0", False), ("false", False), ("FALSE", False)],
)
def test_log_json_takes_the_usual_booleans(monkeypatch, capsys, value, is_json):
    """Only "1" meant JSON: FINSENT_LOG_JSON=true gave text lines."""
    monkeypatch.setenv("FINSENT_LOG_JSON", value)
    logs.setup("INFO")
    logging.getLogger("finsent.test").info("hello")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("{") is is_json
    if is_json:
        assert json.loads(line)["msg"] == "hello"


def test_log_json_that_is_no_boolean_is_one_config_error(monkeypatch):
    monkeypatch.setenv("FINSENT_LOG_JSON", "json")
    with pytest.raises(ConfigError, match=r"^FINSENT_LOG_JSON 'json' is not a boolean; use true or false"):
        logs.setup("INFO")
