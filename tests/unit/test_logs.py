import json
import logging

import pytest

from finsent import logs


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
