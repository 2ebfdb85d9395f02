"""One place that turns every error into `{"error": {"code", "message", "details"}}` with the
HTTP status the coordinator gives its code (`STATUS`)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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
    error_body,
)

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
            {
                "loc": _location(e.get("loc", ())),
                "msg": str(e.get("msg", "")).removeprefix("Value error, "),
            }
            for e in exc.errors()
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
        return JSONResponse(error_body(code, message), exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The server logs the traceback once more after this handler; the client gets no
        # detail of it, not even the exception's text (it may quote data).
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        body = error_body("internal_error", "internal error; see the coordinator log")
        return JSONResponse(body, 500)
