"""Health, readiness, metrics and the audit log."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api import audit
from api.deps import AdminUser, PageDep, SessionDep
from api.openapi import errors
from api.services.metrics import prometheus_text
from tessera.errors import error_body
from tessera.rest import AuditPage, AuditVerification, Health, Ready

log = logging.getLogger("tessera.coordinator")

router = APIRouter()


@router.get("/healthz", tags=["operations"], response_model=Health, responses=errors(422))
def health() -> dict[str, str]:
    """The process answers (liveness)."""
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"], response_model=Ready, responses=errors(422, 503))
def readiness(request: Request) -> Any:
    """Ready when the database answers."""
    try:
        with request.app.state.db.session() as db:
            db.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        log.warning("not ready: the database does not answer (%s)", type(exc).__name__)
        return JSONResponse(error_body("not_ready", "the database does not answer"), 503)
    return {"status": "ready"}


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    tags=["operations"],
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **errors(401, 403, 422),
    },
)
def metrics(_: AdminUser, db: SessionDep) -> str:
    """Prometheus text format: queries and tasks by status, nodes seen in the last minute."""
    return prometheus_text(db)


@router.get("/audit", tags=["audit"], response_model=AuditPage, responses=errors(401, 403, 422))
def list_audit_events(
    _: AdminUser,
    db: SessionDep,
    page: PageDep,
    action: Annotated[str | None, Query(description="Only events of this action.")] = None,
) -> dict[str, Any]:
    """The audit log, oldest first, a page at a time."""
    events, cursor = audit.events(db, page, action)
    return {"items": events, "next_cursor": cursor}


@router.get(
    "/audit/verify",
    tags=["audit"],
    response_model=AuditVerification,
    responses=errors(401, 403, 422),
)
def verify_audit(_: AdminUser, db: SessionDep) -> dict[str, Any]:
    """Walk the hash chain: ok, or the first event that does not fit."""
    return audit.verify(db)
