"""Structured logging for every process: one JSON object per line on stderr.

Each record carries ``ts``, ``level``, ``process``, ``logger``, ``msg`` and any ``extra=``
fields (``log.info("served", extra={"service": s, "ms": 1.2})``), plus the exception text.
``text`` format is for people at a terminal. journald and supervisord capture stderr.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JSONFormatter(logging.Formatter):
    """Formats a record as one JSON line."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "process": self.process,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__(f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        if extra:
            base += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return base


def setup(process: str, level: str = "info", fmt: str = "json") -> logging.Logger:
    """Configure the root logger for this process and return the ``moorage.<process>`` logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter(process) if fmt == "json" else TextFormatter(process))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return logging.getLogger(f"moorage.{process}")
