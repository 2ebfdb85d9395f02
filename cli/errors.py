"""Turn a `TesseraError` into a one-line message and exit code 2: never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from tessera.errors import TesseraError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2


def fail(message: str) -> typer.Exit:
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(EXIT_USER_ERROR)


def reports_errors(func: F) -> F:
    """Decorate a command so that Tessera errors print one line and exit with status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except TesseraError as exc:
            raise fail(exc.message) from None

    return wrapper  # type: ignore[return-value]
