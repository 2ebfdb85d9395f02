"""The query protocol between coordinator and nodes, over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy

from tessera.client import TesseraClient

from .conftest import Coordinator, Setup

COUNT = {"statistic": "count"}
RESULT = {"n": 10, "count": 10}
MEAN_RESULT = {"n": 10, "mean": 6.25}


def in_parallel(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls at the same moment (a barrier), each in its own thread; their answers."""
    barrier = threading.Barrier(len(calls))
    answers: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            answers[i] = calls[i]()
        except Exception as exc:
            answers[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


def test_a_query_runs_when_every_node_accepts_and_all_results_agree(setup: Setup) -> None:
    query = setup.submit(
        {"statistic": "mean", "column": "weight_kg", "where": [["age_months", ">=", 12]]}
    )
    assert query["status"] == "pending" and query["result"] is None and query["error"] is None
    assert [t["party_id"] for t in query["tasks"]] == [0, 1, 2]
    assert [t["node"] for t in query["tasks"]] == [n.name for n in setup.nodes]

    tasks = [node.take_task() for node in setup.nodes]
    assert [t["party_id"] for t in tasks] == [0, 1, 2], "party ids follow node ids"
    assert {t["query_id"] for t in tasks} == {query["id"]}
    assert tasks[0]["n_parties"] == 3 and tasks[0]["dataset"] == "cohort"
    assert tasks[0]["query"]["where"] == [["age_months", ">=", 12]]
    assert setup.nodes[0].ok("GET", "/nodes/me/tasks") == [], "a task is offered once"

    for i, (node, task) in enumerate(zip(setup.nodes, tasks, strict=True)):
        waiting = node.ok("GET", f"/tasks/{task['id']}/start")
        assert waiting == {"start": False, "status": "pending", "parties": [], "deadline": None}
        assert node.accept(task, 31000 + i) == {"status": "accepted"}
    assert setup.researcher.get_query(query["id"])["status"] == "running"
    start = setup.nodes[1].ok("GET", f"/tasks/{tasks[1]['id']}/start", params={"wait": 5})
    assert start["start"] is True and start["status"] == "running" and start["deadline"]
    assert [(p["party_id"], p["node"], p["port"]) for p in start["parties"]] == [
        (i, node.name, 31000 + i) for i, node in enumerate(setup.nodes)
    ]
    again = setup.nodes[1].call(
        "POST", f"/tasks/{tasks[1]['id']}/accept", json={"mpc_host": "127.0.0.1", "mpc_port": 1}
    )
    assert again.status_code == 409

    for node, task in zip(setup.nodes, tasks, strict=True):
        node.ok("POST", f"/tasks/{task['id']}/progress", json={"stage": "mpc"})
        view = setup.researcher.get_query(query["id"])
        assert view["result"] is None, "no result before every party reported"
        assert node.post_result(task, MEAN_RESULT, min_count=5).json() == {"status": "done"}
    done = setup.researcher.wait_query(query["id"], timeout=10)
    assert done["status"] == "succeeded" and done["error"] is None
    assert done["result"] == MEAN_RESULT and done["min_count_applied"] == 5
    assert [(t["status"], t["stage"]) for t in done["tasks"]] == [("done", "mpc")] * 3
    assert done["started_at"] and done["finished_at"] >= done["started_at"] >= done["created_at"]
    listed = setup.researcher.study_queries(setup.study_id)
    assert [q["id"] for q in listed] == [query["id"]] and listed[0]["status"] == "succeeded"
    audit = setup.admin.audit()
    ours = [e["action"] for e in audit if e["subject"] == f"query:{query['id']}"]
    assert ours == ["query.submitted"] + ["task.accepted"] * 3 + [
        "query.started",
        "result.opened",
    ]


def test_long_polls_answer_as_soon_as_there_is_news(setup: Setup) -> None:
    node = setup.nodes[0]
    polled: list[Any] = []
    poller = threading.Thread(
        target=lambda: polled.append(node.ok("GET", "/nodes/me/tasks", params={"wait": 20}))
    )
    poller.start()
    time.sleep(0.3)
    query = setup.submit(COUNT)
    poller.join(timeout=10)
    assert not poller.is_alive(), "the node's long-poll did not answer when its task arrived"
    assert polled[0][0]["query_id"] == query["id"]

    waited: list[Any] = []
    watcher = threading.Thread(
        target=lambda: waited.append(setup.researcher.get_query(query["id"], wait=20))
    )
    watcher.start()
    time.sleep(0.3)
    task = polled[0][0]
    node.ok("POST", f"/tasks/{task['id']}/reject", json={"reason": "no"})
    watcher.join(timeout=10)
    assert not watcher.is_alive(), "the query long-poll did not answer when the query ended"
    assert waited[0]["status"] == "failed"


def test_a_long_poll_whose_node_left_takes_nothing(setup: Setup) -> None:
    """A node's long-poll whose connection closed (the agent stopped, or its network) ends
    there: a task that arrives afterwards is not taken by it (it would be lost), and the
    node's next poll gets it."""
    node = setup.nodes[0]
    host, port = node.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(
            f"GET /api/v1/nodes/me/tasks?wait=20 HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {node.key}\r\n\r\n".encode()
        )
        time.sleep(0.3)  # the poll is waiting: then its client goes
    query = setup.submit(COUNT)
    task = node.take_task()
    assert task["query_id"] == query["id"]


def test_an_empty_long_poll_waits_then_answers_nothing(setup: Setup) -> None:
    began = time.monotonic()
    assert setup.nodes[0].ok("GET", "/nodes/me/tasks", params={"wait": 0.5}) == []
    assert time.monotonic() - began >= 0.5
    query = setup.submit(COUNT)
    view = setup.researcher.get_query(query["id"], wait=0.3)
    assert view["status"] == "pending"


def test_a_result_not_of_its_statistics_shape_fails_the_query(setup: Setup) -> None:
    query = setup.submit(COUNT)
    tasks = setup.accept_all()
    malformed = setup.nodes[0].post_result(tasks[0], {"n": 10, "count": 10, "rows": [1, 2]})
    assert malformed.status_code == 200 and malformed.json() == {"status": "failed"}
    done = setup.researcher.wait_query(query["id"], timeout=10)
    assert done["status"] == "failed" and done["result"] is None
    assert done["error"]["code"] == "result_invalid"
    assert "rows: Extra inputs are not permitted" in done["error"]["message"]
    assert "[1, 2]" not in done["error"]["message"], "the message names keys, never values"


def test_disagreeing_results_store_nothing(setup: Setup, coordinator: Coordinator) -> None:
    query = setup.submit(COUNT)
    tasks = setup.accept_all()
    for i, (node, task) in enumerate(zip(setup.nodes, tasks, strict=True)):
        node.post_result(task, {"n": 10, "count": 10 + (i == 2)})
    done = setup.researcher.wait_query(query["id"], timeout=10)
    assert done["status"] == "failed" and done["result"] is None
    assert done["min_count_applied"] is None
    assert done["error"]["code"] == "results_disagree"
    engine = sqlalchemy.create_engine(coordinator.database_url)
    with engine.connect() as conn:
        stored = conn.execute(
            sqlalchemy.text("SELECT result FROM queries WHERE id = :id"), {"id": query["id"]}
        ).scalar_one()
        kept = (
            conn.execute(
                sqlalchemy.text("SELECT result FROM tasks WHERE query_id = :id"),
                {"id": query["id"]},
            )
            .scalars()
            .all()
        )
    engine.dispose()
    assert stored is None and kept == [None, None, None], "no party's result is kept either"


def test_results_agree_whatever_their_key_order(setup: Setup) -> None:
    query = setup.submit(COUNT)
    tasks = setup.accept_all()
    for node, task, result in zip(
        setup.nodes,
        tasks,
        [{"n": 3, "count": 3}, {"count": 3, "n": 3}, {"n": 3, "count": 3}],
        strict=True,
    ):
        node.post_result(task, result)
    assert setup.researcher.wait_query(query["id"], timeout=10)["status"] == "succeeded"


def test_a_refusing_node_fails_the_query_with_its_reason(setup: Setup) -> None:
    query = setup.submit(COUNT)
    first = setup.nodes[0].take_task()
    setup.nodes[0].accept(first)
    task = setup.nodes[1].take_task()
    setup.nodes[1].ok("POST", f"/tasks/{task['id']}/reject", json={"reason": "not on Sundays"})
    done = setup.researcher.wait_query(query["id"], timeout=10)
    message = f"node {setup.nodes[1].name} refused: not on Sundays"
    assert done["status"] == "failed"
    assert done["error"] == {"code": "node_refused", "message": message}
    assert [t["status"] for t in done["tasks"]] == ["cancelled", "refused", "cancelled"]
    assert setup.nodes[2].ok("GET", "/nodes/me/tasks") == [], "no task of a failed query is offered"
    late = setup.nodes[0].call("GET", f"/tasks/{first['id']}/start")
    assert late.status_code == 409 and message in late.json()["error"]["message"]


def test_a_node_failing_mid_protocol_fails_the_query(setup: Setup) -> None:
    query = setup.submit(COUNT)
    tasks = setup.accept_all()
    setup.nodes[1].post_result(tasks[1], RESULT)
    setup.nodes[0].ok(
        "POST",
        f"/tasks/{tasks[0]['id']}/fail",
        json={"code": "protocol_failed", "message": "peer vanished"},
    )
    done = setup.researcher.wait_query(query["id"], timeout=10)
    message = f"node {setup.nodes[0].name}: peer vanished"
    assert done["error"] == {"code": "protocol_failed", "message": message}
    assert [t["status"] for t in done["tasks"]] == ["failed", "done", "cancelled"]
    assert done["result"] is None

    late = setup.nodes[2].post_result(tasks[2], RESULT)
    assert late.status_code == 409 and late.json()["error"]["code"] == "conflict"
    assert message in late.json()["error"]["message"]
    assert setup.researcher.get_query(query["id"])["result"] is None
    for path, body in [
        ("progress", {"stage": "mpc"}),
        ("fail", {"code": "x", "message": "y"}),
        ("reject", {"reason": "z"}),
    ]:
        response = setup.nodes[2].call("POST", f"/tasks/{tasks[2]['id']}/{path}", json=body)
        assert response.status_code == 409, path


def test_an_accept_that_waits_answers_with_the_go(setup: Setup) -> None:
    """`POST /tasks/{id}/accept?wait=s`: the accept and the start long-poll in one request."""
    setup.submit({"statistic": "count"})
    tasks = [node.take_task() for node in setup.nodes]
    body = {"mpc_host": "127.0.0.1", "mpc_port": 32000}

    def accept(i: int, wait: float) -> Any:
        node, task = setup.nodes[i], tasks[i]
        return node.ok("POST", f"/tasks/{task['id']}/accept", params={"wait": wait}, json=body)

    # the go has not come within the wait: accepted, no start (the node long-polls /start)
    started = time.monotonic()
    assert accept(0, 0.3) == {"status": "accepted", "start": None}
    assert time.monotonic() - started >= 0.25
    waiting: list[Any] = []
    second = threading.Thread(target=lambda: waiting.append(accept(1, 10)))
    second.start()
    time.sleep(0.3)
    assert second.is_alive(), "the second node waits in its accept"
    last = accept(2, 10)  # the last acceptance gives the go: at once
    second.join(timeout=5)
    for answer in (last, waiting[0]):
        assert answer["status"] == "accepted" and answer["start"]["start"] is True
        assert [p["party_id"] for p in answer["start"]["parties"]] == [0, 1, 2]
    # the same acceptance again: the first answer, and the go with it
    replay = setup.nodes[0].call(
        "POST", f"/tasks/{tasks[0]['id']}/accept", params={"wait": 1}, json=body
    )
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["start"]["start"] is True


def test_an_accept_waiting_for_a_go_that_never_comes_answers_accepted(setup: Setup) -> None:
    query = setup.submit({"statistic": "count"})
    tasks = [node.take_task() for node in setup.nodes]
    body = {"mpc_host": "127.0.0.1", "mpc_port": 32000}
    answers: list[Any] = []
    node, task = setup.nodes[0], tasks[0]
    waiting = threading.Thread(
        target=lambda: answers.append(
            node.call("POST", f"/tasks/{task['id']}/accept", params={"wait": 10}, json=body)
        )
    )
    waiting.start()
    time.sleep(0.3)
    setup.nodes[2].ok("POST", f"/tasks/{tasks[2]['id']}/reject", json={"reason": "policy"})
    waiting.join(timeout=5)
    assert not waiting.is_alive(), "the query's end ends the wait"
    assert answers[0].status_code == 200
    assert answers[0].json() == {"status": "accepted", "start": None}
    # the node's start long-poll then says why
    assert node.call("GET", f"/tasks/{task['id']}/start").status_code == 409
    assert setup.researcher.get_query(query["id"])["status"] == "failed"


def test_a_result_before_the_start_is_refused(setup: Setup) -> None:
    setup.submit(COUNT)
    task = setup.nodes[0].take_task()
    setup.nodes[0].accept(task)
    response = setup.nodes[0].post_result(task, RESULT)
    assert response.status_code == 409 and "only a running task" in response.text


def test_nodes_only_see_their_own_tasks(setup: Setup) -> None:
    setup.submit(COUNT)
    task = setup.nodes[0].take_task()
    other = setup.nodes[1]
    for method, path, body in [
        ("GET", "start", None),
        ("POST", "accept", {"mpc_host": "h", "mpc_port": 1}),
        ("POST", "reject", {"reason": "mine now"}),
        ("POST", "progress", {"stage": "x"}),
        ("POST", "result", {"result": RESULT, "min_count_applied": 0, "seconds": 0}),
        ("POST", "fail", {"code": "x", "message": "y"}),
    ]:
        response = other.call(method, f"/tasks/{task['id']}/{path}", json=body)
        assert response.status_code == 404, path
        assert response.json()["error"]["message"] == f"no task {task['id']}"
    assert setup.nodes[0].ok("GET", f"/tasks/{task['id']}/start")["start"] is False


def test_concurrent_acceptances_and_results_are_serialised(setup: Setup) -> None:
    """The last of three simultaneous acceptances starts the query, and the last of three
    simultaneous results settles it, every time; the audit chain stays one chain."""
    for _ in range(4):
        query = setup.submit(COUNT)
        tasks = [node.take_task() for node in setup.nodes]
        pairs = list(zip(setup.nodes, tasks, strict=True))
        answers = in_parallel(*(lambda n=n, t=t: n.accept(t) for n, t in pairs))
        assert answers == [{"status": "accepted"}] * 3
        assert setup.researcher.get_query(query["id"])["status"] == "running"
        in_parallel(*(lambda n=n, t=t: n.post_result(t, RESULT) for n, t in pairs))
        done = setup.researcher.get_query(query["id"])
        assert done["status"] == "succeeded" and done["result"] == RESULT
    assert setup.admin.audit_verify()["ok"] is True


def test_concurrent_logins_and_admin_writes_keep_one_audit_chain(setup: Setup) -> None:
    def login() -> None:
        TesseraClient(setup.url).login(setup.researcher_name, "rita-password")

    def organisation(i: int) -> Callable[[], Any]:
        return lambda: setup.admin.create_organisation(f"Parallel {setup.n}-{i}")

    answers = in_parallel(login, login, login, *(organisation(i) for i in range(4)))
    assert not [a for a in answers if isinstance(a, Exception)]
    assert setup.admin.audit_verify()["ok"] is True


@pytest.mark.parametrize("statistic", ["sum", "histogram"])
def test_the_submitted_query_is_stored_normalised(setup: Setup, statistic: str) -> None:
    extra = {"bins": [0, 10, 20]} if statistic == "histogram" else {}
    query = setup.submit(
        {"statistic": statistic, "column": "weight_kg", "group_by": "sex", "min_count": 5, **extra}
    )
    assert query["query"]["group_by"] == ["sex"] and query["query"]["min_count"] == 5
    assert query["query"]["where"] == []
    task = setup.nodes[0].take_task()
    assert task["query"] == query["query"]


# ---- a node's retries: the first answer again, nothing twice ------------------------------


def audit_of(setup: Setup, query_id: int, action: str) -> list[dict[str, Any]]:
    return [e for e in setup.admin.audit(action) if e["subject"] == f"query:{query_id}"]


def test_a_retried_step_is_answered_its_first_answer_and_changes_nothing(setup: Setup) -> None:
    """A node that lost the reply sends the same request again: the same status and body
    (marked `Idempotent-Replayed`), no second audit entry, no second transition; another
    request for the same step is a 409 saying so."""
    query = setup.submit(COUNT)
    tasks = [node.take_task() for node in setup.nodes]
    accept = {"mpc_host": "127.0.0.1", "mpc_port": 30100}
    for node, task in zip(setup.nodes, tasks, strict=True):
        first = node.call("POST", f"/tasks/{task['id']}/accept", json=accept)
        again = node.call("POST", f"/tasks/{task['id']}/accept", json=accept)
        assert (again.status_code, again.json()) == (first.status_code, first.json())
        assert first.status_code == 200 and "idempotent-replayed" not in first.headers
        assert again.headers["idempotent-replayed"] == "true"
    assert setup.researcher.get_query(query["id"])["status"] == "running"
    assert len(audit_of(setup, query["id"], "task.accepted")) == 3
    assert len(audit_of(setup, query["id"], "query.started")) == 1
    node, task = setup.nodes[0], tasks[0]
    other = node.call("POST", f"/tasks/{task['id']}/accept", json={**accept, "mpc_port": 30101})
    assert other.status_code == 409
    assert other.json()["error"]["message"] == (
        f"task {task['id']} already took another accept from node {node.name} (the first one "
        "stands; a retry must repeat the first request exactly)"
    )
    assert other.json()["error"]["details"]["status"] == "running"

    # progress: the same note again is nothing new, a newer one is recorded
    for stage in ("mpc", "mpc", "opening"):
        node.ok("POST", f"/tasks/{task['id']}/progress", json={"stage": stage})
    assert setup.researcher.get_query(query["id"])["tasks"][0]["stage"] == "opening"

    for node, task in zip(setup.nodes, tasks, strict=True):
        assert node.post_result(task, RESULT).json() == {"status": "done"}
        again = node.post_result(task, RESULT)
        assert again.status_code == 200 and again.json() == {"status": "done"}
        assert again.headers["idempotent-replayed"] == "true"
    done = setup.researcher.get_query(query["id"])
    assert done["status"] == "succeeded" and done["result"] == RESULT
    assert len(audit_of(setup, query["id"], "result.opened")) == 1
    changed = setup.nodes[1].post_result(tasks[1], {"n": 11, "count": 11})
    assert changed.status_code == 409 and "already took another result" in changed.text
    assert setup.researcher.get_query(query["id"])["result"] == RESULT
    late = setup.nodes[2].call("POST", f"/tasks/{tasks[2]['id']}/progress", json={"stage": "x"})
    assert late.status_code == 409, "a newer note after the end is still refused"


@pytest.mark.parametrize("step", ["reject", "fail"])
def test_a_retried_refusal_or_failure_fails_the_query_once(setup: Setup, step: str) -> None:
    query = setup.submit(COUNT)
    tasks = setup.accept_all() if step == "fail" else [n.take_task() for n in setup.nodes]
    body = {"reason": "not today"} if step == "reject" else {"code": "x", "message": "peer gone"}
    node, task = setup.nodes[1], tasks[1]
    answers = [node.call("POST", f"/tasks/{task['id']}/{step}", json=body) for _ in range(3)]
    assert {(a.status_code, a.text) for a in answers} == {(200, answers[0].text)}
    assert [a.headers.get("idempotent-replayed") for a in answers] == [None, "true", "true"]
    assert setup.researcher.get_query(query["id"])["status"] == "failed"
    assert len(audit_of(setup, query["id"], "query.failed")) == 1
    assert (
        len(audit_of(setup, query["id"], f"task.{'refused' if step == 'reject' else 'failed'}"))
        == 1
    )
    other = node.call("POST", f"/tasks/{task['id']}/{step}", json={**body, "code": "y"})
    if step == "fail":
        assert other.status_code == 409 and "already took another fail" in other.text


def test_simultaneous_retries_of_one_step_run_it_once(setup: Setup) -> None:
    """A retry that arrives while the first request still runs waits for it (the task's
    lock), then is answered as it was."""
    query = setup.submit(COUNT)
    tasks = [node.take_task() for node in setup.nodes]
    node, task = setup.nodes[0], tasks[0]
    body = {"mpc_host": "127.0.0.1", "mpc_port": 30200}
    answers = in_parallel(
        *(lambda: node.call("POST", f"/tasks/{task['id']}/accept", json=body) for _ in range(4))
    )
    assert {(a.status_code, a.text) for a in answers} == {(200, '{"status":"accepted"}')}
    assert sorted(a.headers.get("idempotent-replayed", "") for a in answers) == [""] + ["true"] * 3
    assert len(audit_of(setup, query["id"], "task.accepted")) == 1
