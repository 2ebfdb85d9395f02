"""The node agent's log: one line per event, readable in a terminal or JSON for a collector.

Callers pass `extra={"event": name, "fields": {...}}`; the JSON form carries the fields as
keys. Fields and messages hold ids, names, statuses and durations: never a data value, a
summary or a secret.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from tessera.logs import install_handler, record_head

NOISY = ("httpx", "httpcore")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            **record_head(record),
            "event": getattr(record, "event", None),
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(fmt: Literal["text", "json"] = "text", level: int = logging.INFO) -> None:
    """Log to standard error, one line per event."""
    install_handler(fmt, JsonFormatter(), level, NOISY)
