"""One place that turns every error into `{"error": {"code", "message", "details"}}` with the
HTTP status the coordinator gives its code (`STATUS`).

The database's own errors: one that says it cannot be reached (a lost or refused connection,
a pool with no connection to give, SQLite's locked or unreadable file) is **503** `unavailable`
with `Retry-After`; a value it refuses to store (out of its integer range, too long, a NUL
byte) is **422**: the edge validates these first, this is the net below it. Anything else
unexpected is a JSON **500** that keeps the connection open (`LastResort`)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from tessera.errors import (
    BudgetExceeded,
    ConfigInvalid,
    Conflict,
    DataInvalid,
    DisclosureSuppressed,
    Forbidden,
    InvalidRequest,
    NotFound,
    PolicyDenied,
    ProtocolFailed,
    QueryInvalid,
    RateLimited,
    TesseraError,
    TooLarge,
    Unauthorized,
    Unavailable,
    error_body,
)
from tessera.limits import MAX_REPORTED_ERRORS, validation_message

log = logging.getLogger("tessera.coordinator")

# The status each error of the kernel's catalogue travels with (a subclass takes its own entry,
# else its nearest ancestor's). Chosen here, at the coordinator's edge.
STATUS: dict[type[TesseraError], int] = {
    InvalidRequest: 422,
    QueryInvalid: 422,
    DataInvalid: 422,
    PolicyDenied: 403,
    Forbidden: 403,
    Unauthorized: 401,
    NotFound: 404,
    Conflict: 409,
    BudgetExceeded: 409,
    DisclosureSuppressed: 409,
    TooLarge: 413,
    RateLimited: 429,
    ProtocolFailed: 502,
    Unavailable: 503,
    ConfigInvalid: 500,
    TesseraError: 500,
}


def status_of(error: TesseraError) -> int:
    """The HTTP status of an error: its class's entry in `STATUS`, or its nearest ancestor's."""
    return next(STATUS[cls] for cls in type(error).__mro__ if cls in STATUS)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
}

RETRY_AFTER_S = 5  # a database that does not answer: when to try again
# the database's errors that mean it cannot be reached (or has no connection to spare)
UNREACHABLE: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    DisconnectionError,
    PoolTimeout,
)


def unavailable() -> JSONResponse:
    """503: the database does not answer."""
    error = Unavailable(
        "the coordinator's database does not answer; try again shortly",
        {"retry_after_s": RETRY_AFTER_S},
    )
    return JSONResponse(error.to_dict(), 503, headers={"Retry-After": str(RETRY_AFTER_S)})


def _location(loc: tuple[Any, ...] | list[Any]) -> list[str | int]:
    """A field's path as segments; a body field's path starts inside the body."""
    parts = [p if isinstance(p, int) else str(p) for p in loc]
    return parts[1:] if parts[:1] == ["body"] else parts


def _text(loc: list[str | int]) -> str:
    return ".".join(str(p) for p in loc if p not in ("query", "path", "header")) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(TesseraError)
    async def tessera_error(_: Request, exc: TesseraError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(exc.details.get("retry_after_s", 1))}
        return JSONResponse(exc.to_dict(), status_code=status_of(exc), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": _location(e.get("loc", ())), "msg": validation_message(e)}
            for e in exc.errors()[:MAX_REPORTED_ERRORS]
        ]
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            message = "the request body is not valid JSON"
        else:
            message = "; ".join(f"{_text(e['loc'])}: {e['msg']}" for e in errors)
        return JSONResponse(error_body("invalid_request", message, {"errors": errors}), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        details = getattr(exc, "details", None)  # api.middleware.BodyTooLarge's limit
        body = error_body(code, message, details)
        return JSONResponse(body, exc.status_code, headers=exc.headers)

    async def database_unreachable(request: Request, exc: Exception) -> JSONResponse:
        log.warning(
            "the database does not answer (%s) on %s %s",
            type(exc).__name__,
            request.method,
            request.url.path,
        )
        return unavailable()

    for kind in UNREACHABLE:
        app.add_exception_handler(kind, database_unreachable)

    @app.exception_handler(DataError)
    async def refused_by_database(request: Request, exc: DataError) -> JSONResponse:
        # the value is not quoted: it may be data (the engine hides bound parameters too)
        log.warning("the database refused a value on %s %s", request.method, request.url.path)
        message = "a value does not fit the database (out of range, too long, or a NUL byte)"
        return JSONResponse(error_body("invalid_request", message), 422)

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:
            return await database_unreachable(request, exc)
        log.error(
            "database error %s on %s %s",
            type(exc).__name__,
            request.method,
            request.url.path,
            exc_info=exc,
        )
        body = error_body("internal_error", "internal error; see the coordinator log")
        return JSONResponse(body, 500)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The server logs the traceback once more after this handler; the client gets no
        # detail of it, not even the exception's text (it may quote data).
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        body = error_body("internal_error", "internal error; see the coordinator log")
        return JSONResponse(body, 500)
