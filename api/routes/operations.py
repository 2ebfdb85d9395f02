"""Health, readiness, metrics and the audit log."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api import audit
from api.deps import AdminUser, SessionDep
from api.services.metrics import prometheus_text

log = logging.getLogger("tessera.coordinator")

router = APIRouter()


@router.get("/healthz", tags=["operations"])
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"], responses={503: {"description": "not ready"}})
def readyz(request: Request) -> Any:
    """Ready when the database answers."""
    try:
        with request.app.state.db.session() as db:
            db.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        log.warning("not ready: the database does not answer (%s)", type(exc).__name__)
        error = {"code": "not_ready", "message": "the database does not answer", "details": {}}
        return JSONResponse({"error": error}, 503)
    return {"status": "ready"}


@router.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
def metrics(_: AdminUser, db: SessionDep) -> str:
    """Prometheus text format: queries and tasks by status, nodes seen in the last minute."""
    return prometheus_text(db)


@router.get("/audit", tags=["audit"])
def audit_log(
    _: AdminUser,
    db: SessionDep,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
) -> list[dict[str, Any]]:
    """The audit log, oldest first."""
    return audit.events(db, limit, offset)


@router.get("/audit/verify", tags=["audit"])
def audit_verify(_: AdminUser, db: SessionDep) -> dict[str, Any]:
    """Walk the hash chain: ok, or the first event that does not fit."""
    return audit.verify(db)
