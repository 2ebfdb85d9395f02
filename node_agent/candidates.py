"""The node's synthetic-data candidates and its stewards' decisions (SQLite in work_dir).

The node agent writes a candidate when a synthesis job starts and updates it as the job goes:

    training -> awaiting_review -> approved -> released
             -> gated (a release gate failed: no steward is asked, nothing is uploaded)
    awaiting_review -> rejected (one steward's rejection is enough)      any -> failed

The data stewards decide with `tessera steward approve|reject --key FILE` on the node's host,
which writes a signed decision here; the agent sees it within a second, checks its signature
against the policy's keys, records it in the node's audit log, and acts: a rejection is
reported (nothing is uploaded), the `approvals_required`-th distinct key's approval makes the
candidate `approved`, and the agent uploads it. A candidate stays `approved` until the upload
succeeded, so a restarted agent finishes it.

This file is not trusted: whoever can write the node's work_dir can write it. A decision counts
only by its signature (`tessera.stewards`), checked by the agent on every use, and the agent
re-hashes the data, card and report before uploading them. Decisions recorded before schema 2
(unsigned, table `decisions`) are not read.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from node_agent.sqlite_store import open_schema, transaction
from tessera.errors import Conflict, NotFound
from tessera.schemas import ReleaseContent, StewardDecision

SCHEMA_VERSION = 2
STATUSES = ("training", "awaiting_review", "gated", "approved", "released", "rejected", "failed")
OPEN = ("training", "awaiting_review", "approved")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS candidates (
    job_id INTEGER PRIMARY KEY,
    request_id INTEGER NOT NULL,
    study_id INTEGER NOT NULL,
    dataset TEXT NOT NULL,
    generator TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    spec TEXT NOT NULL,
    folder TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
    approvals_required INTEGER,
    card TEXT,
    gates TEXT,
    release_id INTEGER,
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS steward_decisions (
    job_id INTEGER NOT NULL REFERENCES candidates (job_id),
    steward TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('approve', 'reject')),
    reason TEXT NOT NULL DEFAULT '',
    at TEXT NOT NULL,
    key TEXT NOT NULL,
    data_sha256 TEXT NOT NULL,
    card_sha256 TEXT NOT NULL,
    report_sha256 TEXT NOT NULL,
    signature TEXT NOT NULL,
    audited INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, steward)
)
"""


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class Candidate:
    job_id: int
    request_id: int
    study_id: int
    dataset: str
    generator: str
    requested_by: str
    spec: dict[str, Any]
    folder: Path
    status: str
    approvals_required: int | None
    card: dict[str, Any] | None  # the release card's draft: everything but the approvals
    gates: list[dict[str, Any]] | None
    release_id: int | None
    error: str | None
    created_at: str
    updated_at: str
    decisions: tuple[StewardDecision, ...] = ()

    @property
    def approvals(self) -> list[StewardDecision]:
        return [d for d in self.decisions if d.decision == "approve"]

    @property
    def rejections(self) -> list[StewardDecision]:
        return [d for d in self.decisions if d.decision == "reject"]

    def content(self) -> ReleaseContent:
        """The release card as the stewards sign it (its draft and gates, no approvals)."""
        assert self.card is not None and self.gates is not None
        return ReleaseContent.model_validate({**self.card, "gates": self.gates})

    def hashes(self) -> dict[str, str]:
        """What a steward signs of this candidate as it is on disk now: the SHA-256 of the
        data file and of the report, and the card's digest."""
        return {
            "data_sha256": hashlib.sha256(self.data_path.read_bytes()).hexdigest(),
            "card_sha256": self.content().digest(),
            "report_sha256": hashlib.sha256(self.report_path.read_bytes()).hexdigest(),
        }

    @property
    def report_path(self) -> Path:
        return self.folder / "report.html"

    @property
    def data_path(self) -> Path:
        return self.folder / "synthetic.parquet"


class CandidateStore:
    """Candidates and decisions; safe to share between threads and processes (each call is its
    own SQLite transaction)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        open_schema(path, _SCHEMA, SCHEMA_VERSION, "candidate store", wal=True)

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self.path, rows=True)

    # ---- the agent's side -----------------------------------------------------------------

    def create(
        self,
        job_id: int,
        request_id: int,
        study_id: int,
        dataset: str,
        generator: str,
        requested_by: str,
        spec: dict[str, Any],
        folder: Path,
    ) -> bool:
        """A new candidate in `training`; False if the job is known already (offered twice)."""
        now = _now()
        with self._transaction() as conn:
            known = conn.execute("SELECT 1 FROM candidates WHERE job_id = ?", (job_id,)).fetchone()
            if known:
                return False
            conn.execute(
                "INSERT INTO candidates (job_id, request_id, study_id, dataset, generator, "
                "requested_by, spec, folder, status, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'training', ?, ?)",
                (
                    job_id,
                    request_id,
                    study_id,
                    dataset,
                    generator,
                    requested_by,
                    json.dumps(spec),
                    str(folder),
                    now,
                    now,
                ),
            )
        return True

    def set_candidate(
        self,
        job_id: int,
        card: dict[str, Any],
        gates: list[dict[str, Any]],
        approvals_required: int,
    ) -> str:
        """Record a trained candidate: `awaiting_review` if every gate passed, else `gated`."""
        status = "awaiting_review" if all(g["passed"] for g in gates) else "gated"
        with self._transaction() as conn:
            self._expect(conn, job_id, ("training",))
            conn.execute(
                "UPDATE candidates SET status = ?, card = ?, gates = ?, approvals_required = ?, "
                "updated_at = ? WHERE job_id = ?",
                (status, json.dumps(card), json.dumps(gates), approvals_required, _now(), job_id),
            )
        return status

    def set_status(
        self,
        job_id: int,
        status: str,
        *,
        expect: tuple[str, ...] | None = None,
        error: str | None = None,
        release_id: int | None = None,
    ) -> None:
        with self._transaction() as conn:
            if expect is not None:
                self._expect(conn, job_id, expect)
            conn.execute(
                "UPDATE candidates SET status = ?, error = COALESCE(?, error), "
                "release_id = COALESCE(?, release_id), updated_at = ? WHERE job_id = ?",
                (status, error, release_id, _now(), job_id),
            )

    def unaudited(self) -> list[tuple[int, str, StewardDecision | None]]:
        """Decisions the agent has not recorded in its audit log yet, oldest first: (job,
        steward, the decision, or None where the row does not read as a signed decision)."""
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT * FROM steward_decisions WHERE audited = 0 ORDER BY at, job_id, steward"
            ).fetchall()
        return [(int(r["job_id"]), str(r["steward"]), _decision(r)) for r in rows]

    def mark_audited(self, job_id: int, steward: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE steward_decisions SET audited = 1 WHERE job_id = ? AND steward = ?",
                (job_id, steward),
            )

    # ---- the stewards' side ---------------------------------------------------------------

    def decide(self, job_id: int, decision: StewardDecision) -> Candidate:
        """Record one steward's signed decision on a candidate awaiting review (once per
        steward, and once per key)."""
        steward = decision.steward
        with self._transaction() as conn:
            self._expect(conn, job_id, ("awaiting_review",))
            before = conn.execute(
                "SELECT steward, decision FROM steward_decisions WHERE job_id = ? "
                "AND (steward = ? OR key = ?)",
                (job_id, steward, decision.key),
            ).fetchone()
            if before is not None:
                who = steward if before["steward"] == steward else f"this key (as {before[0]})"
                raise Conflict(
                    f"{who} already decided on candidate {job_id} ({before['decision']})",
                    {"job_id": job_id, "steward": steward},
                )
            conn.execute(
                "INSERT INTO steward_decisions (job_id, steward, decision, reason, at, key, "
                "data_sha256, card_sha256, report_sha256, signature) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    steward,
                    decision.decision,
                    decision.reason,
                    decision.at.isoformat(),
                    decision.key,
                    decision.data_sha256,
                    decision.card_sha256,
                    decision.report_sha256,
                    decision.signature,
                ),
            )
        return self.get(job_id)

    # ---- reading --------------------------------------------------------------------------

    def get(self, job_id: int) -> Candidate:
        with self._transaction() as conn:
            row = conn.execute("SELECT * FROM candidates WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"no candidate {job_id} at this node", {"job_id": job_id})
            return _candidate(conn, row)

    def list(self, statuses: tuple[str, ...] | None = None) -> list[Candidate]:
        with self._transaction() as conn:
            rows = conn.execute("SELECT * FROM candidates ORDER BY job_id").fetchall()
            return [
                _candidate(conn, r) for r in rows if statuses is None or r["status"] in statuses
            ]

    @staticmethod
    def _expect(conn: sqlite3.Connection, job_id: int, statuses: tuple[str, ...]) -> None:
        row = conn.execute("SELECT status FROM candidates WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no candidate {job_id} at this node", {"job_id": job_id})
        if row["status"] not in statuses:
            raise Conflict(
                f"candidate {job_id} is {row['status']}, not {' or '.join(statuses)}",
                {"job_id": job_id, "status": row["status"]},
            )


def _decision(row: sqlite3.Row) -> StewardDecision | None:
    try:
        return StewardDecision(
            steward=row["steward"],
            decision=row["decision"],
            at=datetime.fromisoformat(row["at"]),
            reason=row["reason"],
            key=row["key"],
            data_sha256=row["data_sha256"],
            card_sha256=row["card_sha256"],
            report_sha256=row["report_sha256"],
            signature=row["signature"],
        )
    except (ValidationError, ValueError, TypeError):
        return None


def _candidate(conn: sqlite3.Connection, row: sqlite3.Row) -> Candidate:
    decisions = conn.execute(
        "SELECT * FROM steward_decisions WHERE job_id = ? ORDER BY at, steward", (row["job_id"],)
    ).fetchall()
    return Candidate(
        job_id=row["job_id"],
        request_id=row["request_id"],
        study_id=row["study_id"],
        dataset=row["dataset"],
        generator=row["generator"],
        requested_by=row["requested_by"],
        spec=json.loads(row["spec"]),
        folder=Path(row["folder"]),
        status=row["status"],
        approvals_required=row["approvals_required"],
        card=json.loads(row["card"]) if row["card"] else None,
        gates=json.loads(row["gates"]) if row["gates"] else None,
        release_id=row["release_id"],
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        decisions=tuple(d for d in map(_decision, decisions) if d is not None),
    )
