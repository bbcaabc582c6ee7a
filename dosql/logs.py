"""Structured JSON-line logging, set up once per process from ``LOG_LEVEL``.

Each record is one JSON object on stderr with ``ts``, ``level``, ``service``,
``msg``, the trace id of the request being served (a context variable, so it
follows a request through trio tasks), and any ``extra`` fields.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_id", default=None)

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        tid = trace_id.get()
        if tid:
            entry["trace_id"] = tid
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup(service: str, level: str = "info") -> None:
    """Route all logging to stderr as JSON lines; idempotent."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter(service))
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level.lower(), logging.INFO))
    # Third-party chatter stays at warning unless we are debugging.
    for noisy in ("websockets", "pyiceberg", "trio"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
