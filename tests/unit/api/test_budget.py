"""Differential-privacy budgets: the nodes' ledger reports, and the check at submission."""

from __future__ import annotations

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


def _rho_spent(study_id: int, rho: float) -> BudgetSpent:
    """What a node reports of `rho` spent: (epsilon, delta) at its budget's delta, and rho."""
    return BudgetSpent(
        study_id=study_id,
        dataset="cohort",
        epsilon_spent=epsilon_of(rho, 1e-5),
        delta_spent=1e-5,
        charges=1,
        rho_spent=rho,
    )


def test_more_than_the_study_has_left_is_budget_exceeded_naming_the_node(make, db) -> None:
    net = make.network(policies=[DP, DP, DP])
    budget.report(db, net.nodes[1], _report(_rho_spent(net.study.id, 0.015)))

    with pytest.raises(BudgetExceeded) as caught:
        _affordable(db, net, 0.15)

    assert isinstance(caught.value, Conflict)
    left = LIMIT - 0.015
    assert f"node h2: rho {left:.6g} (a query of epsilon up to {math.sqrt(2 * left):.6g})" in str(
        caught.value
    )
    (short,) = caught.value.details["nodes"]
    assert (short["node"], short["limit"]) == ("h2", "study")
    assert short["rho_remaining"] == pytest.approx(left)
    assert caught.value.details["rho"] == 0.01125, "a query's rho is epsilon^2 / 2"


def test_exactly_what_is_left_is_affordable(make, db) -> None:
    net = make.network(policies=[DP, DP, DP])
    budget.report(db, net.nodes[0], _report(_rho_spent(net.study.id, 0.012)))
    largest = math.sqrt(2 * (LIMIT - 0.012))

    _affordable(db, net, largest * (1 - 1e-9))
    with pytest.raises(BudgetExceeded):
        _affordable(db, net, largest * 1.001)


def test_the_dataset_total_over_studies_can_be_the_limit_that_binds(make, db) -> None:
    net = make.network(policies=[DP_WITH_TOTAL, DP_WITH_TOTAL, DP_WITH_TOTAL])
    total = float(rho_budget(2.0, 1e-5))  # the total's delta: the allocation's
    others = DatasetSpent(
        dataset="cohort",
        epsilon_spent=epsilon_of(total - 0.002, 1e-5),
        delta_spent=1e-5,
        charges=9,
    )
    budget.report(db, net.nodes[2], _report(totals=(others,)))

    with pytest.raises(BudgetExceeded) as caught:
        _affordable(db, net, 0.1)

    assert "of the dataset's total over all studies" in str(caught.value)
    (short,) = caught.value.details["nodes"]
    assert (short["node"], short["limit"]) == ("h3", "dataset_total")
    assert short["rho_remaining"] == pytest.approx(0.002)
    assert short["epsilon_remaining"] == pytest.approx(math.sqrt(0.004))


def test_the_total_is_on_by_default_at_the_coordinator_too(make, db) -> None:
    net = make.network(policies=[DP, DP, DP])
    others = DatasetSpent(
        dataset="cohort",
        epsilon_spent=epsilon_of(LIMIT - 0.001, 1e-5),
        delta_spent=1e-5,
        charges=3,
    )
    budget.report(db, net.nodes[0], _report(totals=(others,)))

    with pytest.raises(BudgetExceeded) as caught:
        _affordable(db, net, 0.1)  # this study spent nothing, the dataset nearly all
    assert caught.value.details["nodes"][0]["limit"] == "dataset_total"


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
    budget.report(db, net.nodes[1], _report(_rho_spent(net.study.id, 0.015)))

    view = budget.study_budget(db, net.study)
    (cohort,) = view["datasets"]

    assert view["composition"] == "zcdp"
    assert cohort["rho_remaining"] == pytest.approx(LIMIT - 0.015)
    assert cohort["epsilon_remaining"] == pytest.approx(math.sqrt(2 * (LIMIT - 0.015)))
    assert [n["rho_remaining"] for n in cohort["nodes"]] == pytest.approx(
        [LIMIT, LIMIT - 0.015, LIMIT]
    )
    assert cohort["nodes"][1]["epsilon_spent"] == pytest.approx(epsilon_of(0.015, 1e-5))
