"""The append-only, hash-chained, signed audit log.

Each event's hash covers the previous event's hash and the event's own fields in canonical
JSON, so editing or deleting any past event breaks every hash after it; and each event carries
the coordinator key's signature of its hash (`api.signing`), so whoever can write the database
but does not hold the key cannot recompute the chain: `verify` walks it and checks both.
Events from before signing (NULL signature) may only form the start of the chain, and the chain
must end with a signed event: the coordinator seals such a legacy prefix at its next start
(`seal_legacy`), after which the signed hash chain covers it too.

The key's holder could still rewrite and re-sign the chain; the nodes catch that: each node
records the signed chain head it sees with its polls (`head`), and `tessera audit verify`
compares them with the chain. The coordinator in turn keeps each node's signed log head
(`record_node_head`), which catches a node operator rewriting the node's log. Events never
hold secrets, tokens, keys, data values or un-pooled summaries.

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
from api.db import SIGNER_KEY, write_lock
from api.models import AuditEvent, Node, NodeAuditHead
from api.pagination import PageRequest
from api.signing import CoordinatorKey
from tessera.signing import audit_message, verify_ed25519

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


def signer(db: Session) -> CoordinatorKey:
    key: CoordinatorKey = db.info[SIGNER_KEY]
    return key


def record(db: Session, actor: str, action: str, subject: str, **details: Any) -> AuditEvent:
    """Append one signed event (in the caller's transaction, which then holds the chain
    lock)."""
    _lock_chain(db)
    last = db.scalars(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)).first()
    prev = last or GENESIS
    at = clock.now(db)
    clean = json.loads(canonical(details))
    digest = _digest(prev, at, actor, action, subject, clean)
    event = AuditEvent(
        at=at,
        actor=actor,
        action=action,
        subject=subject,
        details=clean,
        prev_hash=prev,
        hash=digest,
        signature=signer(db).sign_audit(digest),
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
            "prev_hash": e.prev_hash,
            "hash": e.hash,
            "signature": e.signature,
        }
        for e in rows
    ], cursor


def head(db: Session) -> dict[str, Any] | None:
    """The chain's last event: `{"seq" (its id), "hash", "signature"}`; None if empty."""
    row = db.execute(
        select(AuditEvent.id, AuditEvent.hash, AuditEvent.signature)
        .order_by(AuditEvent.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return {"seq": row.id, "hash": row.hash, "signature": row.signature}


def seal_legacy(db: Session) -> AuditEvent | None:
    """If the chain ends with an unsigned event (written before signing), append a signed
    `audit.signing_started` event: its signed hash covers every event before it."""
    _lock_chain(db)
    last = db.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(1)).first()
    if last is None or last.signature is not None:
        return None
    legacy = db.scalar(select(func.count()).where(AuditEvent.signature.is_(None)))
    return record(
        db,
        "system",
        "audit.signing_started",
        "audit",
        legacy_events=legacy,
        legacy_head=last.hash,
        key_fingerprint=signer(db).fingerprint,
    )


def verify_events(rows: Any, public_pem: str, fingerprint: str | None = None) -> dict[str, Any]:
    """Walk events (objects or dicts with `id, at, actor, action, subject, details, prev_hash,
    hash, signature`, oldest first): the chain, and each signature by the key `public_pem`.

    `{"ok", "entries" (events that verified), "first_bad_id", "problem", "signed",
    "legacy_unsigned" (events from before signing, covered by the first signed one),
    "key_fingerprint", "head"}`."""
    prev, count, signed, legacy = GENESIS, 0, 0, 0
    last: Any = None

    def field(event: Any, name: str) -> Any:
        return event[name] if isinstance(event, dict) else getattr(event, name)

    def answer(bad: Any = None, problem: str | None = None) -> dict[str, Any]:
        head = (
            None
            if last is None
            else {
                "seq": field(last, "id"),
                "hash": field(last, "hash"),
                "signature": field(last, "signature"),
            }
        )
        return {
            "ok": bad is None,
            "entries": count,
            "first_bad_id": bad,
            "problem": problem,
            "signed": signed,
            "legacy_unsigned": legacy,
            "key_fingerprint": fingerprint,
            "head": head,
        }

    for event in rows:
        at = field(event, "at")
        if isinstance(at, str):
            at = datetime.fromisoformat(at.replace("Z", "+00:00"))
        expected = _digest(
            prev,
            at,
            field(event, "actor"),
            field(event, "action"),
            field(event, "subject"),
            field(event, "details"),
        )
        event_id, signature = field(event, "id"), field(event, "signature")
        if field(event, "prev_hash") != prev:
            return answer(event_id, "does not chain to the event before it (removed or moved)")
        if field(event, "hash") != expected:
            return answer(event_id, "its hash does not match its content (edited)")
        if signature is None:
            if signed:
                return answer(event_id, "unsigned, after signing began")
            legacy += 1
        elif not verify_ed25519(public_pem, audit_message(expected), signature):
            return answer(event_id, "its signature is not the coordinator key's")
        else:
            signed += 1
        prev, count, last = expected, count + 1, event
    if last is not None and field(last, "signature") is None:
        return answer(
            field(last, "id"),
            "the chain ends with unsigned events (start the coordinator once to seal them)",
        )
    return answer()


def verify(db: Session) -> dict[str, Any]:
    """Walk the chain and check every signature with this coordinator's key."""
    key = signer(db)
    events = select(AuditEvent).order_by(AuditEvent.id).execution_options(yield_per=1000)
    return verify_events(db.scalars(events), key.public_pem, key.fingerprint)


def record_node_head(db: Session, node: Node, entries: int, last_hash: str, signature: str) -> bool:
    """Keep a node's audit log head, if it is new (True then)."""
    latest = db.execute(
        select(NodeAuditHead.entries, NodeAuditHead.last_hash)
        .where(NodeAuditHead.node_id == node.id)
        .order_by(NodeAuditHead.id.desc())
        .limit(1)
    ).first()
    if latest is not None and (latest.entries, latest.last_hash) == (entries, last_hash):
        return False
    known = db.scalar(
        select(NodeAuditHead.id).where(
            NodeAuditHead.node_id == node.id,
            NodeAuditHead.entries == entries,
            NodeAuditHead.last_hash == last_hash,
        )
    )
    if known is not None:
        return False
    db.add(
        NodeAuditHead(
            node_id=node.id,
            entries=entries,
            last_hash=last_hash,
            signature=signature,
            received_at=clock.now(db),
        )
    )
    db.flush()
    return True


def node_heads(
    db: Session, page: PageRequest, node: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """The node log heads received, oldest first (of one node, if named)."""
    stmt: Any = select(NodeAuditHead, Node.name).join(Node, Node.id == NodeAuditHead.node_id)
    if node is not None:
        stmt = stmt.where(Node.name == node)
    rows, cursor = page.page(
        db.execute(page.apply(stmt, NodeAuditHead.id)).all(), lambda r: r[0].id
    )
    return [
        {
            "id": h.id,
            "node": name,
            "entries": h.entries,
            "last_hash": h.last_hash,
            "signature": h.signature,
            "received_at": h.received_at,
        }
        for h, name in rows
    ], cursor
