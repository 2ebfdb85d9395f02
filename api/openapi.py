"""The coordinator's OpenAPI contract and its documentation pages.

- Every operation has a readable id (its route function's name in camelCase: `submitQuery`),
  a tag per resource, a typed 2xx answer (`tessera.rest`) and the error envelope
  (`ErrorBody`) on each error status it documents (`errors(...)`).
- The query language and the results come from the statistics registry: the components
  `Query` (a union discriminated on `statistic`) and `QueryResult` are generated from
  `smpc.statistics` when the spec is first asked for, so a new statistic appears by itself.
- `/docs` (Swagger UI) and `/redoc` are served from assets packaged with the project
  (`fastapi-offline`'s copies of Swagger UI and ReDoc): a hospital network has no CDN.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import TypeAdapter
from starlette.responses import HTMLResponse

from tessera.rest import ErrorBody

ASSETS_URL = "/docs-assets"
DESCRIPTIONS = {
    400: "The body cannot be parsed (malformed, or nested too deeply).",
    401: "Not authenticated: no, an invalid or an expired bearer token.",
    403: "Authenticated but not allowed (role, or a node's published policy).",
    404: "No such resource, or not visible to the caller.",
    409: "Conflicts with the resource's state (or a privacy budget).",
    413: "The request body is larger than the coordinator accepts (1 MiB, or an upload's limit).",
    422: "Invalid input: body, query parameters (unknown ones included) or path.",
    429: "Too many requests (failed logins; queries or synthesis requests running at once, "
    "or submitted per minute): wait the `Retry-After` header's seconds.",
    502: "A node or a protocol failed.",
    503: "The database does not answer: try again after `Retry-After` seconds.",
}
TAGS = [
    {"name": "auth", "description": "Bearer tokens for users."},
    {"name": "users", "description": "User accounts (administrators manage them)."},
    {"name": "organisations", "description": "Hospitals and other member organisations."},
    {"name": "nodes", "description": "Node agents: enrolment, keys, and what a node says."},
    {"name": "datasets", "description": "Dataset schemas nodes register (never rows)."},
    {"name": "studies", "description": "Studies: members, organisations, datasets, budgets."},
    {"name": "queries", "description": "MPC queries in a study, their dry runs and results."},
    {"name": "tasks", "description": "A node's part in a query (node agents only)."},
    {"name": "synthesis", "description": "Synthesis requests to a study's nodes."},
    {
        "name": "synthesis-jobs",
        "description": "A node's part in a synthesis request (node agents only).",
    },
    {"name": "releases", "description": "Published synthetic datasets and their reports."},
    {"name": "audit", "description": "The hash-chained audit log."},
    {"name": "operations", "description": "Health, readiness, metrics."},
]


def operation_id(route: APIRoute) -> str:
    """`submit_query` -> `submitQuery`."""
    head, *rest = route.name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route: each status with the error envelope as its schema."""
    return {s: {"model": ErrorBody, "description": DESCRIPTIONS[s]} for s in statuses}


def registry_components() -> dict[str, Any]:
    """`Query` and `QueryResult`, and every model they use, as OpenAPI components."""
    from smpc.statistics import Query, result_type

    components: dict[str, Any] = {}
    for name, kind in (("Query", Query), ("QueryResult", result_type())):
        schema = TypeAdapter(kind).json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[name] = schema
    return components


def install(app: FastAPI) -> None:
    """The spec (with the registry's components) and the offline documentation pages."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=TAGS,
            )
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in registry_components().items():
                schemas.setdefault(name, schema)
            _errors_as_json(spec)
            _edge_errors_documented(spec)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    assets = resources.files("fastapi_offline") / "static"
    app.mount(ASSETS_URL, StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API",
            oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )


def _errors_as_json(spec: dict[str, Any]) -> None:
    """Errors are JSON whatever a route answers on success (a text route's error responses
    would otherwise be documented in its media type)."""
    for operations in spec["paths"].values():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                content = response.get("content", {})
                if status >= "400" and content and "application/json" not in content:
                    response["content"] = {"application/json": next(iter(content.values()))}


# operations that answer without the database
NO_DATABASE = frozenset({"health", "coordinatorKey"})


def _edge_errors_documented(spec: dict[str, Any]) -> None:
    """What the edge may answer on any operation: 400 and 413 where it takes a body (a body
    that cannot be parsed; the body limit, `api.middleware`, stands before every route), and
    503 with `Retry-After` wherever the database is used (it does not answer)."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    retry = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}
    for operations in spec["paths"].values():
        for operation in operations.values():
            responses = operation["responses"]
            wanted = [400, 413] if "requestBody" in operation else []
            if operation["operationId"] not in NO_DATABASE:
                wanted.append(503)
            for status in wanted:
                if str(status) not in responses:
                    responses[str(status)] = {"description": DESCRIPTIONS[status], "content": error}
                if status == 503:
                    responses["503"]["headers"] = retry


_CAMEL = re.compile(r"^[a-z]+(?:[A-Z][a-z0-9]*)*$")


def readable(operation: str) -> bool:
    """Whether an operation id reads as camelCase words (contract tests)."""
    return bool(_CAMEL.match(operation))
