"""The query protocol between coordinator and nodes, over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tessera.errors import NotFound

from .conftest import Setup

COUNT = {"statistic": "count"}
RESULT = {"n": 10, "count": 10}


def take_task(node: Any, wait: float = 5) -> dict[str, Any]:
    tasks = node.ok("GET", "/nodes/me/tasks", params={"wait": wait})
    assert len(tasks) == 1, tasks
    return tasks[0]


def accept_all(setup: Setup) -> list[dict[str, Any]]:
    tasks = [take_task(node) for node in setup.nodes]
    for port, (node, task) in enumerate(zip(setup.nodes, tasks, strict=True), start=30000):
        node.ok(
            "POST", f"/tasks/{task['id']}/accept", json={"mpc_host": "127.0.0.1", "mpc_port": port}
        )
    return tasks


def test_a_query_runs_when_every_node_accepts_and_all_results_agree(setup: Setup) -> None:
    query = setup.submit({**COUNT, "where": [["age_months", ">=", 12]]})
    assert query["status"] == "pending"
    assert [t["party_id"] for t in query["tasks"]] == [0, 1, 2]

    tasks = [take_task(node) for node in setup.nodes]
    assert {t["query_id"] for t in tasks} == {query["id"]}
    assert sorted(t["party_id"] for t in tasks) == [0, 1, 2]
    assert tasks[0]["n_parties"] == 3 and tasks[0]["query"]["where"] == [["age_months", ">=", 12]]
    assert setup.nodes[0].ok("GET", "/nodes/me/tasks") == [], "a task is offered once"

    for i, (node, task) in enumerate(zip(setup.nodes, tasks, strict=True)):
        waiting = node.ok("GET", f"/tasks/{task['id']}/start")
        assert waiting["start"] is False
        node.ok(
            "POST",
            f"/tasks/{task['id']}/accept",
            json={"mpc_host": "127.0.0.1", "mpc_port": 31000 + i},
        )
    start = setup.nodes[1].ok("GET", f"/tasks/{tasks[1]['id']}/start", params={"wait": 5})
    assert start["start"] is True and start["status"] == "running"
    assert [(p["party_id"], p["port"]) for p in start["parties"]] == [
        (t["party_id"], 31000 + i)
        for i, t in sorted(enumerate(tasks), key=lambda x: x[1]["party_id"])
    ]

    for node, task in zip(setup.nodes, tasks, strict=True):
        node.ok("POST", f"/tasks/{task['id']}/progress", json={"stage": "mpc"})
        view = setup.researcher.get_query(query["id"])
        assert view["result"] is None, "no result before every party reported"
        node.ok(
            "POST",
            f"/tasks/{task['id']}/result",
            json={"result": RESULT, "min_count_applied": 5, "seconds": 0.1},
        )
    done = setup.researcher.wait_query(query["id"], timeout=10)
    assert done["status"] == "succeeded"
    assert done["result"] == RESULT and done["min_count_applied"] == 5
    assert {t["status"] for t in done["tasks"]} == {"done"}


def test_long_poll_answers_when_a_task_arrives(setup: Setup) -> None:
    got: list[Any] = []
    poller = threading.Thread(
        target=lambda: got.append(setup.nodes[0].ok("GET", "/nodes/me/tasks", params={"wait": 20}))
    )
    poller.start()
    query = setup.submit(COUNT)
    poller.join(timeout=15)
    assert not poller.is_alive(), "the long-poll did not answer when the task arrived"
    assert got[0][0]["query_id"] == query["id"]


def test_disagreeing_results_store_nothing(setup: Setup) -> None:
    query = setup.submit(COUNT)
    tasks = accept_all(setup)
    for i, (node, task) in enumerate(zip(setup.nodes, tasks, strict=True)):
        result = {"n": 10, "count": 10 + (i == 2)}
        node.ok(
            "POST",
            f"/tasks/{task['id']}/result",
            json={"result": result, "min_count_applied": 0, "seconds": 0.1},
        )
    done = setup.researcher.wait_query(query["id"], timeout=10)
    assert done["status"] == "failed" and done["result"] is None
    assert done["error"]["code"] == "results_disagree"


def test_a_refusing_node_fails_the_query_with_its_reason(setup: Setup) -> None:
    query = setup.submit(COUNT)
    task = take_task(setup.nodes[1])
    setup.nodes[1].ok("POST", f"/tasks/{task['id']}/reject", json={"reason": "not on Sundays"})
    done = setup.researcher.wait_query(query["id"], timeout=10)
    assert done["status"] == "failed"
    message = f"node {setup.nodes[1].name} refused: not on Sundays"
    assert done["error"] == {"code": "node_refused", "message": message}
    other = take_task_or_none(setup.nodes[0])
    assert other is None, "a failed query's tasks are no longer offered"


def take_task_or_none(node: Any) -> Any:
    tasks = node.ok("GET", "/nodes/me/tasks")
    return tasks[0] if tasks else None


def test_a_node_that_never_accepts_times_the_query_out(setup: Setup) -> None:
    query = setup.submit(COUNT)
    for node in setup.nodes[:2]:
        task = take_task(node)
        node.ok("POST", f"/tasks/{task['id']}/accept", json={"mpc_host": "h", "mpc_port": 1234})
    done = setup.researcher.wait_query(query["id"], timeout=15)
    assert done["status"] == "failed" and done["error"]["code"] == "timeout"
    assert f"{setup.nodes[2].name} did not accept within 3 s" in done["error"]["message"]
    late = setup.nodes[1].call("GET", f"/tasks/{task['id']}/start")
    assert late.status_code == 409 and "did not accept" in late.json()["error"]["message"]


def test_a_silent_party_times_out_and_late_results_are_refused(setup: Setup) -> None:
    query = setup.submit(COUNT)
    tasks = accept_all(setup)
    for node, task in list(zip(setup.nodes, tasks, strict=True))[:2]:
        node.ok(
            "POST",
            f"/tasks/{task['id']}/result",
            json={"result": RESULT, "min_count_applied": 0, "seconds": 0.1},
        )
    done = setup.researcher.wait_query(query["id"], timeout=15)
    assert done["status"] == "failed" and done["result"] is None
    assert f"{setup.nodes[2].name} did not report a result" in done["error"]["message"]
    late = setup.nodes[2].call(
        "POST",
        f"/tasks/{tasks[2]['id']}/result",
        json={"result": RESULT, "min_count_applied": 0, "seconds": 1},
    )
    assert late.status_code == 409 and late.json()["error"]["code"] == "conflict"


def test_a_node_failing_mid_protocol_fails_the_query(setup: Setup) -> None:
    query = setup.submit(COUNT)
    tasks = accept_all(setup)
    setup.nodes[0].ok(
        "POST",
        f"/tasks/{tasks[0]['id']}/fail",
        json={"code": "protocol_failed", "message": "peer vanished"},
    )
    done = setup.researcher.wait_query(query["id"], timeout=10)
    message = f"node {setup.nodes[0].name}: peer vanished"
    assert done["error"] == {"code": "protocol_failed", "message": message}
    assert sorted(t["status"] for t in done["tasks"]) == ["cancelled", "cancelled", "failed"]


def test_nodes_only_see_their_own_tasks(setup: Setup) -> None:
    setup.submit(COUNT)
    task = take_task(setup.nodes[0])
    for path in (f"/tasks/{task['id']}/start", f"/tasks/{task['id']}/accept"):
        method = "GET" if path.endswith("start") else "POST"
        response = setup.nodes[1].call(method, path, json={"mpc_host": "h", "mpc_port": 1})
        assert response.status_code == 404


def test_queries_are_visible_to_study_members_only(setup: Setup) -> None:
    query = setup.submit(COUNT)
    setup.admin.create_user(f"outsider{setup.n}", "outsider-pw", role="researcher")
    from tessera.client import TesseraClient

    outsider = TesseraClient(setup.url)
    outsider.login(f"outsider{setup.n}", "outsider-pw")
    with pytest.raises(NotFound):
        outsider.get_query(query["id"])
    with pytest.raises(NotFound):
        outsider.submit_query(setup.study_id, {"dataset": "cohort", **COUNT})
    assert setup.admin.get_query(query["id"])["id"] == query["id"]
