"""The one error catalogue.

Every error a user can see is a `TesseraError` with a stable machine-readable `code`, a human
`message` and optional structured `details`. The coordinator maps them to an HTTP status and the
JSON body ``{"error": {"code", "message", "details"}}`` in one handler; the CLI maps them to a
one-line message and exit code 2.
"""

from __future__ import annotations

from typing import Any


class TesseraError(Exception):
    """Root of every error that is reported to a user rather than crashing."""

    code = "error"
    http_status = 500

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    def __str__(self) -> str:
        return self.message


class InvalidRequest(TesseraError):
    """A request body, file or argument that is malformed (not a query)."""

    code = "invalid_request"
    http_status = 422


class QueryInvalid(TesseraError):
    """A query that does not validate against the language or the dataset schema."""

    code = "query_invalid"
    http_status = 422


class PolicyDenied(TesseraError):
    """A node's policy forbids what was asked."""

    code = "policy_denied"
    http_status = 403


class DisclosureSuppressed(TesseraError):
    """The whole result falls below the disclosure threshold."""

    code = "disclosure_suppressed"
    http_status = 409


class NotFound(TesseraError):
    code = "not_found"
    http_status = 404


class Conflict(TesseraError):
    code = "conflict"
    http_status = 409


class Unauthorized(TesseraError):
    code = "unauthorized"
    http_status = 401


class Forbidden(TesseraError):
    code = "forbidden"
    http_status = 403


class BudgetExceeded(Conflict):
    """A differential-privacy query would spend more epsilon or delta than a node has left."""

    code = "budget_exceeded"
    http_status = 409


class TooLarge(TesseraError):
    """An upload beyond the size the coordinator accepts."""

    code = "too_large"
    http_status = 413


class ProtocolFailed(TesseraError):
    """An MPC protocol run did not complete: a party refused, crashed, timed out or disagreed."""

    code = "protocol_failed"
    http_status = 502


class ConfigInvalid(TesseraError):
    """A settings or configuration file that cannot be used."""

    code = "config_invalid"
    http_status = 500


class DataInvalid(ConfigInvalid):
    """A node's data that breaks its declared schema (the message never quotes a value)."""

    code = "data_invalid"
    http_status = 422


ERRORS_BY_CODE: dict[str, type[TesseraError]] = {
    cls.code: cls
    for cls in (
        TesseraError,
        InvalidRequest,
        QueryInvalid,
        PolicyDenied,
        DisclosureSuppressed,
        NotFound,
        Conflict,
        Unauthorized,
        Forbidden,
        BudgetExceeded,
        TooLarge,
        ProtocolFailed,
        ConfigInvalid,
        DataInvalid,
    )
}


def error_from_dict(body: dict[str, Any]) -> TesseraError:
    """Rebuild an error from its JSON body (as sent by the coordinator)."""
    err = body.get("error", body)
    cls = ERRORS_BY_CODE.get(str(err.get("code")), TesseraError)
    exc = cls(str(err.get("message", "unknown error")), err.get("details") or {})
    return exc
