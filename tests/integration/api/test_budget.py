"""Differential-privacy budgets at the coordinator, over HTTP on SQLite and PostgreSQL: nodes
publish their limits (hello) and their ledgers (`PUT /nodes/me/budget`), members read what is
left (`GET /studies/{id}/budget`), and a DP query some node cannot afford is refused up front.

No query with `dp` runs end to end here (the noise is smpc's): the node's own refusal is tested
with the agent in tests/unit/node_agent."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import pytest
import sqlalchemy

from api.db import Database
from api.migrate import upgrade
from api.services import network
from tessera.errors import BudgetExceeded, Forbidden, NotFound, PolicyDenied, Unauthorized

from .conftest import DATASET, Backend, FakeNode, Setup, logged_in
from .test_app import add_node_as_of_0003

BUDGET = {"dp_budget": {"epsilon": 1.0, "delta": 1e-6}}


def hello(node: FakeNode, policy: dict[str, Any]) -> None:
    node.ok("POST", "/nodes/me/hello", json={"agent_version": "test", "policy": policy})


def report(node: FakeNode, *entries: dict[str, Any]) -> Any:
    return node.ok("PUT", "/nodes/me/budget", json={"entries": list(entries)})


def spent(study_id: int, epsilon: float, delta: float = 0.0, charges: int = 1) -> dict[str, Any]:
    return {
        "study_id": study_id,
        "dataset": DATASET,
        "epsilon_spent": epsilon,
        "delta_spent": delta,
        "charges": charges,
    }


def dp_query(epsilon: float, delta: float = 0.0) -> dict[str, Any]:
    return {"statistic": "count", "dp": {"epsilon": epsilon, "delta": delta}}


def test_members_see_each_node_and_the_least_remaining(setup: Setup) -> None:
    a, b, c = setup.nodes
    hello(a, BUDGET)
    hello(b, {"dp_budget": {"epsilon": 2.0}, "dp_dataset_budgets": {DATASET: {"epsilon": 0.5}}})
    hello(c, {"min_count": 5})  # no budget: no DP query
    assert report(a, spent(setup.study_id, 0.3, 1e-7, charges=2)) == {
        "entries": 1,
        "ignored_study_ids": [],
    }
    report(b)

    view = setup.researcher.study_budget(setup.study_id)
    assert view["study_id"] == setup.study_id and view["composition"] == "basic"
    [cohort] = view["datasets"]
    nodes = {n["node"]: n for n in cohort["nodes"]}
    assert list(nodes) == [a.name, b.name, c.name]
    first = dict(nodes[a.name])
    assert datetime.fromisoformat(first.pop("reported_at")).tzinfo is not None
    assert first == {
        "node": a.name,
        "epsilon_limit": 1.0,
        "epsilon_spent": 0.3,
        "epsilon_remaining": 0.7,
        "delta_limit": 1e-6,
        "delta_spent": 1e-7,
        "delta_remaining": 9e-7,
        "charges": 2,
        "dataset_total": None,
        "epsilon_available": 0.7,
        "delta_available": 9e-7,
    }
    assert (nodes[b.name]["epsilon_limit"], nodes[b.name]["epsilon_remaining"]) == (0.5, 0.5)
    assert nodes[b.name]["delta_limit"] == 0.0 and nodes[b.name]["charges"] == 0
    assert nodes[c.name] | {"node": None} == {
        "node": None,
        "epsilon_limit": None,
        "epsilon_spent": 0.0,
        "epsilon_remaining": 0.0,
        "delta_limit": None,
        "delta_spent": 0.0,
        "delta_remaining": 0.0,
        "charges": 0,
        "dataset_total": None,
        "epsilon_available": 0.0,
        "delta_available": 0.0,
        "reported_at": None,
    }
    assert (cohort["epsilon_remaining"], cohort["delta_remaining"]) == (0.0, 0.0)

    hello(c, BUDGET)
    cohort = setup.admin.study_budget(setup.study_id)["datasets"][0]
    assert (cohort["epsilon_remaining"], cohort["delta_remaining"]) == (0.5, 0.0)


def test_a_report_replaces_the_last_and_leaves_out_unknown_studies(setup: Setup) -> None:
    node = setup.nodes[0]
    hello(node, BUDGET)
    answer = report(node, spent(setup.study_id, 0.25), spent(987654321, 0.5))
    assert answer == {"entries": 1, "ignored_study_ids": [987654321]}
    first = setup.researcher.study_budget(setup.study_id)["datasets"][0]["nodes"][0]
    assert first["epsilon_spent"] == 0.25

    report(node, spent(setup.study_id, 0.75, charges=3))
    again = setup.researcher.study_budget(setup.study_id)["datasets"][0]["nodes"][0]
    assert (again["epsilon_spent"], again["epsilon_remaining"], again["charges"]) == (0.75, 0.25, 3)
    assert again["reported_at"] >= first["reported_at"]

    events = [
        e
        for e in setup.admin.audit()
        if e["action"] == "node.budget_reported" and e["subject"] == f"node:{node.name}"
    ]
    assert [e["details"]["entries"][0]["epsilon_spent"] for e in events][-2:] == [0.25, 0.75]


def test_bad_budget_reports_are_422(setup: Setup) -> None:
    node = setup.nodes[0]
    twice = node.call("PUT", "/nodes/me/budget", json={"entries": [spent(setup.study_id, 0.1)] * 2})
    assert twice.status_code == 422
    assert twice.json()["error"]["message"] == (
        "each study and dataset may appear once in a budget report"
    )
    negative = node.call("PUT", "/nodes/me/budget", json={"entries": [spent(setup.study_id, -0.1)]})
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
    report(a, spent(setup.study_id, 0.8))
    report(b, spent(setup.study_id, 0.9, 1e-6))

    with pytest.raises(BudgetExceeded) as refused:
        setup.submit(dp_query(0.5))
    assert refused.value.http_status == 409
    assert refused.value.message == (
        f"the query's epsilon 0.5, delta 0 exceeds what study 'pilot {setup.n}' has left of "
        f"the differential-privacy budget on dataset 'cohort' (node {a.name}: epsilon 0.2, "
        f"delta 0.000001; node {b.name}: epsilon 0.1, delta 0, as last reported)"
    )
    assert [n["node"] for n in refused.value.details["nodes"]] == [a.name, b.name]
    with pytest.raises(BudgetExceeded, match=f"node {b.name}: epsilon 0.1, delta 0,"):
        setup.submit(dp_query(0.1, 1e-7))  # b has no delta left

    affordable = setup.researcher._http.post(
        f"/studies/{setup.study_id}/queries",
        json={"dataset": DATASET, **dp_query(0.1)},
        headers={"Authorization": f"Bearer {setup.researcher.token}"},
    )
    assert affordable.status_code == 201, affordable.text
    assert affordable.json()["status"] == "pending"

    hello(c, {})
    with pytest.raises(PolicyDenied, match=f"node {c.name} has no differential-privacy budget"):
        setup.submit(dp_query(0.1))
    assert setup.submit({"statistic": "count"})["status"] == "pending", "no dp: no budget"


def total(epsilon: float, delta: float = 0.0, charges: int = 1) -> dict[str, Any]:
    return {"dataset": DATASET, "epsilon_spent": epsilon, "delta_spent": delta, "charges": charges}


def test_a_node_total_over_all_studies_is_shown_and_binds(setup: Setup) -> None:
    a, b, c = setup.nodes
    hello(a, {**BUDGET, "dp_total": {"epsilon": 1.5}})
    hello(
        b,
        {
            "dp_budget": {"epsilon": 1.0, "delta": 1e-5},
            "dp_dataset_totals": {DATASET: {"epsilon": 5, "delta": 2e-6}},
        },
    )
    hello(c, BUDGET)
    # a: this study spent 0.25, all studies together 1.3 (some the coordinator may not know)
    a.ok(
        "PUT",
        "/nodes/me/budget",
        json={"entries": [spent(setup.study_id, 0.25)], "dataset_totals": [total(1.3, charges=4)]},
    )
    b.ok("PUT", "/nodes/me/budget", json={"entries": [], "dataset_totals": [total(2.0, 1e-6, 3)]})

    [cohort] = setup.researcher.study_budget(setup.study_id)["datasets"]
    nodes = {n["node"]: n for n in cohort["nodes"]}
    assert nodes[a.name]["epsilon_remaining"] == 0.75, "what is left of the study's own budget"
    assert nodes[a.name]["dataset_total"] == {
        "epsilon_limit": 1.5,
        "epsilon_spent": 1.3,
        "epsilon_remaining": pytest.approx(0.2),
        "delta_limit": None,
        "delta_spent": 0.0,
        "delta_remaining": None,
        "charges": 4,
    }
    assert nodes[a.name]["epsilon_available"] == pytest.approx(0.2)
    assert nodes[a.name]["delta_available"] == 1e-6, "delta is not capped over studies"
    assert nodes[b.name]["dataset_total"]["delta_remaining"] == 1e-6
    assert (nodes[b.name]["epsilon_available"], nodes[b.name]["delta_available"]) == (1.0, 1e-6)
    assert nodes[c.name]["dataset_total"] is None, "no cap: other studies' spending not shown"
    assert cohort["epsilon_remaining"] == pytest.approx(0.2)

    with pytest.raises(BudgetExceeded) as refused:
        setup.submit(dp_query(0.5))
    assert refused.value.message == (
        f"the query's epsilon 0.5, delta 0 exceeds what study 'pilot {setup.n}' has left of "
        f"the differential-privacy budget on dataset 'cohort' (node {a.name}: epsilon 0.2 of "
        "the dataset's total over all studies, as last reported)"
    )
    [short] = refused.value.details["nodes"]
    assert (short["node"], short["limit"]) == (a.name, "dataset_total")
    assert short["epsilon_remaining"] == pytest.approx(0.2)
    with pytest.raises(
        BudgetExceeded, match=f"node {b.name}: epsilon 3, delta 0.000001 of the dataset's"
    ):
        setup.submit(dp_query(0.1, 1.5e-6))  # b's own budget has 1e-6 left as well
    events = [
        e
        for e in setup.admin.audit()
        if e["action"] == "node.budget_reported" and e["subject"] == f"node:{b.name}"
    ]
    assert events[-1]["details"]["dataset_totals"] == [total(2.0, 1e-6, 3)]


def test_a_report_names_each_dataset_total_once(setup: Setup) -> None:
    twice = setup.nodes[0].call(
        "PUT", "/nodes/me/budget", json={"entries": [], "dataset_totals": [total(0.1)] * 2}
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


def test_the_budget_migration_keeps_the_nodes(backend: Backend) -> None:
    database = Database(backend.new_database())
    try:
        upgrade(database.engine, "0003")
        with database.session() as db:
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
