"""ASGI middleware at the coordinator's edge: a request body limit enforced before anything
reads the body (authentication included), and security headers on every answer.

The body limit: a `Content-Length` beyond the route's limit is answered 413 at once, the body
unread; a body without one (chunked) is counted as it streams and cut off with 413 at the
limit. Every route gets `max_body_bytes` (1 MiB). Beyond that, and only from a node whose API
key is valid (checked before the body is read): a node's release upload (Parquet and HTML
report, each up to `release_max_bytes`) gets room for both, and its big reports (a result, a
dataset's schema, its privacy ledger) get `node_report_max_bytes`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from starlette.exceptions import HTTPException

from api.errors import UNREACHABLE, unavailable
from tessera.errors import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UPLOAD = re.compile(r"^/api/v1/synthesis-jobs/\d+/release$")
FORM_OVERHEAD = 2**20  # the card and the multipart framing beside the two files
# what a node reports that may outgrow the general limit: a query's result (a Kaplan-Meier
# curve per group, 10 000 grid points each), a dataset's schema (categorical levels), its
# privacy ledger (an entry per study and dataset)
NODE_REPORTS = re.compile(r"^/api/v1/(?:tasks/\d+/result|nodes/me/datasets/[^/]+|nodes/me/budget)$")

log = logging.getLogger("tessera.coordinator")

STRICT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# a release's report: self-contained HTML written by a node (inline style, data: images);
# sandboxed, no script, nothing fetched
REPORT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'; sandbox"
)
# Swagger UI and ReDoc: their bundled scripts and an inline start-up script, same origin only
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; worker-src 'self' blob:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
DOCS_PATHS = ("/docs", "/redoc", "/docs/oauth2-redirect")
HSTS = "max-age=31536000; includeSubDomains"


class BodyTooLarge(HTTPException):
    """Raised as a streamed body passes its limit: the route's body reader lets HTTP errors
    through as they are, and the error handler answers 413 with the limit in its details."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _limit_text(limit))
        self.details = {"limit": limit}


class BodyLimit:
    """413 for a request body beyond its route's limit, before the body is read.

    Every route takes `max_body_bytes`. The routes that carry big payloads (`large`: a path
    pattern and its limit) take more, and only from a caller `authenticated` says is a node:
    a body beyond the general limit is refused unless its node API key is valid, checked
    before a byte of the body is read (with `Content-Length`), or when a chunked body passes
    the general limit."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        large: Sequence[tuple[re.Pattern[str], int]] = (),
        authenticated: Callable[[Scope], Awaitable[bool]] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.large = list(large)
        self.authenticated = authenticated

    def limit(self, path: str) -> int:
        """The most this path may take from an authenticated node."""
        return next((n for p, n in self.large if p.match(path)), self.max_body_bytes)

    async def allowed(self, scope: Scope, size: int, limit: int) -> int | None:
        """None if a body of `size` bytes may pass, else the limit it breaks."""
        if size > limit:
            return limit
        if size > self.max_body_bytes and (
            self.authenticated is None or not await self.authenticated(scope)
        ):
            return self.max_body_bytes
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope.get("path", ""))
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _reject(send, 400, "bad_request", "invalid Content-Length", {})
                    return
                broken = await self.allowed(scope, declared, limit)
                if broken is not None:
                    await _too_large(send, broken)
                    return
        seen = 0
        checked = False  # a chunked body beyond the general limit: its caller checked once

        async def counted() -> Message:
            nonlocal seen, checked
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                broken = limit if seen > limit else None
                if broken is None and seen > self.max_body_bytes and not checked:
                    broken = await self.allowed(scope, seen, limit)
                    checked = True
                if broken is not None:
                    raise BodyTooLarge(broken)
            return message

        await self.app(scope, counted, send)


def bearer_token(scope: Scope) -> str | None:
    """The bearer token of a request's `Authorization` header, or None."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class LastResort:
    """An unexpected exception becomes a JSON 500 (a database that does not answer: 503), and
    the connection stays open.

    Starlette's outermost handler answers 500 too, but re-raises, and the server then closes
    the keep-alive connection (a client's next request on it is lost). Here, inside it, the
    exception is logged with its traceback (the database engine hides bound values) and
    answered; only one raised after the answer began is left to the server."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise
            where = (type(exc).__name__, scope.get("method", ""), scope.get("path", ""))
            if isinstance(exc, UNREACHABLE):
                log.warning("the database does not answer (%s) on %s %s", *where)
                await unavailable()(scope, receive, send)
                return
            log.error("unhandled %s on %s %s", *where, exc_info=exc)
            await _answer(
                send, 500, "internal_error", "internal error; see the coordinator log", {}
            )


class SecurityHeaders:
    """`nosniff`, `DENY` framing, no referrer, a strict Content-Security-Policy (relaxed only
    for the documentation pages and sandboxed for release reports), HSTS in production, and
    `Cache-Control: no-store` on API answers (they are a user's, behind their token)."""

    def __init__(self, app: ASGIApp, production: bool) -> None:
        self.app = app
        self.production = production

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in self.headers(path, headers):
                    if name not in present:
                        headers.append((name, value))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)

    def headers(self, path: str, current: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        content_type = next((v for n, v in current if n.lower() == b"content-type"), b"")
        if path in DOCS_PATHS:
            csp = DOCS_CSP
        elif content_type.startswith(b"text/html"):
            csp = REPORT_CSP
        else:
            csp = STRICT_CSP
        found = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
            (b"content-security-policy", csp.encode()),
            (b"cross-origin-opener-policy", b"same-origin"),
        ]
        if path.startswith("/api/"):
            found.append((b"cache-control", b"no-store"))
        if self.production:
            found.append((b"strict-transport-security", HSTS.encode()))
        return found


def _limit_text(limit: int) -> str:
    return f"the request body is larger than this route accepts ({limit} bytes)"


async def _too_large(send: Send, limit: int) -> None:
    await _reject(send, 413, "too_large", _limit_text(limit), {"limit": limit})


async def _reject(
    send: Send, status: int, code: str, message: str, details: dict[str, Any]
) -> None:
    """An answer before the body was read: the connection closes (the body is not wanted)."""
    await _answer(send, status, code, message, details, [(b"connection", b"close")])


async def _answer(
    send: Send,
    status: int,
    code: str,
    message: str,
    details: dict[str, Any],
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(error_body(code, message, details)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
