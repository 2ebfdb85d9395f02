"""ASGI middleware at the coordinator's edge: a request body limit enforced before anything
reads the body (authentication included), and security headers on every answer.

The body limit: a `Content-Length` beyond the route's limit is answered 413 at once, the body
unread; a body without one (chunked) is counted as it streams and cut off with 413 at the
limit. JSON routes get `max_body_bytes` (1 MiB); a node's release upload (Parquet and HTML
report, each up to `release_max_bytes`) gets room for both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

from tessera.errors import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UPLOAD = re.compile(r"^/api/v1/synthesis-jobs/\d+/release$")
FORM_OVERHEAD = 2**20  # the card and the multipart framing beside the two files

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


class BodyLimit:
    """413 for a request body beyond its route's limit, before the body is read."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, upload_max_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.upload_max_bytes = upload_max_bytes

    def limit(self, path: str) -> int:
        return self.upload_max_bytes if UPLOAD.match(path) else self.max_body_bytes

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
                if declared > limit:
                    await _too_large(send, limit)
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # the route's body reader re-raises HTTP errors as they are: a 413 answer
                    raise HTTPException(413, _limit_text(limit))
            return message

        await self.app(scope, counted, send)


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
    body = json.dumps(error_body(code, message, details)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
