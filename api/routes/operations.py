"""Health, readiness, metrics and the audit log."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api import audit
from api.deps import AdminUser, PageDep, SessionDep, label_query
from api.errors import RETRY_AFTER_S
from api.openapi import errors
from api.services.metrics import prometheus_text
from tessera.errors import error_body
from tessera.rest import (
    AuditPage,
    AuditVerification,
    CoordinatorKeyOut,
    Health,
    NodeAuditHeadPage,
    Ready,
)

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
        return JSONResponse(
            error_body("not_ready", "the database does not answer"),
            503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
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
    action: Annotated[str | None, label_query("Only events of this action.")] = None,
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
    """Walk the hash chain and check every event's signature by the coordinator key: ok, or
    the first event that does not fit and why. Events from before signing are counted as
    `legacy_unsigned` (the first signed event's hash covers them)."""
    return audit.verify(db)


@router.get(
    "/audit/node-heads",
    tags=["audit"],
    response_model=NodeAuditHeadPage,
    responses=errors(401, 403, 422),
)
def list_node_audit_heads(
    _: AdminUser,
    db: SessionDep,
    page: PageDep,
    node: Annotated[str | None, label_query("Only this node's.")] = None,
) -> dict[str, Any]:
    """The node audit log heads the nodes sent with their polls, oldest first: `tessera audit
    verify` checks that each still matches the node's log."""
    heads, cursor = audit.node_heads(db, page, node)
    return {"items": heads, "next_cursor": cursor}


@router.get(
    "/coordinator/key",
    tags=["audit"],
    response_model=CoordinatorKeyOut,
    responses=errors(422),
)
def coordinator_key(request: Request) -> dict[str, Any]:
    """The coordinator's public signing key and its fingerprint (public: no login). Nodes pin
    it; it signs every audit event and every task."""
    key = request.app.state.db.signer
    return {"public_key_pem": key.public_pem, "fingerprint": key.fingerprint}
