"""The append-only, hash-chained audit log.

Each event's hash covers the previous event's hash and the event's own fields in canonical
JSON, so editing or deleting any past event breaks every hash after it. `verify` walks the
chain. Events never hold secrets, tokens, keys, data values or un-pooled summaries.

Appends are serialised by a chain lock held until the transaction ends (a PostgreSQL advisory
lock; SQLite's write lock), so concurrent requests, and several coordinator replicas, extend
one chain instead of forking it.

An event's time is the session's clock (`api.clock.now`), as for every rule that reads a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api import clock
from api.db import write_lock
from api.models import AuditEvent
from api.pagination import PageRequest

GENESIS = "0" * 64
CHAIN_LOCK = 0x7E55E7A  # the advisory lock key of the audit chain (PostgreSQL)

log = logging.getLogger("tessera.coordinator.audit")


def _utc_text(at: datetime) -> str:
    """The same text for a timestamp whether the database kept its zone (PostgreSQL) or not."""
    if at.tzinfo is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    return at.isoformat(timespec="microseconds")


def canonical(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces (hashes and comparisons of results)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _digest(
    prev_hash: str, at: datetime, actor: str, action: str, subject: str, details: dict[str, Any]
) -> str:
    body = canonical(
        {
            "at": _utc_text(at),
            "actor": actor,
            "action": action,
            "subject": subject,
            "details": details,
        }
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def _lock_chain(db: Session) -> None:
    if db.get_bind().dialect.name == "postgresql":
        db.execute(select(func.pg_advisory_xact_lock(CHAIN_LOCK)))
    else:
        write_lock(db)


def record(db: Session, actor: str, action: str, subject: str, **details: Any) -> AuditEvent:
    """Append one event (in the caller's transaction, which then holds the chain lock)."""
    _lock_chain(db)
    last = db.scalars(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)).first()
    prev = last or GENESIS
    at = clock.now(db)
    clean = json.loads(canonical(details))
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
    log.info("%s %s %s", actor, action, subject, extra={"event": action, "fields": clean})
    return event


def events(
    db: Session, page: PageRequest, action: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the log (of one action, if given), oldest first, each event with its hash;
    and the next page's cursor."""
    stmt = select(AuditEvent)
    if action is not None:
        stmt = stmt.where(AuditEvent.action == action)
    rows, cursor = page.page(db.scalars(page.apply(stmt, AuditEvent.id)).all(), lambda e: e.id)
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
        for e in rows
    ], cursor


def verify(db: Session) -> dict[str, Any]:
    """Walk the chain: `{"ok", "entries" (events that verified), "first_bad_id"}`."""
    prev = GENESIS
    count = 0
    events = select(AuditEvent).order_by(AuditEvent.id).execution_options(yield_per=1000)
    for event in db.scalars(events):
        expected = _digest(prev, event.at, event.actor, event.action, event.subject, event.details)
        if event.prev_hash != prev or event.hash != expected:
            return {"ok": False, "entries": count, "first_bad_id": event.id}
        prev = event.hash
        count += 1
    return {"ok": True, "entries": count, "first_bad_id": None}
