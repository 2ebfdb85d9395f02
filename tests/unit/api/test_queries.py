"""Queries: submission into tasks, the accept/start/result protocol, failures and deadlines."""

from __future__ import annotations

import copy

import pytest

from api.services import queries
from tessera.errors import Conflict, NotFound, PolicyDenied
from tessera.schemas import TaskFailure, TaskResult

RESULT = {"n": 128, "count": 128}


def _result(result=RESULT, min_count=5) -> TaskResult:
    return TaskResult(result=result, min_count_applied=min_count, seconds=0.5)


# ---- submission ------------------------------------------------------------------------


def test_submit_makes_one_pending_task_per_node_in_node_id_order(make, net, clock) -> None:
    query = make.submit(net)

    assert query.status == "pending"
    assert [(t.node_id, t.party_id, t.status) for t in query.tasks] == [
        (node.id, party, "pending") for party, node in enumerate(net.nodes)
    ]
    assert query.created_at == clock.now()
    assert (query.accept_deadline - query.created_at).total_seconds() == 30
    assert (query.deadline - query.created_at).total_seconds() == 120
    (event,) = make.events("query.submitted")
    assert event.subject == f"query:{query.id}"
    assert event.details["nodes"] == ["h1", "h2", "h3"]
    assert event.at == clock.now()


def test_fewer_than_three_nodes_is_a_conflict(make) -> None:
    two = make.network(policies=[None, None])

    with pytest.raises(Conflict, match=r"at least 3 parties; 2 node\(s\)") as caught:
        make.submit(two)
    assert caught.value.details == {"nodes": ["h1", "h2"]}
    assert make.events("query.submitted") == []


def test_nodes_declaring_a_column_differently_is_a_conflict_naming_it(make) -> None:
    other = copy.deepcopy(make.schema)
    other["columns"][1]["levels"] = ["F", "M", "X"]
    net = make.network(schemas=[make.schema, make.schema, other])

    with pytest.raises(Conflict, match="declare column 'sex' of dataset 'cohort' differently"):
        make.submit(net, {"group_by": "sex"})
    make.submit(net, {"statistic": "mean", "column": "weight"})  # 'sex' unread: no conflict


def test_a_column_missing_at_some_node_is_a_conflict_naming_the_node(make) -> None:
    other = copy.deepcopy(make.schema)
    other["columns"] = [c for c in other["columns"] if c["name"] != "icu"]
    net = make.network(schemas=[make.schema, other, make.schema])

    with pytest.raises(Conflict, match=r"column 'icu' .* is not declared by node h2") as caught:
        make.submit(net, {"where": [["icu", "==", True]]})
    assert caught.value.details == {"column": "icu", "nodes": ["h2"]}


def test_a_statistic_a_node_does_not_allow_is_policy_denied(make) -> None:
    net = make.network(policies=[None, {"allowed_statistics": ["mean"]}, None])

    with pytest.raises(PolicyDenied, match="node h2 does not allow 'count' queries"):
        make.submit(net)
    assert make.submit(net, {"statistic": "mean", "column": "age"}).status == "pending"


# ---- offering and accepting -------------------------------------------------------------


def test_a_task_is_offered_once(make, net, db) -> None:
    query = make.submit(net)
    node = net.nodes[1]

    (offered,) = queries.offer_tasks(db, node)
    assert (offered.query_id, offered.party_id, offered.n_parties) == (query.id, 1, 3)
    assert make.task(query, node).status == "offered"
    assert queries.offer_tasks(db, node) == []


def test_another_nodes_task_is_not_found(make, net, db) -> None:
    query = make.submit(net)
    theirs = make.task(query, net.nodes[0])

    with pytest.raises(NotFound, match=f"no task {theirs.id}"):
        queries.reject(db, net.nodes[1], theirs.id, "not mine")
    with pytest.raises(NotFound):
        queries.start_info(db, net.nodes[2], theirs.id)
    assert theirs.status == "pending"


def test_accepting_at_the_accept_deadline_is_on_time(make, net, clock) -> None:
    query = make.submit(net)
    clock.advance(30)

    make.accept(query, net.nodes[0])
    assert make.task(query, net.nodes[0]).status == "accepted"


def test_accepting_past_the_accept_deadline_is_a_conflict(make, net, clock) -> None:
    query = make.submit(net)
    clock.advance(30.001)

    with pytest.raises(Conflict, match=f"query {query.id} is past its acceptance deadline"):
        make.accept(query, net.nodes[0])
    assert make.task(query, net.nodes[0]).status == "pending"


def test_a_task_cannot_be_accepted_twice(make, net) -> None:
    query = make.submit(net)
    make.accept(query, net.nodes[0])

    with pytest.raises(Conflict, match="is accepted; it cannot be accepted again"):
        make.accept(query, net.nodes[0])


def test_the_last_acceptance_starts_the_query_at_the_clocks_time(make, net, db, clock) -> None:
    query = make.submit(net)
    make.accept(query, net.nodes[0])
    make.accept(query, net.nodes[2])
    first = make.task(query, net.nodes[0])
    assert query.status == "pending"
    assert queries.start_info(db, net.nodes[0], first.id).start is False

    started = clock.advance(7)
    make.accept(query, net.nodes[1])

    assert query.status == "running"
    assert query.started_at == started
    assert {t.status for t in query.tasks} == {"running"}
    go = queries.start_info(db, net.nodes[0], first.id)
    assert go.start is True
    assert [(p.party_id, p.node, p.host) for p in go.parties] == [
        (0, "h1", "h1.example"),
        (1, "h2", "h2.example"),
        (2, "h3", "h3.example"),
    ]
    assert make.actions(f"query:{query.id}") == [
        "query.submitted",
        "task.accepted",
        "task.accepted",
        "task.accepted",
        "query.started",
    ]


# ---- results ----------------------------------------------------------------------------


def test_identical_results_succeed_with_the_result(make, net, db, clock) -> None:
    query = make.running(net)
    for node in net.nodes[:2]:
        queries.post_result(db, node, make.task(query, node).id, _result())
    assert query.status == "running"
    assert query.result is None

    finished = clock.advance(12)
    queries.post_result(db, net.nodes[2], make.task(query, net.nodes[2]).id, _result())

    assert query.status == "succeeded"
    assert (query.result, query.min_count_applied) == (RESULT, 5)
    assert query.finished_at == finished
    assert make.actions(f"query:{query.id}")[-1] == "result.opened"


def test_different_results_fail_the_query_and_store_nothing(make, net, db) -> None:
    query = make.running(net)
    queries.post_result(db, net.nodes[0], make.task(query, net.nodes[0]).id, _result())
    queries.post_result(db, net.nodes[1], make.task(query, net.nodes[1]).id, _result())
    other = _result({"n": 129, "count": 129})
    queries.post_result(db, net.nodes[2], make.task(query, net.nodes[2]).id, other)

    assert (query.status, query.error_code) == ("failed", "results_disagree")
    assert query.error_message == "the 3 parties opened different results; nothing was stored"
    assert query.result is None
    assert [t.result for t in query.tasks] == [None, None, None]
    (event,) = make.events("query.failed")
    assert event.details["code"] == "results_disagree"


def test_a_different_threshold_applied_is_a_disagreement(make, net, db) -> None:
    query = make.running(net)
    for node, floor in zip(net.nodes, (5, 5, 10), strict=True):
        queries.post_result(db, node, make.task(query, node).id, _result(min_count=floor))

    assert (query.status, query.error_code) == ("failed", "results_disagree")


def test_a_result_before_the_start_is_a_conflict(make, net, db) -> None:
    query = make.submit(net)
    make.accept(query, net.nodes[0])

    with pytest.raises(Conflict, match="is accepted; only a running task takes a result"):
        queries.post_result(db, net.nodes[0], make.task(query, net.nodes[0]).id, _result())


# ---- refusal and failure ----------------------------------------------------------------


def test_a_refusal_fails_the_query_and_cancels_the_open_tasks(make, net, db, clock) -> None:
    query = make.submit(net)
    make.accept(query, net.nodes[0])
    refused = clock.advance(3)

    queries.reject(db, net.nodes[1], make.task(query, net.nodes[1]).id, "min_count too low")

    assert (query.status, query.error_code) == ("failed", "node_refused")
    assert query.error_message == "node h2 refused: min_count too low"
    assert query.finished_at == refused
    assert [t.status for t in query.tasks] == ["cancelled", "refused", "cancelled"]
    assert make.actions(f"query:{query.id}")[-2:] == ["task.refused", "query.failed"]


def test_a_failure_fails_the_running_query_with_the_nodes_code(make, net, db) -> None:
    query = make.running(net)
    queries.post_result(db, net.nodes[0], make.task(query, net.nodes[0]).id, _result())

    failure = TaskFailure(code="protocol_failed", message="party 2 vanished")
    queries.fail(db, net.nodes[2], make.task(query, net.nodes[2]).id, failure)

    assert (query.status, query.error_code) == ("failed", "protocol_failed")
    assert query.error_message == "node h3: party 2 vanished"
    assert [t.status for t in query.tasks] == ["done", "cancelled", "failed"]
    assert [t.result for t in query.tasks] == [None, None, None]


def test_anything_after_the_end_is_a_conflict_giving_the_reason(make, net, db) -> None:
    query = make.submit(net)
    queries.reject(db, net.nodes[0], make.task(query, net.nodes[0]).id, "no")

    with pytest.raises(Conflict, match=r"is over: node h1 refused: no") as caught:
        make.accept(query, net.nodes[1])
    assert caught.value.details["code"] == "node_refused"
    with pytest.raises(Conflict, match="is over"):
        queries.start_info(db, net.nodes[2], make.task(query, net.nodes[2]).id)


# ---- deadlines --------------------------------------------------------------------------


def test_a_pending_query_past_its_accept_deadline_expires_naming_the_late_nodes(
    make, net, db, clock
) -> None:
    query = make.submit(net)
    make.accept(query, net.nodes[1])
    clock.advance(30)
    assert queries.overdue_queries(db) == []

    at = clock.advance(1)
    assert queries.overdue_queries(db) == [query.id]
    expired = queries.expire(db, query.id)

    assert expired is query
    assert (query.status, query.error_code) == ("failed", "timeout")
    assert query.error_message == (
        "nodes h1, h3 did not accept within 30 s (h1: never fetched the task; "
        "h3: never fetched the task)"
    )
    assert query.finished_at == at
    assert [t.status for t in query.tasks] == ["cancelled", "cancelled", "cancelled"]
    assert [t.error_code for t in query.tasks] == ["timeout", None, "timeout"]
    (event,) = make.events("query.failed")
    assert event.details == {"code": "timeout", "message": query.error_message}


def test_a_running_query_past_its_deadline_expires_naming_the_silent_nodes(
    make, net, db, clock
) -> None:
    query = make.running(net)
    queries.post_result(db, net.nodes[1], make.task(query, net.nodes[1]).id, _result())
    clock.advance(119)
    assert queries.overdue_queries(db) == []

    clock.advance(2)
    assert queries.expire(db, query.id) is query
    assert query.error_message == (
        "nodes h1, h3 did not report a result within 120 s (h1: accepted and was given the go "
        "to run its MPC party; h3: accepted and was given the go to run its MPC party)"
    )
    assert query.result is None


def test_a_second_expire_finds_nothing(make, net, db, clock) -> None:
    query = make.submit(net)
    clock.advance(31)
    assert queries.expire(db, query.id) is not None

    assert queries.expire(db, query.id) is None
    assert queries.overdue_queries(db) == []
    assert len(make.events("query.failed")) == 1


def test_expire_takes_an_explicit_time(make, net, db, clock) -> None:
    query = make.submit(net)
    later = query.accept_deadline + (query.deadline - query.accept_deadline) / 2

    assert queries.expire(db, query.id, now=query.accept_deadline) is None
    assert queries.overdue_queries(db, now=later) == [query.id]
    assert queries.expire(db, query.id, now=later) is query
    assert query.finished_at == later
    assert clock.now() < later  # the session's clock was not read


def test_a_query_that_ended_is_not_expired(make, net, db, clock) -> None:
    query = make.running(net)
    for node in net.nodes:
        queries.post_result(db, node, make.task(query, node).id, _result())
    clock.advance(3600)

    assert queries.overdue_queries(db) == []
    assert queries.expire(db, query.id) is None
    assert query.status == "succeeded"


def test_a_result_not_of_its_statistics_shape_fails_the_query(db, make, net) -> None:
    query = make.running(net)
    outcome = queries.post_result(
        db, net.nodes[0], make.task(query, net.nodes[0]).id, _result({"n": 1, "mean": 2.0})
    )
    assert outcome == "failed"
    assert query.status == "failed" and query.error_code == "result_invalid"
    assert "not a count result" in (query.error_message or "")
    assert all(t.result is None for t in query.tasks)
