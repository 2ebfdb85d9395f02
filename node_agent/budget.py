"""The node's differential-privacy ledger: one per dataset, composed in zCDP, with an allocation
per study.

Every charge is a zero-concentrated-DP cost rho (`tessera.privacy`): a query with `dp` is pure
epsilon-DP inside MPC (`smpc.dp`), so it costs rho = epsilon^2 / 2; a DP synthesis (MST) costs
the rho its own accounting is given for the request's (epsilon, delta)
(`synth.accounting.rho_for`). zCDP composes by adding rho.

Limits are written as (epsilon, delta) in the policy and converted to rho by
epsilon(delta) = rho + 2 sqrt(rho ln(1/delta)), i.e. rho = (sqrt(ln(1/delta) + epsilon) -
sqrt(ln(1/delta)))^2 (`tessera.privacy.rho_budget`). Each dataset has a total over all studies
(`policy.dp_epsilon_total` / `dp_delta_total` or the dataset's `epsilon_total` /
`delta_total`), on by default: with none configured it equals the per-study budget, so a new
study does not start with a fresh budget on the same patients. Each study has an allocation out
of that total (`policy.dp_epsilon_budget` / `dp_delta_budget` or the dataset's `epsilon` /
`delta`). A charge must fit both: a study never spends more than its allocation, the dataset
never more than its total. What is spent is shown as rho and as the (epsilon, delta) it amounts
to at the limit's delta.

A charge is taken when this node accepts the task or the synthesis job, before its party runs
or its generator trains, and is never refunded: once accepted, a noisy result may be opened
(or a model trained) even if the run fails afterwards, so the conservative assumption is that
the loss happened.

The ledger is `work_dir/budget.sqlite3` (the standard library's sqlite3). A charge is one
transaction that takes the database's write lock (`BEGIN IMMEDIATE`), sums what was spent,
compares the sums with both limits and appends the charge: concurrent charges, from task threads
or from another process on the same file, never overspend, and a crash leaves the whole charge
or none of it. Query costs are kept as exact decimals (epsilon 0.1 costs exactly 0.005).
Schema 2 (rho); a schema-1 ledger (basic composition: epsilon and delta per charge, all of them
pure-DP queries) is migrated when opened, each charge's rho being epsilon^2 / 2.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Literal

from node_agent.sqlite_store import open_schema, transaction
from tessera.errors import BudgetExceeded, ConfigInvalid
from tessera.privacy import (
    ZERO,
    conversion_delta,
    epsilon_of,
    exact,
    largest_epsilon,
    left,
    query_rho,
    text,
)
from tessera.schemas import BudgetSpent, DatasetSpent, DPBudget, DPTotal, NodeBudgetReport

SCHEMA_VERSION = 2

Kind = Literal["query", "synthesis"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    study_id INTEGER NOT NULL,
    dataset TEXT NOT NULL,
    epsilon TEXT,
    delta TEXT,
    task_id INTEGER,
    query_id INTEGER,
    rho TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'query',
    job_id INTEGER
);
CREATE INDEX IF NOT EXISTS charges_by_study_dataset ON charges (study_id, dataset);
CREATE INDEX IF NOT EXISTS charges_by_dataset ON charges (dataset);
"""

# The limits that apply to a dataset (the study allocation, the total), for the report.
Limits = Callable[[str], tuple[DPBudget | None, DPTotal | None]]


@dataclass(frozen=True)
class DatasetTotal:
    """What all studies together spent on one dataset at this node, over `charges` charges."""

    dataset: str
    rho: Decimal = ZERO
    charges: int = 0

    def remaining(self, total: DPTotal) -> Decimal:
        """The rho left under `total` (never below zero)."""
        assert total.rho is not None, "a total's epsilon is filled in by the policy"
        return left(total.rho, self.rho)

    def to_message(self, total: DPTotal | None = None) -> DatasetSpent:
        delta = None if total is None else total.delta
        return DatasetSpent(
            dataset=self.dataset,
            epsilon_spent=epsilon_of(self.rho, delta),
            delta_spent=conversion_delta(delta) if self.rho else 0.0,
            charges=self.charges,
            rho_spent=float(self.rho),
        )


@dataclass(frozen=True)
class Spent:
    """What one study spent on one dataset at this node (rho), over `charges` charges; after a
    charge, also what all studies together spent on the dataset (`dataset_total`)."""

    study_id: int
    dataset: str
    rho: Decimal = ZERO
    charges: int = 0
    dataset_total: DatasetTotal | None = None

    def remaining(self, limit: DPBudget) -> Decimal:
        """The rho left of the study's allocation `limit` (never below zero)."""
        return left(limit.rho, self.rho)

    def epsilon(self, delta: float | None) -> float:
        """The epsilon the spend amounts to at `delta` (`tessera.privacy.epsilon_of`)."""
        return epsilon_of(self.rho, delta)

    def to_message(self, limit: DPBudget | None = None) -> BudgetSpent:
        delta = None if limit is None else limit.delta
        return BudgetSpent(
            study_id=self.study_id,
            dataset=self.dataset,
            epsilon_spent=self.epsilon(delta),
            delta_spent=conversion_delta(delta) if self.rho else 0.0,
            charges=self.charges,
            rho_spent=float(self.rho),
        )


class PrivacyLedger:
    """The spend per (study, dataset), persisted in SQLite; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        advice = (
            "; keep it as evidence, and do not start the node without it (its spending would "
            "be forgotten)"
        )
        _migrate(path, advice)
        open_schema(path, _SCHEMA, SCHEMA_VERSION, "privacy ledger", advice)

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self.path)

    def charge_query(
        self,
        study_id: int,
        dataset: str,
        epsilon: float,
        delta: float,
        limit: DPBudget,
        total: DPTotal | None = None,
        *,
        task_id: int | None = None,
        query_id: int | None = None,
    ) -> Spent:
        """Charge a pure epsilon-DP query: rho = epsilon^2 / 2 (its declared delta is kept with
        the charge; the mechanism uses none). See `charge`."""
        return self.charge(
            study_id,
            dataset,
            query_rho(epsilon),
            limit,
            total,
            epsilon=epsilon,
            delta=delta,
            task_id=task_id,
            query_id=query_id,
        )

    def charge(
        self,
        study_id: int,
        dataset: str,
        rho: float | Decimal,
        limit: DPBudget,
        total: DPTotal | None = None,
        *,
        epsilon: float | None = None,
        delta: float | None = None,
        kind: Kind = "query",
        task_id: int | None = None,
        query_id: int | None = None,
        job_id: int | None = None,
    ) -> Spent:
        """Spend `rho` of the study's allocation `limit` on `dataset` and of the dataset's
        `total` over all studies (None: the allocation is the total), or raise
        `BudgetExceeded` (naming the limit and what is left) and spend nothing. `epsilon` and
        `delta`: what the query or request asked, kept with the charge. A synthesis job
        (`job_id`) is charged once, however often it is offered. Returns the spend after it."""
        cost = exact(rho)
        total = total or DPTotal(epsilon=limit.epsilon, delta=limit.delta)
        what = "query" if kind == "query" else "synthesis"
        with self._transaction() as conn:
            before = _spent(conn, study_id, dataset)
            if (
                job_id is not None
                and conn.execute(
                    "SELECT 1 FROM charges WHERE kind = 'synthesis' AND job_id = ?", (job_id,)
                ).fetchone()
            ):  # offered again (after a restart): charged once
                return replace(before, dataset_total=_dataset_spent(conn, dataset))
            room = before.remaining(limit)
            if cost > room:
                raise BudgetExceeded(
                    f"the {what}'s rho {_num(cost)}{_asked(epsilon)} would exceed the privacy "
                    f"allocation of study {study_id} on dataset {dataset!r}: remaining rho "
                    f"{_num(room)} (a query of epsilon up to {_num(largest_epsilon(room))}) of "
                    f"rho {_num(limit.rho)} (epsilon {text(limit.epsilon)} at delta "
                    f"{_num(conversion_delta(limit.delta))}, per study)",
                    _details("study", study_id, dataset, cost, room, limit.rho, epsilon)
                    | {"epsilon_limit": limit.epsilon, "delta_limit": limit.delta},
                )
            was = _dataset_spent(conn, dataset)
            _check_total(was, total, cost, study_id, what, epsilon)
            conn.execute(
                "INSERT INTO charges (at, study_id, dataset, rho, epsilon, delta, kind, task_id, "
                "query_id, job_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    datetime.now(UTC).isoformat(),
                    study_id,
                    dataset,
                    str(cost),
                    None if epsilon is None else str(exact(epsilon)),
                    None if delta is None else str(exact(delta)),
                    kind,
                    task_id,
                    query_id,
                    job_id,
                ),
            )
        after = DatasetTotal(dataset, was.rho + cost, was.charges + 1)
        return Spent(study_id, dataset, before.rho + cost, before.charges + 1, after)

    def spent(self, study_id: int, dataset: str) -> Spent:
        with self._transaction() as conn:
            return _spent(conn, study_id, dataset)

    def entries(self) -> list[Spent]:
        """Every (study, dataset) with at least one charge, in study then dataset order."""
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT study_id, dataset, rho FROM charges ORDER BY study_id, dataset, id"
            ).fetchall()
        totals: dict[tuple[int, str], Spent] = {}
        for study_id, dataset, rho in rows:
            was = totals.get((study_id, dataset), Spent(study_id, dataset))
            totals[study_id, dataset] = Spent(
                study_id, dataset, was.rho + Decimal(rho), was.charges + 1
            )
        return list(totals.values())

    def dataset_spent(self, dataset: str) -> DatasetTotal:
        """What all studies together spent on `dataset`."""
        with self._transaction() as conn:
            return _dataset_spent(conn, dataset)

    def dataset_totals(self) -> list[DatasetTotal]:
        """Every dataset with at least one charge, summed over all studies, in name order."""
        totals: dict[str, DatasetTotal] = {}
        for s in self.entries():
            was = totals.get(s.dataset, DatasetTotal(s.dataset))
            totals[s.dataset] = DatasetTotal(s.dataset, was.rho + s.rho, was.charges + s.charges)
        return [totals[name] for name in sorted(totals)]

    def report(self, limits: Limits | None = None) -> NodeBudgetReport:
        """The whole ledger, as the node publishes it to the coordinator: rho, and the
        (epsilon, delta) it amounts to at the delta of each limit (`limits(dataset)`: the
        study allocation and the dataset's total; none: `CONVERSION_DELTA`)."""

        def of(dataset: str) -> tuple[DPBudget | None, DPTotal | None]:
            return (None, None) if limits is None else limits(dataset)

        return NodeBudgetReport(
            entries=[s.to_message(of(s.dataset)[0]) for s in self.entries()],
            dataset_totals=[t.to_message(of(t.dataset)[1]) for t in self.dataset_totals()],
        )


def _num(value: float | Decimal) -> str:
    """A rho or epsilon as people read it: 0.005, 0.0174689 (6 significant digits)."""
    number = float(value)
    return "0" if number == 0 else f"{number:.6g}"


def _asked(epsilon: float | None) -> str:
    return "" if epsilon is None else f" (epsilon {text(epsilon)})"


def _details(
    limit: str,
    study_id: int,
    dataset: str,
    cost: Decimal,
    room: Decimal,
    of: Decimal,
    epsilon: float | None,
) -> dict[str, object]:
    return {
        "limit": limit,
        "study_id": study_id,
        "dataset": dataset,
        "rho": float(cost),
        "rho_remaining": float(room),
        "rho_limit": float(of),
        "epsilon": epsilon,
        "epsilon_remaining": largest_epsilon(room),
    }


def _check_total(
    was: DatasetTotal,
    total: DPTotal,
    cost: Decimal,
    study_id: int,
    what: str,
    epsilon: float | None,
) -> None:
    """Raise `BudgetExceeded` if the charge does not fit the dataset's total over studies."""
    room = was.remaining(total)
    if cost <= room:
        return
    assert total.rho is not None and total.epsilon is not None
    raise BudgetExceeded(
        f"the {what}'s rho {_num(cost)}{_asked(epsilon)} would exceed the privacy budget of "
        f"dataset {was.dataset!r} over all studies: remaining rho {_num(room)} (a query of "
        f"epsilon up to {_num(largest_epsilon(room))}) of rho {_num(total.rho)} (epsilon "
        f"{text(total.epsilon)} at delta {_num(conversion_delta(total.delta))}, over all "
        "studies)",
        _details("dataset_total", study_id, was.dataset, cost, room, total.rho, epsilon)
        | {"epsilon_limit": total.epsilon, "delta_limit": total.delta},
    )


def _dataset_spent(conn: sqlite3.Connection, dataset: str) -> DatasetTotal:
    rows = conn.execute("SELECT rho FROM charges WHERE dataset = ?", (dataset,)).fetchall()
    return DatasetTotal(dataset, sum((Decimal(r) for (r,) in rows), ZERO), len(rows))


def _spent(conn: sqlite3.Connection, study_id: int, dataset: str) -> Spent:
    rows = conn.execute(
        "SELECT rho FROM charges WHERE study_id = ? AND dataset = ?", (study_id, dataset)
    ).fetchall()
    return Spent(study_id, dataset, sum((Decimal(r) for (r,) in rows), ZERO), len(rows))


def _migrate(path: Path, advice: str) -> None:
    """Bring a schema-1 ledger (epsilon and delta per charge, basic composition) to schema 2:
    every charge was a pure epsilon-DP query, so its rho is epsilon^2 / 2. One transaction:
    a crash leaves the ledger at schema 1, migrated again at the next start."""
    if not path.exists():
        return
    try:
        with transaction(path) as conn:
            if conn.execute("PRAGMA user_version").fetchone()[0] != 1:
                return
            columns = {row[1] for row in conn.execute("PRAGMA table_info(charges)")}
            if not {"epsilon", "delta"} <= columns:
                raise ConfigInvalid(
                    f"privacy ledger {path} says schema 1 but has no epsilon and delta per "
                    f"charge: it cannot be migrated{advice}",
                    {"path": str(path)},
                )
            for statement in (
                "ALTER TABLE charges ADD COLUMN rho TEXT",
                "ALTER TABLE charges ADD COLUMN kind TEXT NOT NULL DEFAULT 'query'",
                "ALTER TABLE charges ADD COLUMN job_id INTEGER",
            ):
                conn.execute(statement)
            rows = conn.execute("SELECT id, epsilon FROM charges").fetchall()
            for charge_id, eps in rows:
                try:
                    rho = query_rho(Decimal(eps))
                except (ArithmeticError, ValueError):
                    raise ConfigInvalid(
                        f"privacy ledger {path}: charge {charge_id} records epsilon {eps!r}, "
                        f"not an amount; it cannot be migrated{advice}",
                        {"path": str(path), "charge": charge_id},
                    ) from None
                conn.execute("UPDATE charges SET rho = ? WHERE id = ?", (str(rho), charge_id))
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except sqlite3.DatabaseError as exc:
        raise ConfigInvalid(
            f"privacy ledger {path} cannot be used: {exc}{advice}", {"path": str(path)}
        ) from None
