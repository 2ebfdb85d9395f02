"""The coordinator client: typed calls, Tessera errors, retries with capped backoff."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from node_agent.coordinator_client import (
    MAX_BACKOFF_S,
    MIN_RETRY_S,
    PROGRESS_RETRY_S,
    AgentStopping,
    Backoff,
    CoordinatorClient,
    CoordinatorUnreachable,
)
from tessera.errors import Conflict, PolicyDenied, TesseraError, Unauthorized
from tessera.schemas import NodeHello, TaskAccept, TaskResult

KEY = "node-key-do-not-log"


class Coordinator:
    """A scripted transport: answers in order, records every request."""

    def __init__(self, *answers) -> None:  # type: ignore[no-untyped-def]
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def client(coordinator: Coordinator, **kwargs) -> CoordinatorClient:  # type: ignore[no-untyped-def]
    return CoordinatorClient(
        "http://coordinator.test/",
        KEY,
        transport=httpx.MockTransport(coordinator),
        backoff=lambda: Backoff(first=0.001, cap=0.004),
        **kwargs,
    )


def ok(body) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.Response(200, json=body)


def test_calls_carry_the_key_and_the_typed_bodies() -> None:
    task = {
        "id": 4,
        "query_id": 2,
        "party_id": 1,
        "n_parties": 3,
        "dataset": "cohort",
        "query": {"statistic": "count", "dataset": "cohort"},
        "deadline": datetime.now(UTC).isoformat(),
    }
    coordinator = Coordinator(ok({"name": "a"}), ok([task]), ok({"status": "accepted"}))
    c = client(coordinator)
    c.hello(NodeHello(agent_version="1"))
    [received] = c.tasks(wait=5)
    c.accept(received.id, TaskAccept(mpc_host="127.0.0.1", mpc_port=21000))

    hello, poll, accept = coordinator.requests
    assert hello.url.path == "/api/v1/nodes/me/hello"
    assert hello.headers["authorization"] == f"Bearer {KEY}"
    assert poll.url.path == "/api/v1/nodes/me/tasks" and poll.url.params["wait"] == "5"
    assert received.id == 4 and received.query["statistic"] == "count"
    assert accept.url.path == "/api/v1/tasks/4/accept"
    assert accept.content == b'{"mpc_host":"127.0.0.1","mpc_port":21000}'


def test_errors_come_back_as_the_tessera_error_named() -> None:
    body = {"error": {"code": "conflict", "message": "query 2 is over", "details": {}}}
    c = client(Coordinator(httpx.Response(409, json=body)))
    with pytest.raises(Conflict, match="query 2 is over"):
        c.start(4, wait=1)
    body = {"error": {"code": "policy_denied", "message": "no", "details": {}}}
    with pytest.raises(PolicyDenied):
        client(Coordinator(httpx.Response(403, json=body))).reject(4, "x")
    with pytest.raises(Unauthorized, match="did not accept this node's API key"):
        client(Coordinator(httpx.Response(401, text="nope"))).tasks(wait=0)
    with pytest.raises(TesseraError, match="coordinator answered 404: Not Found"):
        client(Coordinator(httpx.Response(404, json={"detail": "Not Found"}))).tasks(wait=0)


def test_connection_errors_and_5xx_are_retried_then_it_reconnects(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    down = httpx.ConnectError("refused")
    coordinator = Coordinator(down, down, httpx.Response(502), ok([]))
    reconnected = []
    c = client(coordinator, on_reconnect=lambda: reconnected.append(True))
    assert c.tasks(wait=1) == []
    assert len(coordinator.requests) == 4 and c.retries == 3
    assert reconnected == [True]
    assert "retrying in" in caplog.text
    assert KEY not in caplog.text


class Clock:
    """A clock that moves `step` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.at = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)
        self.step = timedelta(seconds=step)

    def __call__(self) -> datetime:
        self.at += self.step
        return self.at


def test_progress_is_retried_briefly_and_nothing_when_stopping() -> None:
    down = httpx.ConnectError("refused")
    coordinator = Coordinator(down)
    c = client(coordinator, now=Clock(step=1.0))
    with pytest.raises(CoordinatorUnreachable, match="until the step's deadline"):
        c.progress(1, "mpc")
    assert 2 <= len(coordinator.requests) <= PROGRESS_RETRY_S + 1
    with pytest.raises(CoordinatorUnreachable, match="coordinator unreachable: ConnectError"):
        client(Coordinator(down)).tasks(wait=0, retry=False)
    import threading

    stop = threading.Event()
    stop.set()
    with pytest.raises(AgentStopping):
        client(Coordinator(down), stop=stop).result(
            1, TaskResult(result={"count": 3}, min_count_applied=5, seconds=0.1)
        )


def task_offer(task_id: int, deadline: datetime) -> dict[str, Any]:
    return {
        "id": task_id,
        "query_id": 2,
        "party_id": 1,
        "n_parties": 3,
        "dataset": "cohort",
        "query": {"statistic": "count", "dataset": "cohort"},
        "deadline": deadline.isoformat(),
    }


def test_a_lost_reply_is_retried_and_the_replayed_first_answer_is_success(caplog) -> None:
    caplog.set_level(logging.INFO)
    lost = httpx.RemoteProtocolError("Server disconnected without sending a response.")
    replay = httpx.Response(
        200, json={"status": "accepted"}, headers={"Idempotent-Replayed": "true"}
    )
    coordinator = Coordinator(lost, replay)
    c = client(coordinator)
    c.accept(4, TaskAccept(mpc_host="127.0.0.1", mpc_port=21000))
    first, retry = coordinator.requests
    assert first.content == retry.content, "a retry repeats the request exactly"
    assert c.retries == 1 and c.replays == 1
    assert "its first answer stands" in caplog.text


def test_a_task_step_is_retried_until_the_task_deadline_then_given_up() -> None:
    clock = Clock(step=0.0)
    deadline = clock.at + timedelta(seconds=MIN_RETRY_S + 60)
    down = httpx.ConnectError("refused")
    coordinator = Coordinator(ok([task_offer(4, deadline)]), down)
    c = client(coordinator, now=clock)
    [task] = c.tasks(wait=0)
    clock.step = timedelta(seconds=10)
    with pytest.raises(CoordinatorUnreachable, match="until the step's deadline"):
        c.result(task.id, TaskResult(result={"count": 3}, min_count_applied=5, seconds=0.1))
    tries = len(coordinator.requests) - 1
    assert 7 <= tries <= 10, tries  # about (MIN_RETRY_S + 60) / 10 s of retries, then none
    assert clock.at >= deadline


def test_a_503_is_retried_after_the_delay_it_asks_for(caplog) -> None:
    caplog.set_level(logging.INFO)
    busy = httpx.Response(503, json={}, headers={"Retry-After": "1"})
    coordinator = Coordinator(busy, ok({"status": "refused"}))
    client(coordinator).reject(4, "no")
    assert len(coordinator.requests) == 2
    assert "it answered 503); retrying in 1.0 s" in caplog.text


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    highest = Backoff(rng=lambda low, high: high)
    lowest = Backoff(rng=lambda low, high: low)
    ceilings = [highest.next_delay() for _ in range(10)]
    assert ceilings[:4] == pytest.approx([0.2, 0.4, 0.8, 1.6])
    assert max(ceilings) == MAX_BACKOFF_S == 10.0
    assert [lowest.next_delay() for _ in range(10)][-1] == 5.0
    real = Backoff()
    delays = [real.next_delay() for _ in range(20)]
    assert all(0.1 <= d <= 10.0 for d in delays)
    real.reset()
    assert real.next_delay() <= 0.2


def test_the_poll_sends_the_node_head_and_keeps_the_coordinators() -> None:
    head = f"12:{'a' * 64}:c2lnbmF0dXJl"
    coordinator = Coordinator(httpx.Response(200, json=[], headers={"Tessera-Audit-Head": head}))
    c = client(coordinator)
    assert c.tasks(0.0, audit_head=(5, "b" * 64, "bm9kZQ==")) == []
    assert coordinator.requests[0].headers["Tessera-Audit-Head"] == f"5:{'b' * 64}:bm9kZQ=="
    assert c.audit_head == (12, "a" * 64, "c2lnbmF0dXJl")
    coordinator.answers = [httpx.Response(200, json=[], headers={"Tessera-Audit-Head": "junk"})]
    c.tasks(0.0)
    assert "Tessera-Audit-Head" not in coordinator.requests[1].headers
    assert c.audit_head is None, "a malformed head is not kept"


def test_the_coordinator_key_is_fetched_as_published() -> None:
    coordinator = Coordinator(ok({"public_key_pem": "PEM", "fingerprint": "sha256:x"}))
    assert client(coordinator).coordinator_key() == "PEM"
    assert coordinator.requests[0].url.path == "/api/v1/coordinator/key"
