"""Pages of a list: `limit` and an opaque `cursor`, oldest first.

A cursor names the last item of the previous page (its id, which only grows), so a page is
stable while rows are added after it; it is opaque to clients (base64 of ``after:<id>``) so the
scheme can change. A malformed cursor is a 422, like any invalid parameter.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Query
from sqlalchemy import Select

from tessera.errors import InvalidRequest
from tessera.limits import MAX_ID

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
T = TypeVar("T")


def encode_cursor(after: int) -> str:
    return base64.urlsafe_b64encode(f"after:{after}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = text.partition(":")
        if kind != "after" or not value.isascii() or not value.isdigit():
            raise ValueError(cursor)
        after = int(value)
        if after > MAX_ID:
            raise ValueError(cursor)
        return after
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest(
            "cursor is not one this coordinator gave out",
            {"errors": [{"loc": ["query", "cursor"], "msg": "not a cursor of this list"}]},
        ) from None


@dataclass(frozen=True)
class PageRequest:
    """What a list route was asked for: at most `limit` items after the cursor's."""

    limit: int = DEFAULT_LIMIT
    after: int | None = None

    def apply(self, stmt: Select[Any], id_column: Any) -> Select[Any]:
        """`stmt` restricted to this page (one extra row tells whether another page follows)."""
        if self.after is not None:
            stmt = stmt.where(id_column > self.after)
        return stmt.order_by(id_column).limit(self.limit + 1)

    def page(self, rows: Sequence[T], key: Any) -> tuple[list[T], str | None]:
        """The page's items and the cursor of the next page (None on the last one)."""
        items = list(rows[: self.limit])
        more = len(rows) > self.limit
        return items, encode_cursor(key(items[-1])) if more and items else None


def page_request(
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description="Items per page (at most 1000).")
    ] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None, Query(description="`next_cursor` of the previous page.", max_length=200)
    ] = None,
) -> PageRequest:
    return PageRequest(limit, decode_cursor(cursor) if cursor else None)
