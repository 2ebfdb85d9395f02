"""Deadlines, and two coordinator replicas on one database (accept within 2 s, finish within
4 s): long-polls see changes made through the other replica, and of two sweepers exactly
one fails an overdue query."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tessera.client import TesseraClient

from .conftest import SHORT_SETTINGS, Backend, Coordinator, Setup, _people, build, start_coordinator

COUNT = {"statistic": "count"}
RESULT = {"n": 7, "count": 7}
ACCEPT_S = SHORT_SETTINGS["accept_timeout_s"]
QUERY_S = SHORT_SETTINGS["query_timeout_s"]


def query_events(setup: Setup, query_id: int) -> list[str]:
    audit = setup.admin.audit()
    return [e["action"] for e in audit if e["subject"] == f"query:{query_id}"]


def test_a_node_that_never_accepts_times_the_query_out(replica_setup: Setup) -> None:
    setup = replica_setup
    query = setup.submit(COUNT)
    tasks = [node.take_task() for node in setup.nodes[:2]]
    for node, task in zip(setup.nodes, tasks, strict=False):
        node.accept(task)
    done = setup.researcher.wait_query(query["id"], timeout=ACCEPT_S + 3)
    assert done["status"] == "failed" and done["result"] is None
    name = setup.nodes[2].name
    message = f"node {name} did not accept within {ACCEPT_S} s ({name}: never fetched the task)"
    assert done["error"] == {"code": "timeout", "message": message}
    assert [t["status"] for t in done["tasks"]] == ["cancelled"] * 3
    assert (
        done["tasks"][2]["error"] == f"did not accept within {ACCEPT_S} s (never fetched the task)"
    )
    late = setup.nodes[1].call("GET", f"/tasks/{tasks[1]['id']}/start")
    assert late.status_code == 409 and message in late.json()["error"]["message"]
    assert setup.nodes[2].ok("GET", "/nodes/me/tasks") == []
    assert query_events(setup, query["id"]).count("query.failed") == 1, "failed exactly once"


def test_nodes_that_never_look_are_named_together(replica_setup: Setup) -> None:
    setup = replica_setup
    query = setup.submit(COUNT)
    setup.nodes[0].accept(setup.nodes[0].take_task())
    done = setup.researcher.wait_query(query["id"], timeout=ACCEPT_S + 3)
    one, two = setup.nodes[1].name, setup.nodes[2].name
    assert done["error"]["message"] == (
        f"nodes {one}, {two} did not accept within {ACCEPT_S} s "
        f"({one}: never fetched the task; {two}: never fetched the task)"
    )


def test_a_silent_party_times_out_and_late_results_are_refused(replica_setup: Setup) -> None:
    setup = replica_setup
    query = setup.submit(COUNT)
    tasks = setup.accept_all()
    for node, task in list(zip(setup.nodes, tasks, strict=True))[:2]:
        assert node.post_result(task, RESULT).status_code == 200
    done = setup.researcher.wait_query(query["id"], timeout=QUERY_S + 3)
    assert done["status"] == "failed" and done["result"] is None
    name = setup.nodes[2].name
    message = (
        f"node {name} did not report a result within {QUERY_S} s "
        f"({name}: accepted and was given the go to run its MPC party)"
    )
    assert done["error"] == {"code": "timeout", "message": message}
    late = setup.nodes[2].post_result(tasks[2], RESULT)
    assert late.status_code == 409 and late.json()["error"]["code"] == "conflict"
    assert setup.researcher.get_query(query["id"])["result"] is None
    assert query_events(setup, query["id"]).count("query.failed") == 1


def test_acceptance_after_the_deadline_is_refused(replica_setup: Setup) -> None:
    setup = replica_setup
    setup.submit(COUNT)
    task = setup.nodes[0].take_task()
    time.sleep(ACCEPT_S + 0.1)
    response = setup.nodes[0].call(
        "POST", f"/tasks/{task['id']}/accept", json={"mpc_host": "h", "mpc_port": 1}
    )
    assert response.status_code == 409
    assert "deadline" in response.json()["error"]["message"] or "did not accept" in response.text


def test_a_query_runs_across_replicas(
    replica_setup: Setup, replicas: tuple[Coordinator, Coordinator]
) -> None:
    """Nodes talk to one replica, the researcher to the other: long-polls still answer (by
    re-checking the database), and the result is the same through both."""
    setup = replica_setup
    first, second = replicas
    for node in setup.nodes:
        node.url = second.url
    polled: list[Any] = []
    poller = threading.Thread(
        target=lambda: polled.append(
            setup.nodes[0].ok("GET", "/nodes/me/tasks", params={"wait": 10})
        )
    )
    poller.start()
    time.sleep(0.3)
    began = time.monotonic()
    query = setup.submit(COUNT)  # through the first replica
    poller.join(timeout=10)
    assert polled and polled[0], "the long-poll on the other replica did not see the task"
    assert time.monotonic() - began < 9

    tasks = [polled[0][0]] + [node.take_task() for node in setup.nodes[1:]]
    starts: list[Any] = []
    starter = threading.Thread(
        target=lambda: starts.append(
            setup.nodes[0].ok("GET", f"/tasks/{tasks[0]['id']}/start", params={"wait": 10})
        )
    )
    starter.start()
    for i, (node, task) in enumerate(zip(setup.nodes, tasks, strict=True)):
        node.url = (first if i == 2 else second).url  # the last acceptance via the first
        node.accept(task, 32000 + i)
    starter.join(timeout=10)
    assert starts and starts[0]["start"] is True
    assert [p["port"] for p in starts[0]["parties"]] == [32000, 32001, 32002]

    for node, task in zip(setup.nodes, tasks, strict=True):
        assert node.post_result(task, RESULT).status_code == 200
    via_second = TesseraClient(second.url, token=setup.researcher.token)
    assert via_second.wait_query(query["id"], timeout=5)["result"] == RESULT
    assert setup.researcher.get_query(query["id"])["status"] == "succeeded"
    assert setup.admin.audit_verify()["ok"] is True


@pytest.mark.postgres
def test_replicas_on_postgresql_wake_each_others_long_polls_at_once(
    pg_backend: Backend,
) -> None:
    """On PostgreSQL a change through one replica wakes the other's long-polls through
    LISTEN/NOTIFY (`api.notify.Broadcast`), not by the periodic re-check: with the re-check
    set to a minute, a node's long-poll on the second replica still sees a task submitted
    through the first long before its wait ends."""
    url = pg_backend.new_database()
    settings = {**SHORT_SETTINGS, "long_poll_recheck_s": 60, "long_poll_max_s": 60}
    first = start_coordinator(pg_backend.root, url, **settings)
    try:
        second = start_coordinator(
            pg_backend.root,
            url,
            jwt_secret=first.jwt_secret,
            admin_password=first.admin_password,
            **settings,
        )
        try:
            with _people(first.url, first.admin_password) as people:
                setup = build(first.url, people)
                for node in setup.nodes:
                    node.url = second.url
                polled: list[Any] = []
                poller = threading.Thread(
                    target=lambda: polled.append(
                        setup.nodes[0].ok("GET", "/nodes/me/tasks", params={"wait": 45})
                    )
                )
                poller.start()
                time.sleep(1.0)  # the long-poll has made its first check and waits
                began = time.monotonic()
                setup.submit(COUNT)  # through the first replica
                poller.join(timeout=50)
                waited = time.monotonic() - began
                assert polled and polled[0], "the long-poll on the other replica saw no task"
                assert waited < 30, f"woken after {waited:.1f} s: by the re-check, not the news"
        finally:
            second.stop()
    finally:
        first.stop()
