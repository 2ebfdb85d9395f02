"""Differential-privacy budgets at the coordinator, over HTTP on SQLite and PostgreSQL: nodes
publish their limits (hello) and their ledgers (`PUT /nodes/me/budget`), members read what is
left (`GET /studies/{id}/budget`), and a DP query some node cannot afford is refused up front.

No query with `dp` runs end to end here (the noise is smpc's): the node's own refusal is tested
with the agent in tests/unit/node_agent."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import httpx
import pytest
import sqlalchemy

from api import audit
from api.db import Database
from api.migrate import upgrade
from api.services import network
from tessera.errors import BudgetExceeded, Forbidden, NotFound, PolicyDenied, Unauthorized
from tessera.privacy import rho_budget

from .conftest import DATASET, Backend, FakeNode, Setup, logged_in
from .test_app import add_node_as_of_0003, record_before_signing

BUDGET = {"dp_budget": {"epsilon": 1.0, "delta": 1e-6}}
# A node's ledger keeps two accountants (node_agent.budget): basic composition (sums of epsilon
# and delta) and zCDP (a pure epsilon query costs rho = epsilon^2 / 2; BUDGET's (1, 1e-6) is the
# rho solving 1 = rho + 2 sqrt(rho ln(1e6)), about 0.0175); a charge fits when either is within.
LIMIT = float(rho_budget(1.0, 1e-6))


def hello(node: FakeNode, policy: dict[str, Any]) -> None:
    node.ok("POST", "/nodes/me/hello", json={"agent_version": "test", "policy": policy})


def report(node: FakeNode, *entries: dict[str, Any]) -> Any:
    return node.ok("PUT", "/nodes/me/budget", json={"entries": list(entries)})


def spent(
    study_id: int, epsilon: float, rho: float, delta: float = 0.0, charges: int = 1
) -> dict[str, Any]:
    """What a node reports a study spent, as its ledger does: basic composition's sums of
    epsilon and delta, and zCDP's rho."""
    return {
        "study_id": study_id,
        "dataset": DATASET,
        "epsilon_spent": epsilon,
        "delta_spent": delta,
        "charges": charges,
        "rho_spent": rho,
    }


def dp_query(epsilon: float, delta: float = 0.0) -> dict[str, Any]:
    return {"statistic": "count", "dp": {"epsilon": epsilon, "delta": delta}}


def eps_for(rho: float) -> float:
    """The largest pure-DP query epsilon that `rho` affords: epsilon^2 / 2 = rho."""
    return math.sqrt(2 * rho)


def test_members_see_each_node_and_the_least_remaining(setup: Setup) -> None:
    a, b, c = setup.nodes
    hello(a, BUDGET)
    hello(b, {"dp_budget": {"epsilon": 2.0}, "dp_dataset_budgets": {DATASET: {"epsilon": 0.5}}})
    hello(c, {"min_count": 5})  # no budget: no DP query
    # a: two queries of epsilon 0.1: epsilon 0.2 by basic composition, rho 2 * 0.1^2 / 2 = 0.01
    assert report(a, spent(setup.study_id, 0.2, 0.01, charges=2)) == {
        "entries": 1,
        "ignored_study_ids": [],
    }
    report(b)

    view = setup.researcher.study_budget(setup.study_id)
    assert view["study_id"] == setup.study_id and view["composition"] == "basic or zcdp"
    [cohort] = view["datasets"]
    nodes = {n["node"]: n for n in cohort["nodes"]}
    assert list(nodes) == [a.name, b.name, c.name]
    first = dict(nodes[a.name])
    assert datetime.fromisoformat(first.pop("reported_at")).tzinfo is not None
    left = LIMIT - 0.01  # rho of the study's allocation less what it spent
    assert first == {
        "node": a.name,
        "rho_limit": pytest.approx(LIMIT),
        "rho_spent": 0.01,
        "rho_remaining": pytest.approx(left),
        "epsilon_limit": 1.0,
        "epsilon_spent": 0.2,
        "epsilon_remaining": pytest.approx(max(1.0 - 0.2, eps_for(left))),  # basic's 0.8
        "basic_epsilon_remaining": pytest.approx(0.8),
        "zcdp_epsilon_remaining": pytest.approx(eps_for(left)),
        "delta_limit": 1e-6,
        "delta_spent": 0.0,
        "delta_remaining": 1e-6,  # basic composition's delta left
        "charges": 2,
        # the dataset's total is on by default: the allocation itself; nothing reported of it
        "dataset_total": {
            "rho_limit": pytest.approx(LIMIT),
            "rho_spent": 0.0,
            "rho_remaining": pytest.approx(LIMIT),
            "epsilon_limit": 1.0,
            "epsilon_spent": 0.0,
            "epsilon_remaining": 1.0,
            "basic_epsilon_remaining": 1.0,
            "zcdp_epsilon_remaining": pytest.approx(eps_for(LIMIT)),
            "delta_limit": 1e-6,
            "delta_spent": 0.0,
            "delta_remaining": 1e-6,
            "charges": 0,
        },
        "rho_available": pytest.approx(left),  # the lesser of the two
        "epsilon_available": pytest.approx(0.8),
        "delta_available": 1e-6,
    }
    b_rho = float(rho_budget(0.5, 0.0))  # a delta of 0 converts at CONVERSION_DELTA, 1e-6
    assert nodes[b.name]["epsilon_limit"] == 0.5
    assert nodes[b.name]["epsilon_remaining"] == max(0.5, eps_for(b_rho)) == 0.5
    assert nodes[b.name]["zcdp_epsilon_remaining"] == pytest.approx(eps_for(b_rho))
    assert nodes[b.name]["delta_limit"] == 0.0 and nodes[b.name]["charges"] == 0
    assert nodes[c.name] | {"node": None} == {
        "node": None,
        "rho_limit": None,
        "rho_spent": 0.0,
        "rho_remaining": 0.0,
        "epsilon_limit": None,
        "epsilon_spent": 0.0,
        "epsilon_remaining": 0.0,
        "basic_epsilon_remaining": 0.0,
        "zcdp_epsilon_remaining": 0.0,
        "delta_limit": None,
        "delta_spent": 0.0,
        "delta_remaining": 0.0,
        "charges": 0,
        "dataset_total": None,
        "rho_available": 0.0,
        "epsilon_available": 0.0,
        "delta_available": 0.0,
        "reported_at": None,
    }
    assert (cohort["epsilon_remaining"], cohort["delta_remaining"]) == (0.0, 0.0)

    hello(c, BUDGET)
    cohort = setup.admin.study_budget(setup.study_id)["datasets"][0]
    # the least of a (0.8 by basic composition), b (0.5, its limit) and c (1): b's; b's limit
    # has delta 0, so no delta is left to declare by basic composition
    assert cohort["rho_remaining"] == pytest.approx(b_rho)
    assert (cohort["epsilon_remaining"], cohort["delta_remaining"]) == (0.5, 0.0)


def test_a_report_replaces_the_last_and_leaves_out_unknown_studies(setup: Setup) -> None:
    node = setup.nodes[0]
    hello(node, BUDGET)
    answer = report(node, spent(setup.study_id, 0.1, 0.005), spent(987654321, 0.2, 0.01))
    assert answer == {"entries": 1, "ignored_study_ids": [987654321]}
    first = setup.researcher.study_budget(setup.study_id)["datasets"][0]["nodes"][0]
    assert first["epsilon_spent"] == 0.1

    # three queries of epsilon 0.1: epsilon 0.3, rho 3 * 0.005
    report(node, spent(setup.study_id, 0.3, 0.015, charges=3))
    again = setup.researcher.study_budget(setup.study_id)["datasets"][0]["nodes"][0]
    assert (again["epsilon_spent"], again["epsilon_remaining"], again["charges"]) == (
        0.3,
        pytest.approx(max(0.7, eps_for(LIMIT - 0.015))),
        3,
    )
    assert again["rho_spent"] == 0.015
    assert again["reported_at"] >= first["reported_at"]

    events = [
        e
        for e in setup.admin.audit()
        if e["action"] == "node.budget_reported" and e["subject"] == f"node:{node.name}"
    ]
    assert [e["details"]["entries"][0]["rho_spent"] for e in events][-2:] == [0.005, 0.015]


def test_bad_budget_reports_are_422(setup: Setup) -> None:
    node = setup.nodes[0]
    one = spent(setup.study_id, 0.1, 0.005)
    twice = node.call("PUT", "/nodes/me/budget", json={"entries": [one] * 2})
    assert twice.status_code == 422
    assert twice.json()["error"]["message"] == (
        "each study and dataset may appear once in a budget report"
    )
    negative = node.call(
        "PUT", "/nodes/me/budget", json={"entries": [one | {"epsilon_spent": -0.1}]}
    )
    assert negative.status_code == 422
    assert negative.json()["error"]["code"] == "invalid_request"
    assert "epsilon_spent" in negative.json()["error"]["message"]


def test_the_budget_is_for_members_and_reports_for_nodes(setup: Setup) -> None:
    path = f"{setup.url}/api/v1/studies/{setup.study_id}/budget"
    anonymous = setup.http.get(path)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
    with pytest.raises(Unauthorized):
        type(setup.researcher)(setup.url).study_budget(setup.study_id)
    outsider_name = f"olga{setup.n}"
    setup.admin.create_user(outsider_name, "outsider-pw", role="researcher")
    outsider = logged_in(setup.url, outsider_name, "outsider-pw")
    with pytest.raises(NotFound, match=f"no study {setup.study_id}"):
        outsider.study_budget(setup.study_id)
    node = setup.nodes[0]
    as_node = setup.http.get(path, headers={"Authorization": f"Bearer {node.key}"})
    assert as_node.status_code == 403
    as_user = setup.http.put(
        f"{setup.url}/api/v1/nodes/me/budget",
        json={"entries": []},
        headers={"Authorization": f"Bearer {setup.researcher.token}"},
    )
    assert as_user.status_code == 403 and as_user.json()["error"]["code"] == "forbidden"
    assert httpx.put(f"{setup.url}/api/v1/nodes/me/budget", json={}).status_code == 401


def test_a_dp_query_some_node_cannot_afford_is_refused_up_front(setup: Setup) -> None:
    a, b, c = setup.nodes
    for node in setup.nodes:
        hello(node, BUDGET)
    # a spent epsilon 0.9 (one query: rho 0.9^2 / 2 = 0.405, beyond zCDP's LIMIT), b 0.95 (two
    # queries: rho 0.45125 + ...); by basic composition a has 0.1 left, b 0.05, c all of it
    report(a, spent(setup.study_id, 0.9, 0.405))
    report(b, spent(setup.study_id, 0.95, 0.45125, charges=2))
    assert LIMIT < 0.405

    with pytest.raises(BudgetExceeded) as refused:
        setup.submit(dp_query(0.2))  # more than a or b have
    assert refused.value.http_status == 409
    assert refused.value.message == (
        f"the query's epsilon 0.2 (rho 0.02) exceeds what study 'pilot {setup.n}' has left of "
        f"the differential-privacy budget on dataset 'cohort' by both basic composition and "
        f"zCDP (node {a.name}: a query of epsilon up to 0.1 (basic composition: epsilon 0.1, "
        f"delta 1e-06 left; zCDP: rho 0 left); node {b.name}: a query of epsilon up to 0.05 "
        "(basic composition: epsilon 0.05, delta 1e-06 left; zCDP: rho 0 left), as last "
        "reported)"
    )
    assert [n["node"] for n in refused.value.details["nodes"]] == [a.name, b.name]
    assert refused.value.details["rho"] == 0.02
    # 0.07: within a's 0.1, beyond b's 0.05
    with pytest.raises(BudgetExceeded) as only_b:
        setup.submit(dp_query(0.07))
    assert [n["node"] for n in only_b.value.details["nodes"]] == [b.name]
    assert f"node {b.name}: a query of epsilon up to 0.05 (" in only_b.value.message

    # 0.05 fits every node (b exactly: 0.95 + 0.05 = 1)
    affordable = setup.researcher._http.post(
        f"/studies/{setup.study_id}/queries",
        json={"dataset": DATASET, **dp_query(0.05)},
        headers={"Authorization": f"Bearer {setup.researcher.token}"},
    )
    assert affordable.status_code == 201, affordable.text
    assert affordable.json()["status"] == "pending"

    hello(c, {})
    with pytest.raises(PolicyDenied, match=f"node {c.name} has no differential-privacy budget"):
        setup.submit(dp_query(0.01))
    assert setup.submit({"statistic": "count"})["status"] == "pending", "no dp: no budget"


def total(epsilon: float, rho: float, delta: float = 0.0, charges: int = 1) -> dict[str, Any]:
    """What a node reports all studies spent on the dataset (as `spent`)."""
    return {
        "dataset": DATASET,
        "epsilon_spent": epsilon,
        "delta_spent": delta,
        "charges": charges,
        "rho_spent": rho,
    }


def test_a_node_total_over_all_studies_is_shown_and_binds(setup: Setup) -> None:
    a, b, c = setup.nodes
    hello(a, {**BUDGET, "dp_total": {"epsilon": 1.5}})  # its delta: the allocation's, 1e-6
    hello(
        b,
        {
            "dp_budget": {"epsilon": 1.0, "delta": 1e-5},
            "dp_dataset_totals": {DATASET: {"epsilon": 5, "delta": 2e-6}},
        },
    )
    hello(c, BUDGET)
    a_total = float(rho_budget(1.5, 1e-6))  # about 0.0384
    # a: this study spent 0.1 (rho 0.005); all studies together 1.45 of 1.5 (rho 0.9: beyond
    # zCDP's a_total), some of it by studies the coordinator may not know
    a.ok(
        "PUT",
        "/nodes/me/budget",
        json={
            "entries": [spent(setup.study_id, 0.1, 0.005)],
            "dataset_totals": [total(1.45, 0.9, charges=4)],
        },
    )
    # b: other studies left 0.03 of b's total by basic composition, rho 1 beyond its zCDP
    b_totals = [total(4.97, 1.0, charges=3)]
    b.ok("PUT", "/nodes/me/budget", json={"entries": [], "dataset_totals": b_totals})

    [cohort] = setup.researcher.study_budget(setup.study_id)["datasets"]
    nodes = {n["node"]: n for n in cohort["nodes"]}
    assert nodes[a.name]["epsilon_remaining"] == pytest.approx(0.9), (
        "what is left of the study's own budget (basic composition)"
    )
    assert nodes[a.name]["dataset_total"] == {
        "rho_limit": pytest.approx(a_total),
        "rho_spent": 0.9,
        "rho_remaining": 0.0,
        "epsilon_limit": 1.5,
        "epsilon_spent": 1.45,
        "epsilon_remaining": pytest.approx(0.05),
        "basic_epsilon_remaining": pytest.approx(0.05),
        "zcdp_epsilon_remaining": 0.0,
        "delta_limit": 1e-6,  # filled in from the allocation
        "delta_spent": 0.0,
        "delta_remaining": 1e-6,
        "charges": 4,
    }
    assert nodes[a.name]["epsilon_available"] == pytest.approx(0.05)
    assert nodes[a.name]["delta_available"] == 1e-6
    assert nodes[b.name]["dataset_total"]["delta_remaining"] == 2e-6, "the total's own delta"
    assert nodes[b.name]["epsilon_available"] == pytest.approx(0.03)
    assert nodes[b.name]["delta_available"] == 2e-6, "the lesser of the allocation's and total's"
    # c configures no total: on by default, the allocation, of which nothing is reported spent
    c_total = nodes[c.name]["dataset_total"]
    assert (c_total["epsilon_limit"], c_total["delta_limit"], c_total["charges"]) == (1.0, 1e-6, 0)
    assert c_total["rho_remaining"] == pytest.approx(LIMIT)
    assert cohort["epsilon_remaining"] == pytest.approx(0.03)

    with pytest.raises(BudgetExceeded) as refused:
        setup.submit(dp_query(0.04))  # beyond b's 0.03, within a's 0.05
    assert refused.value.message == (
        f"the query's epsilon 0.04 (rho 0.0008) exceeds what study 'pilot {setup.n}' has left "
        "of the differential-privacy budget on dataset 'cohort' by both basic composition and "
        f"zCDP (node {b.name}: a query of epsilon up to 0.03 (basic composition: epsilon 0.03, "
        "delta 2e-06 left; zCDP: rho 0 left) of the dataset's total over all studies, as last "
        "reported)"
    )
    [short] = refused.value.details["nodes"]
    assert (short["node"], short["limit"]) == (b.name, "dataset_total")
    assert short["epsilon_remaining"] == pytest.approx(0.03)
    with pytest.raises(BudgetExceeded) as both:
        setup.submit(dp_query(0.07))  # beyond a's 0.05 too
    assert [(n["node"], n["limit"]) for n in both.value.details["nodes"]] == [
        (a.name, "dataset_total"),
        (b.name, "dataset_total"),
    ]
    events = [
        e
        for e in setup.admin.audit()
        if e["action"] == "node.budget_reported" and e["subject"] == f"node:{b.name}"
    ]
    assert events[-1]["details"]["dataset_totals"] == b_totals


def test_a_report_names_each_dataset_total_once(setup: Setup) -> None:
    twice = setup.nodes[0].call(
        "PUT", "/nodes/me/budget", json={"entries": [], "dataset_totals": [total(0.1, 0.005)] * 2}
    )
    assert twice.status_code == 422
    assert twice.json()["error"]["message"] == (
        "each dataset may appear once in a budget report's dataset_totals"
    )


def test_the_task_names_its_study(setup: Setup) -> None:
    query = setup.submit({"statistic": "count"})
    tasks = [node.take_task() for node in setup.nodes]
    assert {t["study_id"] for t in tasks} == {setup.study_id}
    assert {t["query_id"] for t in tasks} == {query["id"]}


def test_a_node_key_cannot_read_a_study_budget_through_the_client(setup: Setup) -> None:
    client = type(setup.researcher)(setup.url, token=setup.nodes[0].key)
    with pytest.raises(Forbidden):
        client.study_budget(setup.study_id)


def test_the_budget_migration_keeps_the_nodes(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = Database(backend.new_database())
    try:
        upgrade(database.engine, "0003")
        with monkeypatch.context() as patched, database.session() as db:
            patched.setattr(audit, "record", record_before_signing)
            org = network.create_organisation(db, "Hospital A", "test")
            add_node_as_of_0003(db, "node-a", org.id)
        upgrade(database.engine)
        with database.engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text("SELECT name, budget_reported_at FROM nodes"))
            assert rows.all() == [("node-a", None)]
            assert conn.execute(sqlalchemy.text("SELECT * FROM node_budgets")).all() == []
            totals = conn.execute(sqlalchemy.text("SELECT * FROM node_dataset_budgets"))
            assert totals.all() == []
    finally:
        database.dispose()
