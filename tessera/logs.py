"""Logging shared by the coordinator and the node agent: one line per event on standard error,
as text for a terminal or JSON for a collector. Each side keeps its own JSON formatter (the
shape of its lines); this module has what they have in common."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
TEXT_DATES = "%Y-%m-%d %H:%M:%S"


def record_head(record: logging.LogRecord) -> dict[str, Any]:
    """The keys every JSON line starts with: when, how severe, from which logger."""
    return {
        "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
    }


def install_handler(
    fmt: Literal["text", "json"],
    json_formatter: logging.Formatter,
    level: int,
    quiet: Iterable[str],
) -> None:
    """Send the root logger to standard error in `fmt`; `quiet` loggers log warnings only."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(json_formatter)
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT, TEXT_DATES))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
