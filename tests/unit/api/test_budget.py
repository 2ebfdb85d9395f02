"""Differential-privacy budgets: the nodes' ledger reports, and the check at submission."""

from __future__ import annotations

import contextlib
import math

import pytest
from sqlalchemy import select

from api.models import NodeBudget
from api.services import budget
from tessera.errors import BudgetExceeded, Conflict, InvalidRequest, PolicyDenied
from tessera.privacy import epsilon_of, rho_budget
from tessera.schemas import BudgetSpent, DatasetSpent, NodeBudgetReport

DP = {"dp_budget": {"epsilon": 1.0, "delta": 1e-5}}
DP_WITH_TOTAL = {**DP, "dp_total": {"epsilon": 2.0}}


def _spent(study_id: int, epsilon: float, dataset: str = "cohort") -> BudgetSpent:
    return BudgetSpent(
        study_id=study_id, dataset=dataset, epsilon_spent=epsilon, delta_spent=0, charges=1
    )


def _report(*entries: BudgetSpent, totals: tuple[DatasetSpent, ...] = ()) -> NodeBudgetReport:
    return NodeBudgetReport(entries=list(entries), dataset_totals=list(totals))


def _affordable(db, net, epsilon: float, delta: float = 0.0) -> None:
    budget.check_affordable(db, net.study, "cohort", epsilon, delta, net.nodes)


# ---- check_affordable -------------------------------------------------------------------


def test_nodes_without_a_dp_budget_are_policy_denied_by_name(make, db) -> None:
    net = make.network(policies=[DP, None, None])

    with pytest.raises(PolicyDenied) as caught:
        _affordable(db, net, 0.1)
    assert str(caught.value) == (
        "nodes h2, h3 have no differential-privacy budget for dataset 'cohort': "
        "it takes part in no query with 'dp'"
    )
    assert caught.value.details == {"nodes": ["h2", "h3"], "dataset": "cohort"}


def test_a_dp_query_to_a_node_without_a_budget_is_refused_at_submission(make) -> None:
    net = make.network(policies=[DP, DP, None])

    with pytest.raises(PolicyDenied, match="node h3 has no differential-privacy budget"):
        make.submit(net, {"dp": {"epsilon": 0.5}})
    assert make.events("query.submitted") == []


LIMIT = float(rho_budget(1.0, 1e-5))  # the rho of DP's budget per study


def _basic(study_id: int, epsilon: float, rho: float, delta: float = 0.0) -> BudgetSpent:
    """What a node reports: basic composition's sums of epsilon and delta, zCDP's rho."""
    return BudgetSpent(
        study_id=study_id,
        dataset="cohort",
        epsilon_spent=epsilon,
        delta_spent=delta,
        charges=1,
        rho_spent=rho,
    )


def test_more_than_the_study_has_left_is_budget_exceeded_naming_the_node(make, db) -> None:
    net = make.network(policies=[DP, DP, DP])
    # two queries of 0.3: epsilon 0.6 of 1 by basic composition, rho 0.09 (beyond zCDP's)
    budget.report(db, net.nodes[1], _report(_basic(net.study.id, 0.6, 0.09)))

    with pytest.raises(BudgetExceeded) as caught:
        _affordable(db, net, 0.5)

    assert isinstance(caught.value, Conflict)
    assert (
        "node h2: a query of epsilon up to 0.4 (basic composition: epsilon 0.4, delta 1e-05 "
        "left; zCDP: rho 0 left)"
    ) in str(caught.value)
    (short,) = caught.value.details["nodes"]
    assert (short["node"], short["limit"]) == ("h2", "study")
    assert short["epsilon_remaining"] == pytest.approx(0.4)
    assert caught.value.details["rho"] == 0.125, "a query's rho is epsilon^2 / 2"


def test_exactly_what_is_left_is_affordable(make, db) -> None:
    net = make.network(policies=[DP, DP, DP])
    budget.report(db, net.nodes[0], _report(_basic(net.study.id, 0.6, 0.09)))
    _affordable(db, net, 0.4)  # basic composition: 0.6 + 0.4 = 1, exactly
    with pytest.raises(BudgetExceeded):
        _affordable(db, net, 0.4001)


def test_what_zcdp_has_left_is_affordable_once_basic_composition_is_spent(make, db) -> None:
    net = make.network(policies=[DP, DP, DP])
    # 120 queries of 0.01: epsilon 1.2 > 1 by basic composition, rho 0.006 of zCDP's LIMIT
    budget.report(db, net.nodes[0], _report(_basic(net.study.id, 1.2, 0.006)))
    largest = math.sqrt(2 * (LIMIT - 0.006))
    _affordable(db, net, largest * (1 - 1e-9))
    with pytest.raises(BudgetExceeded):
        _affordable(db, net, largest * 1.001)


def test_a_node_that_reports_no_rho_is_taken_to_compose_in_zcdp_only(make, db) -> None:
    net = make.network(policies=[DP, DP, DP])
    older = BudgetSpent(
        study_id=net.study.id,
        dataset="cohort",
        epsilon_spent=epsilon_of(0.015, 1e-5),  # what rho 0.015 amounts to at 1e-5
        delta_spent=1e-5,
        charges=1,
    )
    budget.report(db, net.nodes[0], _report(older))
    node = budget.study_budget(db, net.study)["datasets"][0]["nodes"][0]
    assert node["rho_spent"] == pytest.approx(0.015)
    assert node["basic_epsilon_remaining"] == 0.0
    assert node["epsilon_remaining"] == pytest.approx(math.sqrt(2 * (LIMIT - 0.015)))


def test_the_dataset_total_over_studies_can_be_the_limit_that_binds(make, db) -> None:
    net = make.network(policies=[DP_WITH_TOTAL, DP_WITH_TOTAL, DP_WITH_TOTAL])
    total = float(rho_budget(2.0, 1e-5))  # the total's delta: the allocation's
    others = DatasetSpent(
        dataset="cohort", epsilon_spent=1.95, delta_spent=0.0, charges=9, rho_spent=total
    )
    budget.report(db, net.nodes[2], _report(totals=(others,)))

    with pytest.raises(BudgetExceeded) as caught:
        _affordable(db, net, 0.1)

    assert "of the dataset's total over all studies" in str(caught.value)
    (short,) = caught.value.details["nodes"]
    assert (short["node"], short["limit"]) == ("h3", "dataset_total")
    assert short["rho_remaining"] == 0.0
    assert short["epsilon_remaining"] == pytest.approx(0.05)
    _affordable(db, net, 0.05)


def test_the_total_is_on_by_default_at_the_coordinator_too(make, db) -> None:
    net = make.network(policies=[DP, DP, DP])
    others = DatasetSpent(
        dataset="cohort", epsilon_spent=0.95, delta_spent=0.0, charges=3, rho_spent=0.9
    )
    budget.report(db, net.nodes[0], _report(totals=(others,)))

    with pytest.raises(BudgetExceeded) as caught:
        _affordable(db, net, 0.1)  # this study spent nothing, the dataset nearly all
    assert caught.value.details["nodes"][0]["limit"] == "dataset_total"


def test_the_prediction_agrees_with_the_node_ledger(make, db, tmp_path) -> None:
    """The same charges at a node's ledger and, reported, at the coordinator: each candidate
    query is admitted by the one iff it is predicted affordable by the other."""
    import shutil

    from node_agent.budget import PrivacyLedger
    from synth.accounting import rho_for
    from tessera.schemas import DPBudget, DPTotal

    net = make.network(policies=[DP_WITH_TOTAL, DP_WITH_TOTAL, DP_WITH_TOTAL])
    limit, total = DPBudget(epsilon=1.0, delta=1e-5), DPTotal(epsilon=2.0, delta=1e-5)
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite3")
    study = net.study.id
    steps = [
        ("query", 0.3),
        ("query", 0.5),  # basic composition: 0.8 of 1
        ("mst", 0.1),  # (0.1, 1e-6): 0.9 and 1e-6 by basic composition
        *[("query", 0.01)] * 30,  # basic composition spent; zCDP goes on
    ]
    candidates = [0.005, 0.01, 0.05, 0.1, 0.2, 0.5]
    for i, (kind, epsilon) in enumerate(steps):
        if kind == "mst":
            ledger.charge(
                study, "cohort", rho_for(epsilon, 1e-6), limit, total,
                epsilon=epsilon, delta=1e-6, kind="synthesis", job_id=i,
            )  # fmt: skip
        else:
            with contextlib.suppress(BudgetExceeded):
                ledger.charge_query(study, "cohort", epsilon, 0.0, limit, total)
        budget.report(db, net.nodes[0], ledger.report(lambda d: (limit, total)))
        for candidate in candidates:
            copy = tmp_path / f"try-{i}-{candidate}.sqlite3"
            shutil.copy(ledger.path, copy)
            try:
                PrivacyLedger(copy).charge_query(study, "cohort", candidate, 0.0, limit, total)
                node_admits = True
            except BudgetExceeded:
                node_admits = False
            try:
                _affordable(db, net, candidate)
                predicted = True
            except BudgetExceeded:
                predicted = False
            assert predicted == node_admits, (i, kind, candidate)


# ---- report -----------------------------------------------------------------------------


def test_a_report_replaces_the_ledger_and_ignores_unknown_studies(make, db, clock) -> None:
    net = make.network(policies=[DP, DP, DP])
    node, study = net.nodes[0], net.study.id
    budget.report(db, node, _report(_spent(study, 0.5), _spent(study, 0.1, "labs")))

    answer = budget.report(db, node, _report(_spent(study, 0.6), _spent(999, 0.4)))

    assert answer == {"entries": 1, "ignored_study_ids": [999]}
    rows = db.scalars(select(NodeBudget).where(NodeBudget.node_id == node.id)).all()
    assert [(r.study_id, r.dataset, r.epsilon_spent) for r in rows] == [(study, "cohort", 0.6)]
    assert node.budget_reported_at == clock.now()
    events = make.events("node.budget_reported")
    assert len(events) == 2
    assert [e["study_id"] for e in events[-1].details["entries"]] == [study]


def test_an_unchanged_report_is_not_audited_again_but_dates_the_ledger(make, db, clock) -> None:
    net = make.network(policies=[DP, DP, DP])
    ledger = _report(_spent(net.study.id, 0.5))
    budget.report(db, net.nodes[0], ledger)
    later = clock.advance(60)

    budget.report(db, net.nodes[0], ledger)

    assert len(make.events("node.budget_reported")) == 1
    assert net.nodes[0].budget_reported_at == later


def test_a_report_naming_a_study_and_dataset_twice_is_invalid(make, db) -> None:
    net = make.network(policies=[DP, DP, DP])
    twice = _report(_spent(net.study.id, 0.1), _spent(net.study.id, 0.2))

    with pytest.raises(InvalidRequest, match="each study and dataset may appear once"):
        budget.report(db, net.nodes[0], twice)


def test_the_study_has_what_its_poorest_node_has_left(make, db) -> None:
    net = make.network(policies=[DP, DP, DP])
    # 1.5 of epsilon 1 by basic composition; rho 0.015 of LIMIT by zCDP
    budget.report(db, net.nodes[1], _report(_basic(net.study.id, 1.5, 0.015)))

    view = budget.study_budget(db, net.study)
    (cohort,) = view["datasets"]

    assert view["composition"] == "basic or zcdp"
    assert cohort["rho_remaining"] == pytest.approx(LIMIT - 0.015)
    assert cohort["epsilon_remaining"] == pytest.approx(math.sqrt(2 * (LIMIT - 0.015)))
    assert [n["rho_remaining"] for n in cohort["nodes"]] == pytest.approx(
        [LIMIT, LIMIT - 0.015, LIMIT]
    )
    poorest = cohort["nodes"][1]
    assert (poorest["epsilon_spent"], poorest["basic_epsilon_remaining"]) == (1.5, 0.0)
    assert cohort["nodes"][0]["epsilon_remaining"] == 1.0, "basic composition: all of it"
