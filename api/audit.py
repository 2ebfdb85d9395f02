"""The append-only, hash-chained audit log.

Each event's hash covers the previous event's hash and the event's own fields in canonical
JSON, so editing or deleting any past event breaks every hash after it. `verify` walks the
chain. Events never hold secrets, tokens, keys, data values or un-pooled summaries.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.models import AuditEvent, utcnow

GENESIS = "0" * 64


def _utc_text(at: datetime) -> str:
    """The same text for a timestamp whether the database kept its zone (PostgreSQL) or not."""
    if at.tzinfo is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    return at.isoformat(timespec="microseconds")


def _digest(
    prev_hash: str, at: datetime, actor: str, action: str, subject: str, details: dict[str, Any]
) -> str:
    body = json.dumps(
        {
            "at": _utc_text(at),
            "actor": actor,
            "action": action,
            "subject": subject,
            "details": details,
        },
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def record(db: Session, actor: str, action: str, subject: str, **details: Any) -> AuditEvent:
    """Append one event (in the caller's transaction)."""
    last = db.scalars(
        select(AuditEvent).order_by(AuditEvent.id.desc()).limit(1).with_for_update()
    ).first()
    prev = last.hash if last else GENESIS
    at = utcnow()
    clean = json.loads(json.dumps(details, default=str))
    event = AuditEvent(
        at=at,
        actor=actor,
        action=action,
        subject=subject,
        details=clean,
        prev_hash=prev,
        hash=_digest(prev, at, actor, action, subject, clean),
    )
    db.add(event)
    db.flush()
    return event


def verify(db: Session) -> dict[str, Any]:
    prev = GENESIS
    count = 0
    for event in db.scalars(select(AuditEvent).order_by(AuditEvent.id)):
        expected = _digest(prev, event.at, event.actor, event.action, event.subject, event.details)
        if event.prev_hash != prev or event.hash != expected:
            return {"ok": False, "entries": count, "first_bad_id": event.id}
        prev = event.hash
        count += 1
    return {"ok": True, "entries": count, "first_bad_id": None}
