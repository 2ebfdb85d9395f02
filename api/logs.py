"""The coordinator's log: one line per event, readable in a terminal or JSON for a collector.

Audit events are logged as they are recorded (actor, action, subject and their details, which
never hold a secret, a token, a key or a data value); requests are not logged one by one.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from tessera.logs import install_handler, record_head

QUIET = ("httpx", "httpcore", "alembic.runtime.migration", "uvicorn.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {**record_head(record), "message": record.getMessage()}
        event = getattr(record, "event", None)
        if event:
            entry["event"] = event
            entry["details"] = getattr(record, "fields", None) or {}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(fmt: Literal["text", "json"] = "text", level: int = logging.INFO) -> None:
    """Log to standard error, one line per event (uvicorn's own loggers included)."""
    install_handler(fmt, JsonFormatter(), level, QUIET)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
