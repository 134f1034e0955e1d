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


def setup(level: str | None = None, json_output: bool | None = None) -> None:
    """Configure the root logger once; FINSENT_LOG_LEVEL and FINSENT_LOG_JSON override the defaults."""
    level = (level or os.environ.get("FINSENT_LOG_LEVEL", "INFO")).upper()
    if json_output is None:
        env = os.environ.get("FINSENT_LOG_JSON")
        json_output = env == "1" if env is not None else not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_output else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("kafka", "aiokafka", "urllib3", "httpx", "httpcore", "faust", "mode", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
