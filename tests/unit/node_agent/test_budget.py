"""The privacy ledger: charges compose by sums, never exceed the budget (not even when charged
concurrently), survive a restart, and are kept apart per study and dataset."""

from __future__ import annotations

import sqlite3
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from node_agent.budget import PrivacyLedger
from tessera.errors import BudgetExceeded, ConfigInvalid
from tessera.schemas import BudgetSpent, DPBudget

ONE = DPBudget(epsilon=1.0, delta=1e-6)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "work" / "budget.sqlite3"


def test_charges_add_up_exactly_and_the_next_one_over_is_refused(path: Path) -> None:
    ledger = PrivacyLedger(path)
    for i in range(1, 11):
        spent = ledger.charge(3, "cohort", 0.1, 1e-7, ONE, task_id=i, query_id=i)
        assert spent.charges == i
    assert spent.epsilon == Decimal("1.0") and spent.delta == Decimal("0.000001")
    with pytest.raises(BudgetExceeded) as refused:
        ledger.charge(3, "cohort", 0.1, 0.0, ONE)
    assert refused.value.message == (
        "the query's epsilon 0.1, delta 0 would exceed the differential-privacy budget of "
        "study 3 on dataset 'cohort': remaining epsilon 0, delta 0 (of epsilon 1, delta "
        "0.000001 per study)"
    )
    assert refused.value.details["epsilon_remaining"] == 0.0
    assert ledger.spent(3, "cohort").charges == 10, "a refused charge spends nothing"


def test_a_charge_that_fits_exactly_is_taken_and_delta_counts_too(path: Path) -> None:
    ledger = PrivacyLedger(path)
    ledger.charge(1, "cohort", 0.7, 0.0, ONE)
    ledger.charge(1, "cohort", 0.3, 0.0, ONE)  # 0.7 + 0.3 is exactly 1
    budget = DPBudget(epsilon=10, delta=1e-6)
    ledger.charge(2, "cohort", 1.0, 6e-7, budget)
    with pytest.raises(BudgetExceeded, match=r"remaining epsilon 9, delta 0\.0000004 "):
        ledger.charge(2, "cohort", 1.0, 5e-7, budget)
    ledger.charge(2, "cohort", 1.0, 4e-7, budget)
    assert ledger.spent(2, "cohort").delta == Decimal("0.000001")


def test_a_zero_budget_refuses_every_query(path: Path) -> None:
    with pytest.raises(BudgetExceeded, match="remaining epsilon 0, delta 0 "):
        PrivacyLedger(path).charge(1, "cohort", 0.01, 0.0, DPBudget(epsilon=0))


def test_studies_and_datasets_have_budgets_of_their_own(path: Path) -> None:
    ledger = PrivacyLedger(path)
    ledger.charge(1, "cohort", 1.0, 0.0, ONE)
    ledger.charge(2, "cohort", 0.5, 0.0, ONE)
    ledger.charge(1, "labs", 0.25, 0.0, ONE)
    with pytest.raises(BudgetExceeded, match="study 1 on dataset 'cohort'"):
        ledger.charge(1, "cohort", 0.1, 0.0, ONE)
    ledger.charge(2, "cohort", 0.5, 0.0, ONE)
    assert [(s.study_id, s.dataset, s.epsilon, s.charges) for s in ledger.entries()] == [
        (1, "cohort", Decimal("1.0"), 1),
        (1, "labs", Decimal("0.25"), 1),
        (2, "cohort", Decimal("1.0"), 2),
    ]
    assert ledger.report().entries == [
        BudgetSpent(study_id=1, dataset="cohort", epsilon_spent=1.0, delta_spent=0, charges=1),
        BudgetSpent(study_id=1, dataset="labs", epsilon_spent=0.25, delta_spent=0, charges=1),
        BudgetSpent(study_id=2, dataset="cohort", epsilon_spent=1.0, delta_spent=0, charges=2),
    ]


def test_the_spending_survives_a_restart(path: Path) -> None:
    PrivacyLedger(path).charge(1, "cohort", 0.6, 0.0, ONE)
    reopened = PrivacyLedger(path)
    assert reopened.spent(1, "cohort").epsilon == Decimal("0.6")
    with pytest.raises(BudgetExceeded, match=r"remaining epsilon 0\.4,"):
        reopened.charge(1, "cohort", 0.5, 0.0, ONE)
    row = sqlite3.connect(path).execute("SELECT task_id, epsilon FROM charges").fetchall()
    assert row == [(None, "0.6")]


def test_concurrent_charges_never_exceed_the_budget(path: Path) -> None:
    """Twenty threads on two ledgers over one file (as two processes would be) charge 0.1
    each against a budget of 1: exactly ten are taken."""
    ledgers = [PrivacyLedger(path), PrivacyLedger(path)]
    start = threading.Barrier(20)
    taken: list[int] = []
    refused: list[int] = []

    def charge(i: int) -> None:
        start.wait()
        try:
            ledgers[i % 2].charge(5, "cohort", 0.1, 0.0, ONE, task_id=i)
            taken.append(i)
        except BudgetExceeded:
            refused.append(i)

    threads = [threading.Thread(target=charge, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert (len(taken), len(refused)) == (10, 10)
    assert ledgers[0].spent(5, "cohort").epsilon == Decimal("1.0")


def test_a_failed_write_leaves_no_half_charge(path: Path, monkeypatch) -> None:
    ledger = PrivacyLedger(path)
    ledger.charge(1, "cohort", 0.5, 0.0, ONE)
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    monkeypatch.setattr("node_agent.budget.BUSY_TIMEOUT_S", 0.1)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            ledger.charge(1, "cohort", 0.25, 0.0, ONE)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert ledger.spent(1, "cohort").epsilon == Decimal("0.5")


def test_an_unreadable_ledger_stops_the_node(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database, and it is long enough to be read as one" * 20)
    with pytest.raises(ConfigInvalid, match=r"privacy ledger .* cannot be used"):
        PrivacyLedger(path)
