"""The privacy ledger: two accountants over the same charges, basic composition (sums of
epsilon and delta) and zCDP (a pure epsilon-DP query costs rho = epsilon^2/2; limits given as
(epsilon, delta) convert to rho by epsilon = rho + 2 sqrt(rho ln(1/delta))), a charge admitted
when either is within the limit; a dataset's total over all studies is on by default and caps
every study together, charges never exceed a limit (not even when charged concurrently),
survive a restart, and a schema-1 ledger is migrated."""

from __future__ import annotations

import math
import sqlite3
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from node_agent.budget import SCHEMA_VERSION, DatasetTotal, PrivacyLedger
from synth.accounting import rho_for
from tessera.errors import BudgetExceeded, ConfigInvalid
from tessera.privacy import epsilon_of, query_rho, rho_budget
from tessera.schemas import BudgetSpent, DatasetSpent, DPBudget, DPTotal, NodePolicySummary

ONE = DPBudget(epsilon=1.0, delta=1e-6)


def direct_rho(epsilon: float, delta: float) -> float:
    """The rho solving epsilon = rho + 2 sqrt(rho ln(1/delta)), by bisection (no closed form)."""
    low, high = 0.0, epsilon
    for _ in range(200):
        middle = (low + high) / 2
        if middle + 2 * math.sqrt(middle * math.log(1 / delta)) <= epsilon:
            low = middle
        else:
            high = middle
    return low


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "work" / "budget.sqlite3"


# ---- the conversion -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epsilon", "delta"), [(1.0, 1e-6), (0.5, 1e-5), (3.0, 1e-9), (10.0, 1e-3), (0.01, 1e-6)]
)
def test_a_budget_converts_to_the_rho_of_the_standard_conversion(epsilon, delta) -> None:
    rho = float(rho_budget(epsilon, delta))
    assert rho == pytest.approx(direct_rho(epsilon, delta), rel=1e-12)
    assert epsilon_of(rho, delta) == pytest.approx(epsilon, rel=1e-12)
    assert float(DPBudget(epsilon=epsilon, delta=delta).rho) == rho


def test_the_numbers_of_a_budget_of_epsilon_1() -> None:
    # sqrt(rho) = sqrt(ln 1e6 + 1) - sqrt(ln 1e6) = 3.8491... - 3.7169... = 0.13217...
    assert float(ONE.rho) == pytest.approx(0.0174689, rel=1e-5)
    assert float(DPBudget(epsilon=1.0).rho) == float(ONE.rho), "delta 0 converts at 1e-6"
    assert query_rho(0.1) == Decimal("0.005"), "a pure query costs epsilon^2 / 2, exactly"
    assert epsilon_of(0, 1e-6) == 0.0


# ---- the better of two accountants ---------------------------------------------------------


def test_a_few_large_queries_are_admitted_by_basic_composition(path: Path) -> None:
    ledger = PrivacyLedger(path)
    assert query_rho(0.5) > ONE.rho, "zCDP alone would refuse even the first"
    first = ledger.charge_query(3, "cohort", 0.5, 0.0, ONE, task_id=1, query_id=1)
    second = ledger.charge_query(3, "cohort", 0.5, 0.0, ONE, task_id=2, query_id=2)
    assert (second.epsilon, second.delta, second.rho, second.charges) == (
        Decimal("1.0"),
        Decimal("0.0"),
        Decimal("0.25"),
        2,
    )
    assert first.remaining(ONE) == 0.5 and second.remaining(ONE) == 0.0
    with pytest.raises(BudgetExceeded) as refused:
        ledger.charge_query(3, "cohort", 0.5, 0.0, ONE)
    assert refused.value.message == (
        "the query's rho 0.125 (epsilon 0.5, delta 0) would exceed the privacy allocation of "
        "study 3 on dataset 'cohort' by both accountants: basic composition has spent epsilon "
        "1 and delta 0 of (1, 0.000001); zCDP has spent rho 0.25 of 0.0174689 (epsilon 1 at "
        "delta 1e-06); a query of epsilon up to 0 remains (per study)"
    )
    details = refused.value.details
    assert (details["limit"], details["epsilon_spent"], details["rho_spent"]) == (
        "study",
        1.0,
        0.25,
    )
    assert details["epsilon_remaining"] == 0.0 and details["rho_remaining"] == 0.0
    with pytest.raises(BudgetExceeded):
        ledger.charge_query(3, "cohort", 0.001, 0.0, ONE)  # neither accountant has room left
    assert ledger.spent(3, "cohort").charges == 2, "a refused charge spends nothing"


def test_a_limit_of_epsilon_2_affords_one_query_of_epsilon_1(path: Path) -> None:
    two = DPBudget(epsilon=2.0, delta=1e-6)
    assert float(two.rho) == pytest.approx(direct_rho(2.0, 1e-6)) and two.rho < query_rho(1.0)
    ledger = PrivacyLedger(path)
    ledger.charge_query(1, "cohort", 1.0, 0.0, two)
    ledger.charge_query(1, "cohort", 1.0, 0.0, two)
    with pytest.raises(BudgetExceeded):
        ledger.charge_query(1, "cohort", 0.1, 0.0, two)


def test_ten_queries_of_a_tenth_spend_exactly_one(path: Path) -> None:
    ledger = PrivacyLedger(path)
    for _ in range(10):
        spent = ledger.charge_query(1, "cohort", 0.1, 0.0, ONE)
    assert spent.epsilon == Decimal("1.0") and spent.rho == Decimal("0.050")
    with pytest.raises(BudgetExceeded):
        ledger.charge_query(1, "cohort", 0.1, 0.0, ONE)


def test_many_small_queries_are_admitted_by_zcdp_beyond_basic_composition(path: Path) -> None:
    ledger = PrivacyLedger(path)
    # basic composition affords 1 / 0.01 = 100 queries of epsilon 0.01; zCDP affords every
    # query whose rho, 0.01^2 / 2 = 0.00005 each, still fits ONE's rho of 0.0174689: 349
    by_basic = 100
    by_zcdp = math.floor(float(ONE.rho) / float(query_rho(0.01)))
    assert by_zcdp == 349
    taken = 0
    with pytest.raises(BudgetExceeded):
        while True:
            spent = ledger.charge_query(1, "cohort", 0.01, 0.0, ONE)
            taken += 1
    assert taken == by_zcdp > by_basic
    assert spent.epsilon == Decimal("3.49") > 1, "basic composition is long past the limit"
    assert spent.rho <= ONE.rho


def test_a_declared_delta_counts_for_basic_composition_only(path: Path) -> None:
    ledger = PrivacyLedger(path)
    # 0.5 declaring delta 2e-6 > the limit's 1e-6: basic composition cannot admit it, and its
    # rho 0.125 is beyond zCDP's 0.0174689
    with pytest.raises(BudgetExceeded, match="by both accountants"):
        ledger.charge_query(1, "cohort", 0.5, 2e-6, ONE)
    # a small one declaring it is admitted by zCDP, which never looks at a pure query's delta;
    # from then on basic composition has spent more delta than the limit and admits nothing
    spent = ledger.charge_query(1, "cohort", 0.1, 2e-6, ONE)
    assert spent.delta == Decimal("0.000002") and spent.remaining(ONE) == pytest.approx(
        math.sqrt(2 * (float(ONE.rho) - 0.005))
    )
    with pytest.raises(BudgetExceeded):
        ledger.charge_query(1, "cohort", 0.5, 0.0, ONE)


def test_a_synthesis_and_queries_by_either_accountant(path: Path) -> None:
    budget = DPBudget(epsilon=3.0, delta=1e-6)
    ledger = PrivacyLedger(path)
    # an MST request of (1, 1e-7): the rho its accounting is given, (1, 1e-7)-DP by it
    mst = rho_for(1.0, 1e-7)
    spent = ledger.charge(
        1, "cohort", mst, budget, epsilon=1.0, delta=1e-7, kind="synthesis", job_id=1
    )
    assert (spent.epsilon, spent.delta) == (Decimal("1.0"), Decimal("1E-7"))
    # two queries of epsilon 1: basic composition (3 of 3); in zCDP 0.5 each is far too much
    ledger.charge_query(1, "cohort", 1.0, 0.0, budget)
    spent = ledger.charge_query(1, "cohort", 1.0, 0.0, budget)
    assert spent.epsilon == Decimal("3.0") and float(spent.rho) > float(budget.rho)
    with pytest.raises(BudgetExceeded):
        ledger.charge_query(1, "cohort", 0.01, 0.0, budget)


def test_a_synthesis_beyond_the_limits_delta_leaves_zcdp_to_decide(path: Path) -> None:
    budget = DPBudget(epsilon=3.0, delta=1e-6)
    ledger = PrivacyLedger(path)
    mst = rho_for(1.0, 1e-5)  # delta 1e-5 > 1e-6: basic composition cannot admit it
    ledger.charge(1, "cohort", mst, budget, epsilon=1.0, delta=1e-5, kind="synthesis", job_id=2)
    room = float(budget.rho) - mst  # 0.147264 - 0.030557
    assert query_rho(0.5) > room > query_rho(0.4)
    with pytest.raises(BudgetExceeded):
        ledger.charge_query(1, "cohort", 0.5, 0.0, budget)  # basic would: 1.5 of 3
    ledger.charge_query(1, "cohort", 0.4, 0.0, budget)


def test_a_zero_budget_refuses_every_query(path: Path) -> None:
    with pytest.raises(BudgetExceeded, match="a query of epsilon up to 0 remains"):
        PrivacyLedger(path).charge_query(1, "cohort", 0.01, 0.0, DPBudget(epsilon=0))


def test_studies_and_datasets_are_kept_apart(path: Path) -> None:
    ledger = PrivacyLedger(path)
    big = DPBudget(epsilon=5.0, delta=1e-6)
    total = DPTotal(epsilon=20.0, delta=1e-6)
    ledger.charge_query(1, "cohort", 0.2, 0.0, big, total)
    ledger.charge_query(2, "cohort", 0.1, 0.0, big, total)
    ledger.charge_query(1, "labs", 0.3, 1e-7, big, total)
    ledger.charge_query(2, "cohort", 0.1, 0.0, big, total)
    assert [(s.study_id, s.dataset, s.rho, s.charges) for s in ledger.entries()] == [
        (1, "cohort", Decimal("0.02"), 1),
        (1, "labs", Decimal("0.045"), 1),
        (2, "cohort", Decimal("0.010"), 2),
    ]
    report = ledger.report(lambda d: (big, total))
    # the report: basic composition's sums of epsilon and delta, and zCDP's rho
    assert report.entries[0] == BudgetSpent(
        study_id=1, dataset="cohort", epsilon_spent=0.2, delta_spent=0.0, charges=1, rho_spent=0.02
    )
    assert report.dataset_totals == [
        DatasetSpent(
            dataset="cohort", epsilon_spent=0.4, delta_spent=0.0, charges=3, rho_spent=0.03
        ),
        DatasetSpent(
            dataset="labs", epsilon_spent=0.3, delta_spent=1e-7, charges=1, rho_spent=0.045
        ),
    ]


def test_the_spending_survives_a_restart(path: Path) -> None:
    PrivacyLedger(path).charge_query(1, "cohort", 0.1, 0.0, ONE)
    reopened = PrivacyLedger(path)
    assert reopened.spent(1, "cohort").rho == Decimal("0.005")
    assert reopened.spent(1, "cohort").epsilon == Decimal("0.1")
    with pytest.raises(BudgetExceeded, match=r"basic composition has spent epsilon 0\.1 "):
        reopened.charge_query(1, "cohort", 0.91, 0.0, ONE)
    row = sqlite3.connect(path).execute("SELECT task_id, epsilon, rho, kind FROM charges")
    assert row.fetchall() == [(None, "0.1", "0.005", "query")]


def test_concurrent_charges_never_exceed_the_budget(path: Path) -> None:
    """Thirty threads on two ledgers over one file (as two processes would be) charge epsilon
    0.05 (rho 0.00125) each against an allocation of epsilon 1: exactly 20 are taken (basic
    composition; zCDP would admit 13)."""
    ledgers = [PrivacyLedger(path), PrivacyLedger(path)]
    start = threading.Barrier(30)
    taken: list[int] = []
    refused: list[int] = []

    def charge(i: int) -> None:
        start.wait()
        try:
            ledgers[i % 2].charge_query(5, "cohort", 0.05, 0.0, ONE, task_id=i)
            taken.append(i)
        except BudgetExceeded:
            refused.append(i)

    threads = [threading.Thread(target=charge, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert (len(taken), len(refused)) == (20, 10)
    assert ledgers[0].spent(5, "cohort").epsilon == Decimal("1.00")


def test_a_failed_write_leaves_no_half_charge(path: Path, monkeypatch) -> None:
    ledger = PrivacyLedger(path)
    ledger.charge_query(1, "cohort", 0.1, 0.0, ONE)
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    monkeypatch.setattr("node_agent.sqlite_store.BUSY_TIMEOUT_S", 0.1)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            ledger.charge_query(1, "cohort", 0.05, 0.0, ONE)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert ledger.spent(1, "cohort").rho == Decimal("0.005")


def test_an_unreadable_ledger_stops_the_node(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database, and it is long enough to be read as one" * 20)
    with pytest.raises(ConfigInvalid, match=r"privacy ledger .* cannot be used"):
        PrivacyLedger(path)


# ---- the dataset's total, on by default ---------------------------------------------------


def test_the_total_is_on_by_default_so_a_second_study_cannot_start_afresh(path: Path) -> None:
    summary = NodePolicySummary(dp_budget=ONE)
    total = summary.dp_total_limit("cohort")
    assert total == DPTotal(epsilon=1.0, delta=1e-6), "no total configured: the allocation"
    ledger = PrivacyLedger(path)
    ledger.charge_query(1, "cohort", 0.6, 0.0, ONE, total)  # basic composition: 0.6 of 1
    with pytest.raises(BudgetExceeded) as refused:
        ledger.charge_query(2, "cohort", 0.6, 0.0, ONE, total)  # study 2 has all of its own
    assert refused.value.details["limit"] == "dataset_total"
    assert "over all studies" in refused.value.message
    ledger.charge_query(2, "cohort", 0.4, 0.0, ONE, total)  # 1.0 of the total: still fits
    ledger.charge_query(2, "labs", 0.6, 0.0, ONE, total)  # another dataset has its own total
    # Without an explicit total the ledger applies the allocation as the total too.
    with pytest.raises(BudgetExceeded, match="over all studies"):
        ledger.charge_query(3, "cohort", 0.05, 0.0, ONE)


def test_a_dataset_total_caps_every_study_together(path: Path) -> None:
    ledger = PrivacyLedger(path)
    total = DPTotal(epsilon=1.5, delta=1e-6)
    first = ledger.charge_query(1, "cohort", 0.7, 0.0, ONE, total)  # rho 0.245
    assert first.dataset_total == DatasetTotal(
        "cohort", Decimal("0.245"), 1, Decimal("0.7"), Decimal(0)
    )
    second = ledger.charge_query(2, "cohort", 0.7, 0.0, ONE, total)
    assert second.epsilon == Decimal("0.7"), "the study's own spend"
    assert second.dataset_total is not None and second.dataset_total.epsilon == Decimal("1.4")
    with pytest.raises(BudgetExceeded) as refused:
        ledger.charge_query(3, "cohort", 0.2, 0.0, ONE, total)  # a new study: no new budget
    assert refused.value.details["limit"] == "dataset_total"
    assert refused.value.details["rho_limit"] == pytest.approx(direct_rho(1.5, 1e-6))
    assert refused.value.details["epsilon_remaining"] == pytest.approx(0.1)
    assert refused.value.message.startswith(
        "the query's rho 0.02 (epsilon 0.2, delta 0) would exceed the privacy budget of dataset "
        "'cohort' over all studies by both accountants: basic composition has spent epsilon 1.4 "
        "and delta 0 of (1.5, 0.000001); zCDP has spent rho 0.49 of 0.0386443"
    )


def test_the_study_allocation_is_named_when_it_is_the_one_short(path: Path) -> None:
    ledger = PrivacyLedger(path)
    total = DPTotal(epsilon=10, delta=1e-6)
    ledger.charge_query(1, "cohort", 0.9, 0.0, ONE, total)
    with pytest.raises(BudgetExceeded, match="allocation of study 1 on dataset 'cohort'") as e:
        ledger.charge_query(1, "cohort", 0.2, 0.0, ONE, total)
    assert e.value.details["limit"] == "study"


def test_concurrent_charges_of_many_studies_never_exceed_the_total(path: Path) -> None:
    ledgers = [PrivacyLedger(path), PrivacyLedger(path)]
    total = DPTotal(epsilon=1.0, delta=1e-6)
    start = threading.Barrier(30)
    taken: list[int] = []

    def charge(i: int) -> None:
        start.wait()
        try:
            ledgers[i % 2].charge_query(100 + i, "cohort", 0.05, 0.0, ONE, total, task_id=i)
            taken.append(i)
        except BudgetExceeded:
            pass

    threads = [threading.Thread(target=charge, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(taken) == 20  # 20 * 0.05 = 1 by basic composition (13 by zCDP)
    assert ledgers[1].dataset_spent("cohort").epsilon == Decimal("1.00")


# ---- synthesis ----------------------------------------------------------------------------


def test_a_synthesis_charges_its_rho_once_per_job(path: Path) -> None:
    ledger = PrivacyLedger(path)
    budget = DPBudget(epsilon=3.0, delta=1e-6)
    asked = {"epsilon": 1.0, "delta": 1e-6}
    spent = ledger.charge(1, "cohort", 0.05, budget, kind="synthesis", job_id=7, **asked)
    assert spent.rho == Decimal("0.05")
    again = ledger.charge(1, "cohort", 0.05, budget, kind="synthesis", job_id=7, **asked)
    assert again.rho == Decimal("0.05") and again.charges == 1, "offered again: charged once"
    ledger.charge_query(1, "cohort", 0.1, 0.0, budget)  # queries share the same ledger
    assert ledger.spent(1, "cohort").rho == Decimal("0.055")
    # a charge without its (epsilon, delta): only zCDP applies, 0.055 + 0.2 > 0.147
    with pytest.raises(
        BudgetExceeded,
        match=r"the synthesis's rho 0\.2 \(without its epsilon and delta: zCDP only\)",
    ):
        ledger.charge(
            1, "cohort", 0.2, budget, kind="synthesis", job_id=8, epsilon=None, delta=None
        )


# ---- schema 1 ---------------------------------------------------------------------------


def test_a_version_1_ledger_is_migrated_to_rho(path: Path) -> None:
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE charges (id INTEGER PRIMARY KEY, at TEXT NOT NULL, study_id INTEGER "
            "NOT NULL, dataset TEXT NOT NULL, epsilon TEXT NOT NULL, delta TEXT NOT NULL, "
            "task_id INTEGER, query_id INTEGER);"
            "INSERT INTO charges VALUES (1, 'x', 1, 'cohort', '0.1', '0', 4, 2);"
            "INSERT INTO charges VALUES (2, 'x', 2, 'cohort', '0.05', '1E-7', 5, 3);"
            "PRAGMA user_version = 1;"
        )
    ledger = PrivacyLedger(path)
    assert ledger.spent(1, "cohort").rho == Decimal("0.005")
    assert ledger.spent(2, "cohort").rho == Decimal("0.00125")
    assert ledger.dataset_spent("cohort") == DatasetTotal(
        "cohort", Decimal("0.00625"), 2, Decimal("0.15"), Decimal("1E-7")
    ), "basic composition keeps the epsilon and delta a schema-1 ledger recorded"
    version = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION == 2
    ledger.charge_query(1, "cohort", 0.05, 0.0, ONE)
    assert PrivacyLedger(path).spent(1, "cohort").charges == 2, "reopened: migrated once"


def test_a_version_1_ledger_that_cannot_be_migrated_is_refused_clearly(path: Path) -> None:
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE charges (id INTEGER PRIMARY KEY, at TEXT, study_id INTEGER, "
            "dataset TEXT, epsilon TEXT, delta TEXT, task_id INTEGER, query_id INTEGER);"
            "INSERT INTO charges VALUES (1, 'x', 1, 'cohort', 'lots', '0', 4, 2);"
            "PRAGMA user_version = 1;"
        )
    with pytest.raises(ConfigInvalid, match=r"charge 1 records epsilon 'lots'.*cannot be migrated"):
        PrivacyLedger(path)
    version = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]
    assert version == 1, "left as it was"
