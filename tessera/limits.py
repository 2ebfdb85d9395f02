"""The limits every message is held to at the edge, shared by the coordinator (its request
models and routes) and the node agent (which validates the same models).

Why each exists: an id beyond the database's integer range, a NUL byte in a string (PostgreSQL
stores neither) or a document nested hundreds of levels deep must be a 422 at the edge, not an
error deep in the database or the serializer; and no text or list may be larger than what its
purpose needs (a study's description is shown in every listing).

- `Id`: a database id, 1 to 2^31 − 1 (PostgreSQL's `integer`).
- `Text`: a string without NUL bytes; its length is set where it is used
  (`Field(max_length=...)`), with the usual sizes below.
- `JsonObject`: a free-form JSON object (a generator's `params`, a result, a report's metrics):
  at most `MAX_JSON_DEPTH` levels of nesting, `MAX_JSON_ITEMS` values in all, no NUL byte in a
  key or a string.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, Field

MAX_ID = 2**31 - 1  # PostgreSQL's integer; SQLite's is wider, the edge is the same for both
Id = Annotated[int, Field(ge=1, le=MAX_ID)]

NUL_FREE = r"^[^\x00]*$"
Text = Annotated[str, Field(pattern=NUL_FREE)]

# the usual lengths of texts
NAME_LENGTH = 200  # an organisation's or a study's name
LABEL_LENGTH = 64  # a stage, an error code, a steward's name
MESSAGE_LENGTH = 2000  # a reason, a message
DESCRIPTION_LENGTH = 10_000  # a study's description
SECRET_LENGTH = 256  # a password

# lists of ids or names in one request (a study's organisations, members, datasets)
MAX_REFS = 1000

MAX_JSON_DEPTH = 32
MAX_JSON_ITEMS = 2_000_000  # a result: 40 Kaplan-Meier curves of 10 000 points, 3 series each


def json_problem(value: Any, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why a free-form JSON value breaks the limits (too deep, too many values, a NUL byte), or
    None. Walks iteratively: a value nested a thousand levels deep is measured without
    recursing."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > MAX_JSON_ITEMS:
            return f"more than {MAX_JSON_ITEMS} values"
        if isinstance(item, dict | list):
            if depth >= max_depth:
                return f"nested more than {max_depth} levels deep"
            if isinstance(item, dict):
                for key in item:
                    if isinstance(key, str) and "\x00" in key:
                        return "a key contains a NUL byte"
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str) and "\x00" in item:
            return "a string contains a NUL byte"
    return None


def _checked(value: dict[str, Any]) -> dict[str, Any]:
    problem = json_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_checked)]

# the query language (smpc.query): filters in one query, values of one `in`, a string value
MAX_CONDITIONS = 100
MAX_IN_VALUES = 1000
MAX_VALUE_LENGTH = 256

MAX_REPORTED_ERRORS = 20  # field errors listed in one answer


def validation_message(error: Mapping[str, Any]) -> str:
    """A pydantic error's message for a person: a NUL byte named as such, no "Value error, "."""
    context = error.get("ctx") or {}
    if error.get("type") == "string_pattern_mismatch" and context.get("pattern") == NUL_FREE:
        return "contains a NUL byte"
    return str(error.get("msg", "")).removeprefix("Value error, ")
