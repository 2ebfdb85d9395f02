"""The node's differential-privacy budget: a ledger of what each study spent on each dataset.

A query with `dp` spends its epsilon and delta at every node that takes part. The node's policy
sets what one study may spend on one dataset (`policy.dp_epsilon_budget` and `dp_delta_budget`,
or the dataset's own entry in `policy.dp_budgets`) and, optionally, what all studies together
may spend on it (`policy.dp_epsilon_total` and `dp_delta_total`, or the entry's
`epsilon_total` and `delta_total`): a study label is the coordinator's to give, and a total
keeps a second study from opening a second budget on the same patients. Spending composes by
basic sequential composition: what a study spent on a dataset is the sum of its queries'
epsilon, and the sum of their delta; what the dataset spent, the sums over every study.

A query is charged when this node accepts its task, before its party runs, and is never
refunded: once the node has accepted, its party may take part in opening a noisy result even
if the run fails afterwards (a peer that crashed after the output was opened, a result that
never reached the coordinator), so the conservative assumption is that the loss happened.

The ledger is `work_dir/budget.sqlite3` (the standard library's sqlite3). A charge is one
transaction that takes the database's write lock (`BEGIN IMMEDIATE`), sums what was spent,
compares the sums with both limits and appends the charge: concurrent charges, from task threads
or from another process on the same file, never overspend, and a crash leaves the whole charge
or none of it. Amounts are kept as the exact decimals the queries gave (`tessera.privacy`).
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from node_agent.sqlite_store import open_schema, transaction
from tessera.errors import BudgetExceeded
from tessera.privacy import ZERO, exact, left, text
from tessera.schemas import BudgetSpent, DatasetSpent, DPBudget, DPTotal, NodeBudgetReport

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    study_id INTEGER NOT NULL,
    dataset TEXT NOT NULL,
    epsilon TEXT NOT NULL,
    delta TEXT NOT NULL,
    task_id INTEGER,
    query_id INTEGER
);
CREATE INDEX IF NOT EXISTS charges_by_study_dataset ON charges (study_id, dataset);
CREATE INDEX IF NOT EXISTS charges_by_dataset ON charges (dataset);
"""


@dataclass(frozen=True)
class DatasetTotal:
    """What all studies together spent on one dataset at this node, over `charges` queries."""

    dataset: str
    epsilon: Decimal = ZERO
    delta: Decimal = ZERO
    charges: int = 0

    def remaining(self, total: DPTotal) -> tuple[Decimal | None, Decimal | None]:
        """Epsilon and delta left under `total` (never below zero); None where not capped."""
        return (
            None if total.epsilon is None else left(total.epsilon, self.epsilon),
            None if total.delta is None else left(total.delta, self.delta),
        )

    def to_message(self) -> DatasetSpent:
        return DatasetSpent(
            dataset=self.dataset,
            epsilon_spent=float(self.epsilon),
            delta_spent=float(self.delta),
            charges=self.charges,
        )


@dataclass(frozen=True)
class Spent:
    """What one study spent on one dataset at this node, over `charges` queries; after a
    charge, also what all studies together spent on the dataset (`dataset_total`)."""

    study_id: int
    dataset: str
    epsilon: Decimal = ZERO
    delta: Decimal = ZERO
    charges: int = 0
    dataset_total: DatasetTotal | None = None

    def remaining(self, limit: DPBudget) -> tuple[Decimal, Decimal]:
        """Epsilon and delta left under `limit` (never below zero)."""
        return left(limit.epsilon, self.epsilon), left(limit.delta, self.delta)

    def to_message(self) -> BudgetSpent:
        return BudgetSpent(
            study_id=self.study_id,
            dataset=self.dataset,
            epsilon_spent=float(self.epsilon),
            delta_spent=float(self.delta),
            charges=self.charges,
        )


class PrivacyLedger:
    """The spend per (study, dataset), persisted in SQLite; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        open_schema(
            path,
            _SCHEMA,
            SCHEMA_VERSION,
            "privacy ledger",
            "; keep it as evidence, and do not start the node without it (its spending would be "
            "forgotten)",
        )

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self.path)

    def charge(
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
        """Spend `epsilon` and `delta` of the study's budget on `dataset` (and of the
        dataset's `total` over all studies, if there is one), or raise `BudgetExceeded`
        (naming the limit and what is left) and spend nothing. Returns the spend after it."""
        eps, dlt = exact(epsilon), exact(delta)
        with self._transaction() as conn:
            before = _spent(conn, study_id, dataset)
            left_eps, left_dlt = before.remaining(limit)
            if eps > left_eps or dlt > left_dlt:
                raise BudgetExceeded(
                    f"the query's epsilon {text(eps)}, delta {text(dlt)} would exceed the "
                    f"differential-privacy budget of study {study_id} on dataset {dataset!r}: "
                    f"remaining epsilon {text(left_eps)}, delta {text(left_dlt)} (of "
                    f"epsilon {text(limit.epsilon)}, delta {text(limit.delta)} "
                    "per study)",
                    {
                        "limit": "study",
                        "study_id": study_id,
                        "dataset": dataset,
                        "epsilon": float(eps),
                        "delta": float(dlt),
                        "epsilon_remaining": float(left_eps),
                        "delta_remaining": float(left_dlt),
                        "epsilon_limit": limit.epsilon,
                        "delta_limit": limit.delta,
                    },
                )
            was = _dataset_spent(conn, dataset)
            if total is not None:
                _check_total(was, total, eps, dlt, study_id)
            conn.execute(
                "INSERT INTO charges (at, study_id, dataset, epsilon, delta, task_id, query_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    datetime.now(UTC).isoformat(),
                    study_id,
                    dataset,
                    str(eps),
                    str(dlt),
                    task_id,
                    query_id,
                ),
            )
        after = DatasetTotal(dataset, was.epsilon + eps, was.delta + dlt, was.charges + 1)
        return Spent(
            study_id,
            dataset,
            before.epsilon + eps,
            before.delta + dlt,
            before.charges + 1,
            after,
        )

    def spent(self, study_id: int, dataset: str) -> Spent:
        with self._transaction() as conn:
            return _spent(conn, study_id, dataset)

    def entries(self) -> list[Spent]:
        """Every (study, dataset) with at least one charge, in study then dataset order."""
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT study_id, dataset, epsilon, delta FROM charges "
                "ORDER BY study_id, dataset, id"
            ).fetchall()
        totals: dict[tuple[int, str], Spent] = {}
        for study_id, dataset, eps, dlt in rows:
            was = totals.get((study_id, dataset), Spent(study_id, dataset))
            totals[study_id, dataset] = Spent(
                study_id,
                dataset,
                was.epsilon + Decimal(eps),
                was.delta + Decimal(dlt),
                was.charges + 1,
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
            totals[s.dataset] = DatasetTotal(
                s.dataset, was.epsilon + s.epsilon, was.delta + s.delta, was.charges + s.charges
            )
        return [totals[name] for name in sorted(totals)]

    def report(self) -> NodeBudgetReport:
        """The whole ledger, as the node publishes it to the coordinator."""
        return NodeBudgetReport(
            entries=[s.to_message() for s in self.entries()],
            dataset_totals=[t.to_message() for t in self.dataset_totals()],
        )


def _check_total(
    was: DatasetTotal, total: DPTotal, eps: Decimal, dlt: Decimal, study_id: int
) -> None:
    """Raise `BudgetExceeded` if the charge does not fit the dataset's total over studies."""
    left_eps, left_dlt = was.remaining(total)
    if (left_eps is None or eps <= left_eps) and (left_dlt is None or dlt <= left_dlt):
        return
    remaining = _amounts(left_eps, left_dlt)
    of = _amounts(
        None if total.epsilon is None else exact(total.epsilon),
        None if total.delta is None else exact(total.delta),
    )
    raise BudgetExceeded(
        f"the query's epsilon {text(eps)}, delta {text(dlt)} would exceed the "
        f"differential-privacy budget of dataset {was.dataset!r} over all studies: remaining "
        f"{remaining} (of {of} over all studies)",
        {
            "limit": "dataset_total",
            "study_id": study_id,
            "dataset": was.dataset,
            "epsilon": float(eps),
            "delta": float(dlt),
            "epsilon_remaining": None if left_eps is None else float(left_eps),
            "delta_remaining": None if left_dlt is None else float(left_dlt),
            "epsilon_limit": total.epsilon,
            "delta_limit": total.delta,
        },
    )


def _amounts(epsilon: Decimal | None, delta: Decimal | None) -> str:
    """'epsilon 0.4, delta 0', leaving out an amount that is not capped."""
    parts = [
        f"{name} {text(v)}" for name, v in (("epsilon", epsilon), ("delta", delta)) if v is not None
    ]
    return ", ".join(parts)


def _dataset_spent(conn: sqlite3.Connection, dataset: str) -> DatasetTotal:
    rows = conn.execute(
        "SELECT epsilon, delta FROM charges WHERE dataset = ?", (dataset,)
    ).fetchall()
    return DatasetTotal(
        dataset,
        sum((Decimal(e) for e, _ in rows), ZERO),
        sum((Decimal(d) for _, d in rows), ZERO),
        len(rows),
    )


def _spent(conn: sqlite3.Connection, study_id: int, dataset: str) -> Spent:
    rows = conn.execute(
        "SELECT epsilon, delta FROM charges WHERE study_id = ? AND dataset = ?",
        (study_id, dataset),
    ).fetchall()
    return Spent(
        study_id,
        dataset,
        sum((Decimal(e) for e, _ in rows), ZERO),
        sum((Decimal(d) for _, d in rows), ZERO),
        len(rows),
    )
