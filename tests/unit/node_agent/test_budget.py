"""The privacy ledger: charges compose by sums, never exceed the budget (not even when charged
concurrently), survive a restart, and are kept apart per study and dataset; a dataset's total
caps every study together."""

from __future__ import annotations

import sqlite3
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from node_agent.budget import DatasetTotal, PrivacyLedger
from tessera.errors import BudgetExceeded, ConfigInvalid
from tessera.schemas import BudgetSpent, DatasetSpent, DPBudget, DPTotal

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
    monkeypatch.setattr("node_agent.sqlite_store.BUSY_TIMEOUT_S", 0.1)
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


# ---- a dataset's total over all studies ---------------------------------------------------


def test_a_dataset_total_caps_every_study_together(path: Path) -> None:
    ledger = PrivacyLedger(path)
    total = DPTotal(epsilon=1.5, delta=1e-6)
    first = ledger.charge(1, "cohort", 1.0, 0.0, ONE, total)
    assert first.dataset_total == DatasetTotal("cohort", Decimal("1.0"), Decimal("0.0"), 1)
    second = ledger.charge(2, "cohort", 0.5, 1e-7, ONE, total)
    assert second.epsilon == Decimal("0.5"), "the study's own spend"
    assert second.dataset_total is not None and second.dataset_total.epsilon == Decimal("1.5")
    with pytest.raises(BudgetExceeded) as refused:
        ledger.charge(2, "cohort", 0.1, 0.0, ONE, total)  # study 2 has 0.5 left of its own
    assert refused.value.message == (
        "the query's epsilon 0.1, delta 0 would exceed the differential-privacy budget of "
        "dataset 'cohort' over all studies: remaining epsilon 0, delta 0.0000009 (of epsilon "
        "1.5, delta 0.000001 over all studies)"
    )
    assert refused.value.details == {
        "limit": "dataset_total",
        "study_id": 2,
        "dataset": "cohort",
        "epsilon": 0.1,
        "delta": 0.0,
        "epsilon_remaining": 0.0,
        "delta_remaining": 9e-7,
        "epsilon_limit": 1.5,
        "delta_limit": 1e-6,
    }
    with pytest.raises(BudgetExceeded, match="over all studies"):
        ledger.charge(3, "cohort", 0.1, 0.0, ONE, total)  # a new study opens no new budget
    ledger.charge(3, "labs", 0.1, 0.0, ONE, total)  # another dataset has its own total
    assert ledger.dataset_spent("cohort") == DatasetTotal(
        "cohort", Decimal("1.5"), Decimal("1E-7"), 2
    )
    assert ledger.report().dataset_totals == [
        DatasetSpent(dataset="cohort", epsilon_spent=1.5, delta_spent=1e-7, charges=2),
        DatasetSpent(dataset="labs", epsilon_spent=0.1, delta_spent=0.0, charges=1),
    ]


def test_the_study_budget_is_named_when_it_is_the_one_short(path: Path) -> None:
    ledger = PrivacyLedger(path)
    total = DPTotal(epsilon=10)
    ledger.charge(1, "cohort", 1.0, 0.0, ONE, total)
    with pytest.raises(BudgetExceeded, match="budget of study 1 on dataset 'cohort'") as refused:
        ledger.charge(1, "cohort", 0.5, 0.0, ONE, total)
    assert refused.value.details["limit"] == "study"


def test_a_total_may_cap_delta_alone(path: Path) -> None:
    ledger = PrivacyLedger(path)
    budget = DPBudget(epsilon=5, delta=1e-5)
    total = DPTotal(delta=1e-6)
    ledger.charge(1, "cohort", 2.0, 6e-7, budget, total)
    ledger.charge(2, "cohort", 4.0, 0.0, budget, total)  # epsilon is not capped over studies
    with pytest.raises(BudgetExceeded) as refused:
        ledger.charge(3, "cohort", 1.0, 5e-7, budget, total)
    assert refused.value.message.endswith(
        "over all studies: remaining delta 0.0000004 (of delta 0.000001 over all studies)"
    )
    assert refused.value.details["epsilon_remaining"] is None
    assert ledger.dataset_spent("cohort").charges == 2


def test_concurrent_charges_of_many_studies_never_exceed_the_total(path: Path) -> None:
    ledgers = [PrivacyLedger(path), PrivacyLedger(path)]
    total = DPTotal(epsilon=1.0)
    start = threading.Barrier(20)
    taken: list[int] = []

    def charge(i: int) -> None:
        start.wait()
        try:
            ledgers[i % 2].charge(100 + i, "cohort", 0.1, 0.0, ONE, total, task_id=i)
            taken.append(i)
        except BudgetExceeded:
            pass

    threads = [threading.Thread(target=charge, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(taken) == 10
    assert ledgers[1].dataset_spent("cohort").epsilon == Decimal("1.0")
