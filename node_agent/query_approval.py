"""Manual approval of query shapes: the node's steward queue (SQLite in work_dir).

With `approval = "manual"` in the node's policy (or per dataset in `dataset_approval`), a task
whose query *shape* (`tessera.stewards.query_shape`: statistic, dataset, the statistic's
columns, group_by and the columns filtered on, never a constant) no steward of this node has
approved to be remembered waits here, before the node accepts it, until:

- a steward approves it (`tessera steward approve-query ID --key FILE [--remember]`): the
  task goes on; with `--remember`, later queries of the same shape go on without asking;
- a steward rejects it (`tessera steward reject-query ID --key FILE --reason ...`): refused,
  with the reason;
- `approval_timeout_s` passes (or the task's own deadline): refused, saying so.

A decision counts only as a signature by the key the policy lists for that steward
(`[policy.stewards]`, else `[policy.synthesis.stewards]`) over the node's name, the task, the
query's and the shape's hashes (`tessera.stewards.query_statement`); the file is not trusted,
every use re-verifies. The coordinator sees only that the task waits (its progress) and, if
refused, why.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node_agent.sqlite_store import open_schema, transaction
from tessera.errors import Conflict, NotFound
from tessera.stewards import (
    digest,
    fingerprint,
    query_shape,
    query_statement,
    sign,
    signature_refusal,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from node_agent.config import NodeSettings
    from smpc.query import QueryBase
    from tessera.schemas import TaskOut

log = logging.getLogger("tessera.node")

SCHEMA_VERSION = 1
POLL_S = 0.5
STATUSES = ("waiting", "approved", "rejected", "expired", "stopped")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS held_queries (
    task_id INTEGER PRIMARY KEY,
    query_id INTEGER NOT NULL,
    study_id INTEGER,
    researcher TEXT,
    dataset TEXT NOT NULL,
    statistic TEXT NOT NULL,
    query TEXT NOT NULL,
    shape TEXT NOT NULL,
    query_sha256 TEXT NOT NULL,
    shape_sha256 TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
    reason TEXT,
    created_at TEXT NOT NULL,
    deadline TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS query_decisions (
    task_id INTEGER NOT NULL REFERENCES held_queries (task_id),
    steward TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('approve', 'reject')),
    remember INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    at TEXT NOT NULL,
    key TEXT NOT NULL,
    signature TEXT NOT NULL,
    audited INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, steward)
);
CREATE INDEX IF NOT EXISTS held_queries_shape ON held_queries (shape_sha256)
"""


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class QueryDecision:
    task_id: int
    steward: str
    decision: str
    remember: bool
    reason: str
    at: datetime
    key: str
    signature: str
    audited: bool = False


@dataclass(frozen=True)
class HeldQuery:
    task_id: int
    query_id: int
    study_id: int | None
    researcher: str | None  # as the coordinator signed it in the task
    dataset: str
    statistic: str
    query: dict[str, Any]
    shape: dict[str, Any]
    query_sha256: str
    shape_sha256: str
    status: str
    reason: str | None
    created_at: datetime
    deadline: datetime
    decisions: tuple[QueryDecision, ...] = ()


class QueryQueue:
    """The held queries and the stewards' decisions; each call its own SQLite transaction
    (shared by the agent's task threads and `tessera steward` on the same host)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        open_schema(path, _SCHEMA, SCHEMA_VERSION, "query approval queue", wal=True)

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self.path, rows=True)

    def hold(
        self, task: TaskOut, query: dict[str, Any], shape: dict[str, Any], deadline: datetime
    ) -> HeldQuery:
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO held_queries (task_id, query_id, study_id, researcher, "
                "dataset, statistic, query, shape, query_sha256, shape_sha256, status, "
                "created_at, deadline) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'waiting', ?, ?)",
                (
                    task.id,
                    task.query_id,
                    task.study_id,
                    task.researcher,
                    task.dataset,
                    str(query.get("statistic")),
                    json.dumps(query),
                    json.dumps(shape),
                    digest(query),
                    digest(shape),
                    _now().isoformat(),
                    deadline.isoformat(),
                ),
            )
        return self.get(task.id)

    def set_status(self, task_id: int, status: str, reason: str | None = None) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE held_queries SET status = ?, reason = ? WHERE task_id = ?",
                (status, reason, task_id),
            )

    def decide(self, decision: QueryDecision) -> HeldQuery:
        """Record one steward's signed decision on a waiting query (once per steward)."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT status FROM held_queries WHERE task_id = ?", (decision.task_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no held query {decision.task_id} at this node")
            if row["status"] != "waiting":
                raise Conflict(f"query {decision.task_id} is {row['status']}, not waiting")
            before = conn.execute(
                "SELECT decision FROM query_decisions WHERE task_id = ? AND steward = ?",
                (decision.task_id, decision.steward),
            ).fetchone()
            if before is not None:
                raise Conflict(
                    f"{decision.steward} already decided on query {decision.task_id} "
                    f"({before['decision']})"
                )
            conn.execute(
                "INSERT INTO query_decisions (task_id, steward, decision, remember, reason, at, "
                "key, signature) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    decision.task_id,
                    decision.steward,
                    decision.decision,
                    int(decision.remember),
                    decision.reason,
                    decision.at.isoformat(),
                    decision.key,
                    decision.signature,
                ),
            )
        return self.get(decision.task_id)

    def mark_audited(self, task_id: int, steward: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE query_decisions SET audited = 1 WHERE task_id = ? AND steward = ?",
                (task_id, steward),
            )

    def get(self, task_id: int) -> HeldQuery:
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT * FROM held_queries WHERE task_id = ?", (task_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no held query {task_id} at this node", {"task_id": task_id})
            return _held(conn, row)

    def list(self, statuses: tuple[str, ...] | None = ("waiting",)) -> list[HeldQuery]:
        with self._transaction() as conn:
            rows = conn.execute("SELECT * FROM held_queries ORDER BY task_id").fetchall()
            return [_held(conn, r) for r in rows if statuses is None or r["status"] in statuses]

    def remembered(self, shape_sha256: str) -> list[HeldQuery]:
        """Earlier held queries of this shape that a steward approved with `remember`."""
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT h.* FROM held_queries h WHERE h.shape_sha256 = ? AND EXISTS (SELECT 1 "
                "FROM query_decisions d WHERE d.task_id = h.task_id AND d.decision = 'approve' "
                "AND d.remember = 1) ORDER BY h.task_id",
                (shape_sha256,),
            ).fetchall()
            return [_held(conn, r) for r in rows]


def _held(conn: sqlite3.Connection, row: sqlite3.Row) -> HeldQuery:
    decisions = conn.execute(
        "SELECT * FROM query_decisions WHERE task_id = ? ORDER BY at, steward", (row["task_id"],)
    ).fetchall()
    return HeldQuery(
        task_id=row["task_id"],
        query_id=row["query_id"],
        study_id=row["study_id"],
        researcher=row["researcher"],
        dataset=row["dataset"],
        statistic=row["statistic"],
        query=json.loads(row["query"]),
        shape=json.loads(row["shape"]),
        query_sha256=row["query_sha256"],
        shape_sha256=row["shape_sha256"],
        status=row["status"],
        reason=row["reason"],
        created_at=datetime.fromisoformat(row["created_at"]),
        deadline=datetime.fromisoformat(row["deadline"]),
        decisions=tuple(
            QueryDecision(
                task_id=d["task_id"],
                steward=d["steward"],
                decision=d["decision"],
                remember=bool(d["remember"]),
                reason=d["reason"],
                at=datetime.fromisoformat(d["at"]),
                key=d["key"],
                signature=d["signature"],
                audited=bool(d["audited"]),
            )
            for d in decisions
        ),
    )


def signed_query_decision(
    private: Ed25519PrivateKey,
    held: HeldQuery,
    *,
    node: str,
    steward: str,
    decision: str,
    remember: bool = False,
    reason: str = "",
    at: datetime | None = None,
) -> QueryDecision:
    """A steward's decision on a held query, signed (as `tessera steward approve-query`)."""
    from tessera.stewards import public_key_text

    key = public_key_text(private.public_key())
    at = at or _now()
    message = query_statement(
        node=node,
        task_id=held.task_id,
        query_sha256=held.query_sha256,
        shape_sha256=held.shape_sha256,
        steward=steward,
        key=key,
        decision=decision,
        remember=remember,
        at=at,
        reason=reason,
    )
    return QueryDecision(
        held.task_id, steward, decision, remember, reason, at, key, sign(private, message)
    )


def query_decision_refusal(
    d: QueryDecision, held: HeldQuery, *, node: str, stewards: dict[str, str]
) -> str | None:
    """Why a decision on `held` does not count (None: it does): its steward must be listed
    with the key it names, and its signature verify over this node, task, and the query's and
    shape's hashes recomputed from the held query."""
    if d.steward in stewards and (
        held.query_sha256 != digest(held.query) or held.shape_sha256 != digest(held.shape)
    ):
        return f"held query {held.task_id} does not hash to what was held"
    return signature_refusal(
        d.steward,
        d.key,
        d.signature,
        node=node,
        stewards=stewards,
        statement=lambda: query_statement(
            node=node,
            task_id=held.task_id,
            query_sha256=held.query_sha256,
            shape_sha256=held.shape_sha256,
            steward=d.steward,
            key=d.key,
            decision=d.decision,
            remember=d.remember,
            at=d.at,
            reason=d.reason,
        ),
        not_listed_key=lambda _: "their listed key",
    )


Audit = Callable[..., None]
Tell = Callable[..., None]


class QueryApprovals:
    """The agent's side: hold a task whose shape needs a steward, wait for a signed
    decision or the timeout (`check`)."""

    def __init__(
        self,
        settings: NodeSettings,
        audit: Audit,
        tell: Tell,
        stopping: threading.Event,
        poll_s: float = POLL_S,
    ) -> None:
        self.settings = settings
        self.audit = audit
        self.tell = tell
        self.stopping = stopping
        self.poll_s = poll_s
        self._queue: QueryQueue | None = None

    @property
    def queue(self) -> QueryQueue:
        if self._queue is None:
            self._queue = QueryQueue(self.settings.query_approvals_path)
        return self._queue

    def _refusal(self, d: QueryDecision, held: HeldQuery) -> str | None:
        return query_decision_refusal(
            d, held, node=self.settings.name, stewards=self.settings.policy.query_stewards
        )

    def check(self, task: TaskOut, query: QueryBase) -> str | None:
        """None when the task may go on (automatic approval, a remembered shape, or a
        steward's signed approval); otherwise why it is refused. Blocks while it waits."""
        policy = self.settings.policy
        if policy.approval_mode(task.dataset) != "manual":
            return None
        body, shape = query.to_json(), query_shape(query)
        shape_sha256 = digest(shape)
        for earlier in self.queue.remembered(shape_sha256):
            if earlier.shape != shape:
                continue
            for d in earlier.decisions:
                if d.decision == "approve" and d.remember and self._refusal(d, earlier) is None:
                    self.audit(
                        "query.shape_approved",
                        "approved",
                        task=task.id,
                        query=task.query_id,
                        shape=shape_sha256,
                        by_task=earlier.task_id,
                        steward=d.steward,
                    )
                    return None
        timeout = policy.approval_timeout_s
        deadline = min(_now() + timedelta(seconds=timeout), task.deadline)
        held = self.queue.hold(task, body, shape, deadline)
        subject = {"task": task.id, "query": task.query_id, "shape": shape_sha256}
        self.audit("query.held", "waiting", dataset=task.dataset, **subject)
        log.info(
            "task %d: waiting for a steward to approve its query shape (%s)",
            task.id,
            shape_sha256[:12],
            extra={"event": "query.held", "fields": subject},
        )
        self.tell(
            "progress",
            task.id,
            "steward_review",
            f"node {self.settings.name} holds this query until a steward approves its shape "
            f"(up to {timeout:g} s)",
        )
        while not self.stopping.wait(self.poll_s):
            held = self.queue.get(task.id)
            counted = None
            for d in held.decisions:
                refusal = self._refusal(d, held)
                if not d.audited:
                    if refusal is None:
                        done = {"approve": "approved", "reject": "rejected"}[d.decision]
                        self.audit(
                            f"steward.query_{done}",
                            done,
                            steward=d.steward,
                            key=fingerprint(d.key),
                            remember=d.remember,
                            reason=d.reason or None,
                            **subject,
                        )
                    else:
                        self.audit(
                            "steward.refused",
                            "refused",
                            steward=d.steward,
                            reason=refusal,
                            **subject,
                        )
                    self.queue.mark_audited(task.id, d.steward)
                if refusal is None and (counted is None or d.decision == "reject"):
                    counted = d
            if counted is not None and counted.decision == "reject":
                reason = f"a steward of node {self.settings.name} rejected this query" + (
                    f": {counted.reason}" if counted.reason else ""
                )
                self.queue.set_status(task.id, "rejected", reason)
                return reason
            if counted is not None:
                self.queue.set_status(task.id, "approved")
                return None
            if _now() >= held.deadline:
                reason = (
                    "the query's deadline passed while it waited for a steward"
                    if held.deadline >= task.deadline
                    else f"no steward of node {self.settings.name} approved this query's shape "
                    f"within {timeout:g} s (policy.approval_timeout_s)"
                )
                self.queue.set_status(task.id, "expired", reason)
                self.audit("query.expired", "refused", reason=reason, **subject)
                return reason
        self.queue.set_status(task.id, "stopped", "the node agent stopped")
        return "the node agent stopped before a steward decided on this query"
