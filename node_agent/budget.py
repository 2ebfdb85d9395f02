"""The node's differential-privacy ledger: one per dataset, with an allocation per study, kept
by two accountants over the same charges, basic composition and zCDP, a charge being admitted
when at least one of them is within the limit.

Every charge records its zero-concentrated-DP cost rho (`tessera.privacy`) and the (epsilon,
delta) it was asked and is calibrated to meet: a query with `dp` is pure epsilon-DP inside MPC
(`smpc.dp`), so it costs rho = epsilon^2 / 2 and is (epsilon, 0)-DP (its declared delta is
recorded as asked; the mechanism uses none); a DP synthesis (MST) costs the rho its own
accounting is given for the request's (epsilon, delta) (`synth.accounting.rho_for`), which is
that (epsilon, delta)-DP. Limits are written as (epsilon, delta) in the policy.

The two accountants:

- basic sequential composition: charges that are (epsilon_i, delta_i)-DP compose to
  (sum epsilon_i, sum delta_i)-DP; within a limit (epsilon_L, delta_L) when
  sum epsilon_i <= epsilon_L and sum delta_i <= delta_L.
- zCDP: charges that are rho_i-zCDP compose to (sum rho_i)-zCDP, and rho-zCDP implies
  (rho + 2 sqrt(rho ln(1/delta)), delta)-DP for every delta; within the limit when
  sum rho_i <= rho_L, the rho that converts to exactly (epsilon_L, delta_L)
  (`tessera.privacy.rho_budget`; a delta_L of 0 converts at `CONVERSION_DELTA`, 1e-6).

A new charge is admitted iff, with it added, at least one accountant is within the limit. This
is sound: both accountants bound the privacy loss of the same composed mechanism (the sequence
of every admitted charge), each by a theorem that holds on its own, so where one of them is
within (epsilon_L, delta_L) the composed mechanism is (epsilon_L, delta_L)-DP, whatever the
other says. It is the better of the two, not their sum: basic composition is tight for a few
large queries (a limit of epsilon 2 affords one query of epsilon 1, whose rho 0.5 is far above
the 0.068 that (2, 1e-6) converts to), zCDP for many small ones (it grows with the square root
of their number). A basic bound that fails never recovers (the sums only grow), so once only
zCDP admits, zCDP decides every later charge.

Each dataset has a total over all studies (`policy.dp_epsilon_total` / `dp_delta_total` or the
dataset's `epsilon_total` / `delta_total`), on by default: with none configured it equals the
per-study budget, so a new study does not start with a fresh budget on the same patients. Each
study has an allocation out of that total (`policy.dp_epsilon_budget` / `dp_delta_budget` or
the dataset's `epsilon` / `delta`). A charge must fit both: the study's charges within its
allocation, the dataset's (all studies') within its total, each by either accountant (the one
may be met by basic composition, the other by zCDP).

A charge is taken when this node accepts the task or the synthesis job, before its party runs
or its generator trains, and is never refunded: once accepted, a noisy result may be opened
(or a model trained) even if the run fails afterwards, so the conservative assumption is that
the loss happened.

The ledger is `work_dir/budget.sqlite3` (the standard library's sqlite3). A charge is one
transaction that takes the database's write lock (`BEGIN IMMEDIATE`), sums what was spent,
compares the sums with both limits and appends the charge: concurrent charges, from task threads
or from another process on the same file, never overspend, and a crash leaves the whole charge
or none of it. Amounts are kept as exact decimals (epsilon 0.1 costs exactly rho 0.005, and ten
of them spend exactly epsilon 1). A charge recorded without its (epsilon, delta) (none is
written so) leaves only zCDP for the sums it is part of. Schema 2 (rho); a schema-1 ledger
(epsilon and delta per charge, all of them pure-DP queries) is migrated when opened, each
charge's rho being epsilon^2 / 2.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
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
    Composed,
    conversion_delta,
    epsilon_of,
    exact,
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


def _basic_message(composed: Composed, delta: float | None) -> tuple[float, float]:
    """What a report says is spent by basic composition: the sums of epsilon and delta; where
    basic composition does not apply (a charge without its (epsilon, delta)), the (epsilon,
    delta)-DP that zCDP proves at the limit's delta, which is a valid basic bound too."""
    if composed.epsilon is not None and composed.delta is not None:
        return float(composed.epsilon), float(composed.delta)
    if not composed.rho:
        return 0.0, 0.0
    return epsilon_of(composed.rho, delta), conversion_delta(delta)


@dataclass(frozen=True)
class DatasetTotal:
    """What all studies together spent on one dataset at this node, over `charges` charges:
    zCDP's `rho`, basic composition's `epsilon` and `delta` (None: it does not apply)."""

    dataset: str
    rho: Decimal = ZERO
    charges: int = 0
    epsilon: Decimal | None = ZERO
    delta: Decimal | None = ZERO

    @property
    def composed(self) -> Composed:
        return Composed(self.rho, self.epsilon, self.delta)

    def remaining(self, total: DPTotal) -> float:
        """The largest epsilon of one more pure query that `total` affords (the better of the
        two accountants)."""
        assert total.rho is not None and total.epsilon is not None, "filled in by the policy"
        return self.composed.epsilon_remaining(total.epsilon, total.delta, total.rho)

    def to_message(self, total: DPTotal | None = None) -> DatasetSpent:
        epsilon, delta = _basic_message(self.composed, None if total is None else total.delta)
        return DatasetSpent(
            dataset=self.dataset,
            epsilon_spent=epsilon,
            delta_spent=delta,
            charges=self.charges,
            rho_spent=float(self.rho),
        )


@dataclass(frozen=True)
class Spent:
    """What one study spent on one dataset at this node, over `charges` charges: zCDP's `rho`,
    basic composition's `epsilon` and `delta` (None: it does not apply); after a charge, also
    what all studies together spent on the dataset (`dataset_total`)."""

    study_id: int
    dataset: str
    rho: Decimal = ZERO
    charges: int = 0
    dataset_total: DatasetTotal | None = None
    epsilon: Decimal | None = ZERO
    delta: Decimal | None = ZERO

    @property
    def composed(self) -> Composed:
        return Composed(self.rho, self.epsilon, self.delta)

    def remaining(self, limit: DPBudget) -> float:
        """The largest epsilon of one more pure query that the study's allocation `limit`
        affords (the better of the two accountants)."""
        return self.composed.epsilon_remaining(limit.epsilon, limit.delta, limit.rho)

    def to_message(self, limit: DPBudget | None = None) -> BudgetSpent:
        epsilon, delta = _basic_message(self.composed, None if limit is None else limit.delta)
        return BudgetSpent(
            study_id=self.study_id,
            dataset=self.dataset,
            epsilon_spent=epsilon,
            delta_spent=delta,
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
        """Charge a pure epsilon-DP query: rho = epsilon^2 / 2, and (epsilon, its declared
        delta) for basic composition. See `charge`."""
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
        epsilon: float | None,
        delta: float | None,
        kind: Kind = "query",
        task_id: int | None = None,
        query_id: int | None = None,
        job_id: int | None = None,
    ) -> Spent:
        """Spend `rho`, which is (`epsilon`, `delta`)-DP, of the study's allocation `limit` on
        `dataset` and of the dataset's `total` over all studies (None: the allocation is the
        total), or raise `BudgetExceeded` (naming the limit and what is left) and spend
        nothing. Each limit admits the charge if, with it, basic composition or zCDP is within
        it. `epsilon` or `delta` None: the charge is not known to be (epsilon, delta)-DP, so
        only zCDP applies to the sums it joins. A synthesis job (`job_id`) is charged once,
        however often it is offered. Returns the spend after it."""
        cost = exact(rho)
        total = total or DPTotal(epsilon=limit.epsilon, delta=limit.delta)
        assert total.epsilon is not None and total.rho is not None, "filled in by the policy"
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
            study_after = before.composed.plus(cost, epsilon, delta)
            if not study_after.within(limit.epsilon, limit.delta, limit.rho):
                raise _refusal(
                    f"the privacy allocation of study {study_id} on dataset {dataset!r}",
                    "per study",
                    "study",
                    study_id,
                    dataset,
                    before.composed,
                    (limit.epsilon, limit.delta, limit.rho),
                    (what, cost, epsilon, delta),
                )
            was = _dataset_spent(conn, dataset)
            dataset_after = was.composed.plus(cost, epsilon, delta)
            if not dataset_after.within(total.epsilon, total.delta, total.rho):
                raise _refusal(
                    f"the privacy budget of dataset {dataset!r} over all studies",
                    "over all studies",
                    "dataset_total",
                    study_id,
                    dataset,
                    was.composed,
                    (total.epsilon, total.delta, total.rho),
                    (what, cost, epsilon, delta),
                )
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
        after = DatasetTotal(
            dataset, dataset_after.rho, was.charges + 1, dataset_after.epsilon, dataset_after.delta
        )
        return Spent(
            study_id,
            dataset,
            study_after.rho,
            before.charges + 1,
            after,
            study_after.epsilon,
            study_after.delta,
        )

    def spent(self, study_id: int, dataset: str) -> Spent:
        with self._transaction() as conn:
            return _spent(conn, study_id, dataset)

    def entries(self) -> list[Spent]:
        """Every (study, dataset) with at least one charge, in study then dataset order."""
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT study_id, dataset, rho, epsilon, delta FROM charges "
                "ORDER BY study_id, dataset, id"
            ).fetchall()
        groups: dict[tuple[int, str], list[tuple[str, str | None, str | None]]] = {}
        for study_id, dataset, *amounts in rows:
            groups.setdefault((study_id, dataset), []).append(tuple(amounts))
        return [
            _as_spent(study_id, dataset, *_compose(charges))
            for (study_id, dataset), charges in groups.items()
        ]

    def dataset_spent(self, dataset: str) -> DatasetTotal:
        """What all studies together spent on `dataset`."""
        with self._transaction() as conn:
            return _dataset_spent(conn, dataset)

    def dataset_totals(self) -> list[DatasetTotal]:
        """Every dataset with at least one charge, summed over all studies, in name order."""
        totals: dict[str, DatasetTotal] = {}
        for s in self.entries():
            was = totals.get(s.dataset, DatasetTotal(s.dataset))
            both = was.composed.plus(s.rho, s.epsilon, s.delta)
            totals[s.dataset] = DatasetTotal(
                s.dataset, both.rho, was.charges + s.charges, both.epsilon, both.delta
            )
        return [totals[name] for name in sorted(totals)]

    def report(self, limits: Limits | None = None) -> NodeBudgetReport:
        """The whole ledger, as the node publishes it to the coordinator: basic composition's
        sums of epsilon and delta, and zCDP's rho (`limits(dataset)`, the study allocation and
        the dataset's total, give the delta at which a ledger without basic sums is stated)."""

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


def _refusal(
    what_limit: str,
    scope: str,
    limit_name: str,
    study_id: int,
    dataset: str,
    spent: Composed,
    limit: tuple[float, float | None, Decimal],
    charge: tuple[str, Decimal, float | None, float | None],
) -> BudgetExceeded:
    """Why a charge does not fit a limit by either accountant, with what each has left."""
    epsilon_limit, delta_limit, rho_limit = limit
    what, cost, epsilon, delta = charge
    asked = (
        " (without its epsilon and delta: zCDP only)"
        if epsilon is None or delta is None
        else f" (epsilon {text(epsilon)}, delta {text(delta)})"
    )
    largest = spent.epsilon_remaining(epsilon_limit, delta_limit, rho_limit)
    basic = (
        "basic composition does not apply"
        if spent.epsilon is None or spent.delta is None
        else f"basic composition has spent epsilon {_num(spent.epsilon)} and delta "
        f"{_num(spent.delta)} of ({text(epsilon_limit)}, {text(delta_limit or 0)})"
    )
    return BudgetExceeded(
        f"the {what}'s rho {_num(cost)}{asked} would exceed {what_limit} by both accountants: "
        f"{basic}; zCDP has spent rho {_num(spent.rho)} of {_num(rho_limit)} (epsilon "
        f"{text(epsilon_limit)} at delta {_num(conversion_delta(delta_limit))}); a query of "
        f"epsilon up to {_num(largest)} remains ({scope})",
        {
            "limit": limit_name,
            "study_id": study_id,
            "dataset": dataset,
            "rho": float(cost),
            "epsilon": epsilon,
            "delta": delta,
            "rho_spent": float(spent.rho),
            "rho_limit": float(rho_limit),
            "rho_remaining": float(max(ZERO, rho_limit - spent.rho)),
            "epsilon_spent": None if spent.epsilon is None else float(spent.epsilon),
            "delta_spent": None if spent.delta is None else float(spent.delta),
            "epsilon_limit": epsilon_limit,
            "delta_limit": delta_limit,
            "epsilon_remaining": largest,
        },
    )


def _compose(
    charges: Iterable[tuple[str, str | None, str | None]],
) -> tuple[Composed, int]:
    """The sums of (rho, epsilon, delta) rows as both accountants see them, and their count."""
    composed, count = Composed(), 0
    for rho, epsilon, delta in charges:
        composed = composed.plus(
            Decimal(rho),
            None if epsilon is None else Decimal(epsilon),
            None if delta is None else Decimal(delta),
        )
        count += 1
    return composed, count


def _as_spent(study_id: int, dataset: str, composed: Composed, charges: int) -> Spent:
    return Spent(study_id, dataset, composed.rho, charges, None, composed.epsilon, composed.delta)


def _dataset_spent(conn: sqlite3.Connection, dataset: str) -> DatasetTotal:
    rows = conn.execute(
        "SELECT rho, epsilon, delta FROM charges WHERE dataset = ?", (dataset,)
    ).fetchall()
    composed, count = _compose(rows)
    return DatasetTotal(dataset, composed.rho, count, composed.epsilon, composed.delta)


def _spent(conn: sqlite3.Connection, study_id: int, dataset: str) -> Spent:
    rows = conn.execute(
        "SELECT rho, epsilon, delta FROM charges WHERE study_id = ? AND dataset = ?",
        (study_id, dataset),
    ).fetchall()
    return _as_spent(study_id, dataset, *_compose(rows))


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
