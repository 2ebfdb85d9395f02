"""`Idempotency-Key`: a POST that creates work or spends privacy budget, retried with the same
key, returns the first answer and creates (and spends) nothing twice.

The key belongs to the user who sent it. The first request with a key claims it (a row, unique
per user and key) *before* doing its work, in the same transaction: so a retry that arrives
while the first still runs waits for it (PostgreSQL's unique index; SQLite's write lock), then
finds the claim committed and replays its answer; if the first failed, its claim rolled back
with its work and the retry runs afresh. Only successful answers are kept: an error is not
replayed, the request can be corrected and sent again with the same key. A key used again for
another request (another operation or another body) is a 409. Keys are kept
`idempotency_ttl_s` (a day by default), then forgotten by the sweeper.

A node agent's steps on its tasks and synthesis jobs (accept, result, ...) are idempotent
without a key (`node_step`): the request's fingerprint is kept with the first successful answer
per node, subject and step, so a node that retries after a lost reply (or a coordinator that
crashed between its commit and its reply) is answered the same and nothing happens twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi.responses import JSONResponse
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import audit, clock
from api.db import write_lock
from api.models import IdempotencyKey, Node, NodeReply, User
from tessera.errors import Conflict, InvalidRequest

HEADER = "Idempotency-Key"
MAX_KEY = 255
REPLAYED = "Idempotent-Replayed"  # the header of an answer replayed to a retry


@dataclass(frozen=True)
class Answer:
    """An answer as it is sent (its body JSON-ready), and whether it is a replay."""

    status_code: int
    body: Any
    replayed: bool = False


def respond(answer: Answer) -> JSONResponse:
    """The answer as a response; a replay says so in `Idempotent-Replayed: true`."""
    headers = {REPLAYED: "true"} if answer.replayed else None
    return JSONResponse(answer.body, answer.status_code, headers=headers)


def _fingerprint(operation: str, body: Any) -> str:
    return hashlib.sha256(audit.canonical([operation, body]).encode()).hexdigest()


def check_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY or not key.isprintable():
        raise InvalidRequest(
            f"{HEADER} must be 1 to {MAX_KEY} printable characters",
            {"errors": [{"loc": ["header", HEADER], "msg": "not a usable key"}]},
        )
    return key


def _stored(db: Session, user: User, key: str) -> IdempotencyKey | None:
    return db.scalars(
        select(IdempotencyKey).where(IdempotencyKey.user_id == user.id, IdempotencyKey.key == key)
    ).first()


def _replay(row: IdempotencyKey, fingerprint: str) -> Answer:
    if row.request_hash != fingerprint:
        raise Conflict(
            f"this {HEADER} was used for another request; use a new key for a new request",
            {"key": row.key},
        )
    assert row.status_code is not None
    return Answer(row.status_code, row.response, replayed=True)


def once(
    db: Session,
    user: User,
    key: str | None,
    operation: str,
    body: Any,
    work: Callable[[], Answer],
) -> Answer:
    """Run `work` (which must not commit) once per user and key; a retry gets the stored
    answer. Without a key, `work` simply runs. The caller commits."""
    if key is None:
        return work()
    key = check_key(key)
    fingerprint = _fingerprint(operation, body)
    write_lock(db)  # SQLite: a retry waits here for the first request, then reads its claim
    row = _stored(db, user, key)
    if row is not None:
        return _replay(row, fingerprint)
    claim = IdempotencyKey(
        user_id=user.id, key=key, request_hash=fingerprint, created_at=clock.now(db)
    )
    db.add(claim)
    try:
        db.flush()
    except IntegrityError:  # PostgreSQL: another request with this key committed meanwhile
        db.rollback()
        row = _stored(db, user, key)
        assert row is not None
        return _replay(row, fingerprint)
    answer = work()
    claim.status_code, claim.response = answer.status_code, answer.body  # JSON-ready already
    db.flush()
    return answer


def node_step(
    db: Session,
    node: Node,
    subject: tuple[str, int],
    step: str,
    body: Any,
    lock: Callable[[], Any],
    work: Callable[[], Answer],
    repeatable: bool = False,
) -> Answer:
    """Run a node's `step` on `subject` (`("task", id)` or `("synthesis_job", id)`) once: the
    same request again (the same step and canonical body) is answered as the first was, and
    `work` does not run. Another request for a step already answered is a 409, unless the
    step is `repeatable` (progress: the newer one is recorded). Errors are not kept: a request
    that failed changed nothing and may be sent again.

    `lock` takes the subject's lock (404 for another node's subject) and returns it: every
    request on one subject is then serialized, so the lookup and the claim cannot race. `work`
    must not commit; the caller commits."""
    locked = lock()
    fingerprint = _fingerprint(step, body)
    kind, subject_id = subject
    key = f"{kind}:{subject_id}"
    row = db.scalars(
        select(NodeReply).where(
            NodeReply.node_id == node.id, NodeReply.subject == key, NodeReply.step == step
        )
    ).first()
    if row is not None and row.request_hash == fingerprint:
        return Answer(row.status_code, row.response, replayed=True)
    if row is not None and not repeatable:
        what = f"{kind.replace('_', ' ')} {subject_id}"
        raise Conflict(
            f"{what} already took another {step} from node {node.name} (the first one stands; "
            "a retry must repeat the first request exactly)",
            {
                f"{kind}_id": subject_id,
                "step": step,
                "status": getattr(locked, "status", None),
            },
        )
    answer = work()
    now = clock.now(db)
    if row is None:
        row = NodeReply(node_id=node.id, subject=key, step=step, created_at=now)
        db.add(row)
    row.request_hash, row.created_at = fingerprint, now
    row.status_code, row.response = answer.status_code, answer.body  # JSON-ready already
    db.flush()
    return answer


def forget_older_than(db: Session, ttl_s: float, now: datetime | None = None) -> int:
    """Delete the keys claimed, and the node replies kept, more than `ttl_s` ago; returns
    how many."""
    cutoff = (now or clock.now(db)) - timedelta(seconds=ttl_s)
    keys = db.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff))
    replies = db.execute(delete(NodeReply).where(NodeReply.created_at < cutoff))
    return int(keys.rowcount or 0) + int(replies.rowcount or 0)  # type: ignore[attr-defined]
