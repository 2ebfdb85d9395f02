"""Health, readiness, metrics and the audit log."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy import func, select, text

from api import audit
from api.deps import AdminUser, SessionDep
from api.models import AuditEvent, Node, Task, utcnow
from api.models import Query as QueryRow

router = APIRouter()


@router.get("/healthz", tags=["operations"])
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"])
def readyz(request: Request) -> dict[str, str]:
    with request.app.state.db.session() as db:
        db.execute(text("SELECT 1"))
    return {"status": "ready"}


@router.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
def metrics(_: AdminUser, db: SessionDep) -> str:
    """Prometheus text format."""
    lines = ["# TYPE tessera_queries gauge"]
    for state, count in db.execute(select(QueryRow.status, func.count()).group_by(QueryRow.status)):
        lines.append(f'tessera_queries{{status="{state}"}} {count}')
    lines.append("# TYPE tessera_tasks gauge")
    for state, count in db.execute(select(Task.status, func.count()).group_by(Task.status)):
        lines.append(f'tessera_tasks{{status="{state}"}} {count}')
    recent = utcnow() - timedelta(minutes=1)
    seen = db.scalar(select(func.count()).select_from(Node).where(Node.last_seen_at >= recent))
    total = db.scalar(select(func.count()).select_from(Node))
    lines += [
        "# TYPE tessera_nodes_seen_last_minute gauge",
        f"tessera_nodes_seen_last_minute {seen}",
        "# TYPE tessera_nodes gauge",
        f"tessera_nodes {total}",
    ]
    return "\n".join(lines) + "\n"


@router.get("/audit", tags=["audit"])
def audit_log(
    _: AdminUser,
    db: SessionDep,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
) -> list[dict[str, Any]]:
    events = db.scalars(select(AuditEvent).order_by(AuditEvent.id).offset(offset).limit(limit))
    return [
        {
            "id": e.id,
            "at": e.at,
            "actor": e.actor,
            "action": e.action,
            "subject": e.subject,
            "details": e.details,
            "hash": e.hash,
        }
        for e in events
    ]


@router.get("/audit/verify", tags=["audit"])
def audit_verify(_: AdminUser, db: SessionDep) -> dict[str, Any]:
    """Walk the hash chain: ok, or the first event that does not fit."""
    return audit.verify(db)
