"""One logging setup for every command: JSON lines when stderr is not a terminal, readable text when it is.

Structured fields travel through the standard ``extra=`` mechanism, so libraries and our own modules
log the same way and nothing needs a logging dependency.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

from finsent.errors import ConfigError

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{datetime.fromtimestamp(record.created).strftime('%H:%M:%S')} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extra:
            line += f"  {extra}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def setup(level: str | None = None, json_output: bool | None = None) -> None:
    """Configure the root logger once.

    ``level``: the ``--log-level`` option; None: ``FINSENT_LOG_LEVEL``, else INFO. ``json_output``: the
    ``--log-json/--log-text`` option; None: ``FINSENT_LOG_JSON`` (true/false, 1/0, yes/no, on/off), else JSON when
    stderr is not a terminal. A value outside those is a ConfigError naming where it came from; nothing is
    changed then."""
    chosen = (
        _level(level, "--log-level")
        if level is not None
        else _level(os.environ.get("FINSENT_LOG_LEVEL"), "FINSENT_LOG_LEVEL")
    )
    if json_output is None:
        json_output = _json_env(os.environ.get("FINSENT_LOG_JSON"))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_output else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(chosen)
    for noisy in ("kafka", "aiokafka", "urllib3", "httpx", "httpcore", "faust", "mode", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def _level(value: str | None, source: str) -> str:
    """The level name, upper case; INFO when not given (or blank); ConfigError for a name logging does not use."""
    if value is None or not value.strip():
        return "INFO"
    name = value.strip().upper()
    if name not in LEVELS:
        raise ConfigError(f"{source} {value!r} is not a log level; use one of {', '.join(LEVELS)}")
    return name


def _json_env(value: str | None) -> bool:
    """FINSENT_LOG_JSON as a bool; unset (or blank): JSON when stderr is not a terminal."""
    if value is None or not value.strip():
        return not sys.stderr.isatty()
    word = value.strip().lower()
    if word not in _TRUE | _FALSE:
        raise ConfigError(f"FINSENT_LOG_JSON {value!r} is not a boolean; use true or false (1 or 0)")
    return word in _TRUE
