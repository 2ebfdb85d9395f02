"""The one error catalogue.

Every error a user can see is a `TesseraError` with a stable machine-readable `code`, a human
`message` and optional structured `details`. The kernel knows nothing of HTTP: the coordinator
maps each code to a status and the JSON body ``{"error": {"code", "message", "details"}}`` at
its edge (`api.errors`); the CLI maps them to a one-line message and exit code 2.
"""

from __future__ import annotations

from typing import Any


class TesseraError(Exception):
    """Root of every error that is reported to a user rather than crashing."""

    code = "error"
    # The status an HTTP client received this error with (`tessera.client` sets it); which
    # status each code travels with is the coordinator's choice (`api.errors`), not the kernel's.
    http_status: int | None = None

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)

    def __str__(self) -> str:
        return self.message


class InvalidRequest(TesseraError):
    """A request body, file or argument that is malformed (not a query)."""

    code = "invalid_request"


class QueryInvalid(TesseraError):
    """A query that does not validate against the language or the dataset schema."""

    code = "query_invalid"


class PolicyDenied(TesseraError):
    """A node's policy forbids what was asked."""

    code = "policy_denied"


class DisclosureSuppressed(TesseraError):
    """The whole result falls below the disclosure threshold."""

    code = "disclosure_suppressed"


class DisclosureRefused(TesseraError):
    """The pooled data fails a disclosure rule (subset, levels, model size, a row rule): decided
    inside MPC and opened as one pooled outcome, the same at every party. Its message names the
    rule, never a node, a site's count or a value."""

    code = "disclosure_refused"


class NotFound(TesseraError):
    code = "not_found"


class Conflict(TesseraError):
    code = "conflict"


class Unauthorized(TesseraError):
    code = "unauthorized"


class Forbidden(TesseraError):
    code = "forbidden"


class RateLimited(TesseraError):
    """Too many attempts (failed logins, query submissions): wait `details["retry_after_s"]`
    seconds."""

    code = "rate_limited"


class TooManyQueries(RateLimited):
    """A researcher or a study has as many queries (or synthesis requests) running as the
    coordinator allows at once: retry after `details["retry_after_s"]` seconds."""

    code = "too_many_queries"


class QueryTooCostly(QueryInvalid):
    """A query whose cost (`smpc.cost`: cells, secure comparisons) exceeds the coordinator's
    per-query limit: it will never be accepted as it stands (`details` names the limit)."""

    code = "query_too_costly"


class BudgetExceeded(Conflict):
    """A differential-privacy query would spend more epsilon or delta than a node has left."""

    code = "budget_exceeded"


class TooLarge(TesseraError):
    """An upload beyond the size the coordinator accepts."""

    code = "too_large"


class Unavailable(TesseraError):
    """A dependency of the service (its database) does not answer: try again later."""

    code = "unavailable"


class ProtocolFailed(TesseraError):
    """An MPC protocol run did not complete: a party refused, crashed, timed out or disagreed."""

    code = "protocol_failed"


class PeerRefused(ProtocolFailed):
    """A node refused a protocol run's party: not a peer its hospital trusts, a certificate its
    node key did not issue for this run, an address it will not dial, or a peer claiming
    another party id."""

    code = "peer_refused"


class PeerLost(ProtocolFailed):
    """A party of a protocol run went away: its connection closed mid-protocol, or it never
    connected. `details["parties"]` are the party ids lost (the node agent names their nodes)."""

    code = "peer_lost"


class ConfigInvalid(TesseraError):
    """A settings or configuration file that cannot be used."""

    code = "config_invalid"


class DataInvalid(ConfigInvalid):
    """A node's data that breaks its declared schema (the message never quotes a value)."""

    code = "data_invalid"


ERRORS_BY_CODE: dict[str, type[TesseraError]] = {
    cls.code: cls
    for cls in (
        TesseraError,
        InvalidRequest,
        QueryInvalid,
        PolicyDenied,
        DisclosureSuppressed,
        DisclosureRefused,
        NotFound,
        Conflict,
        Unauthorized,
        Forbidden,
        RateLimited,
        TooManyQueries,
        QueryTooCostly,
        BudgetExceeded,
        TooLarge,
        Unavailable,
        ProtocolFailed,
        PeerRefused,
        PeerLost,
        ConfigInvalid,
        DataInvalid,
    )
}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one error envelope: ``{"error": {"code", "message", "details"}}``, where `details`
    always has `errors` (a list of `{"loc": [path segments], "msg"}`, empty unless fields were
    invalid) beside the error's context values."""
    return {
        "error": {"code": code, "message": message, "details": {"errors": [], **(details or {})}}
    }


def error_from_dict(body: dict[str, Any]) -> TesseraError:
    """Rebuild an error from its JSON body (as sent by the coordinator)."""
    err = body.get("error", body)
    cls = ERRORS_BY_CODE.get(str(err.get("code")), TesseraError)
    exc = cls(str(err.get("message", "unknown error")), err.get("details") or {})
    return exc
