"""The task loop with a fake coordinator and a fake party: what is sent, refused, audited."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from api.signing import CoordinatorKey
from node_agent.agent import NodeAgent, running
from node_agent.audit_log import AuditLog, verify
from node_agent.identity import NodeIdentity, TrustedPeers
from node_agent.peers import run_id
from smpc.tls import issue_run_certificate, new_authority
from tessera.errors import ConfigInvalid, Conflict, ProtocolFailed, TesseraError, Unauthorized
from tessera.fingerprints import fingerprint
from tessera.privacy import rho_budget
from tessera.schemas import (
    BudgetSpent,
    DatasetSpent,
    NodeBudgetReport,
    PartyAddress,
    SynthesisJobOut,
    SynthesisSpec,
    TaskAccept,
    TaskOut,
    TaskResult,
    TaskStart,
)

COORDINATOR_KEY = CoordinatorKey.generate()  # signs the tasks of `make_task`


class FakeCoordinator:
    """Plays the coordinator's node API in memory and records every call the agent makes."""

    base_url = "http://coordinator.test"
    audit_head = None
    key = COORDINATOR_KEY

    def coordinator_key(self) -> str:
        return self.key.public_pem

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.queue: list[TaskOut] = []
        self.accepted: dict[int, TaskAccept] = {}
        self.start_error: Exception | None = None
        self.not_yet = 1  # start answers "not yet" this many times per task
        self.go_on_accept = False  # the accept's answer carries the go (when it waits)
        self.start_wait_s = 0.0
        self.poll_error: Exception | None = None
        self.report_error: Exception | None = None
        self.on_reconnect = None
        self.lock = threading.Lock()
        self.identity: str | None = None  # the node's long-term certificate, from its hello
        # two peers' node keys (trusted by the node under test: see the `node` fixture)
        self.peer_keys = {i: new_authority(f"Tessera node peer-{i}") for i in (0, 2)}

    def _record(self, name: str, *args: Any) -> None:
        with self.lock:
            self.calls.append((name, args))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def hello(self, message: Any) -> dict[str, Any]:
        self._record("hello", message)
        self.identity = message.identity_certificate
        return {}

    def peer(self, party_id: int, query_id: int) -> PartyAddress:
        """Peer `party_id` as a coordinator relays it: its run certificate issued by its node
        key for the query's run."""
        key, authority = self.peer_keys[party_id]
        _, cert = issue_run_certificate(key, authority, party_id, run_id(query_id))
        return PartyAddress(
            party_id=party_id,
            node=f"peer-{party_id}",
            host="127.0.0.1",
            port=30000 + party_id,
            certificate=cert,
            identity_certificate=authority,
        )

    def register_dataset(self, name: str, schema: Any) -> None:
        self._record("register_dataset", name)

    def report_budget(self, report: Any) -> None:
        self._record("report_budget", report)
        if self.report_error is not None:
            raise self.report_error

    def budget_reports(self) -> list[Any]:
        return [args[0] for name, args in self.calls if name == "report_budget"]

    def tasks(self, wait: float, audit_head: Any = None) -> list[TaskOut]:
        if self.poll_error is not None:
            raise self.poll_error
        with self.lock:
            tasks, self.queue = self.queue, []
        if not tasks:
            time.sleep(0.01)
        return tasks

    def synthesis_jobs(self, wait: float) -> list[Any]:
        time.sleep(0.05)  # no synthesis here (tests/unit/node_agent/test_synthesis.py)
        return []

    def accept(self, task_id: int, body: TaskAccept, wait: float = 0.0) -> TaskStart | None:
        """Like the coordinator: with `wait` and `go_on_accept`, the go comes with the answer."""
        self._record("accept", task_id, body, wait)
        self.accepted[task_id] = body
        return self._go(task_id) if wait and self.go_on_accept else None

    def start(self, task_id: int, wait: float) -> TaskStart:
        self._record("start", task_id)
        if self.start_error is not None:
            raise self.start_error
        if self.not_yet > 0:
            self.not_yet -= 1
            time.sleep(self.start_wait_s)
            return TaskStart(start=False, status="pending")
        return self._go(task_id)

    def _go(self, task_id: int) -> TaskStart:
        mine = self.accepted[task_id]
        peers = [
            self.peer(0, 5),
            PartyAddress(
                party_id=1,
                node="node-a",
                host=mine.mpc_host,
                port=mine.mpc_port,
                certificate=mine.mpc_certificate,
                identity_certificate=self.identity,
            ),
            self.peer(2, 5),
        ]
        return TaskStart(
            start=True,
            status="running",
            parties=list(reversed(peers)),
            deadline=datetime.now(UTC) + timedelta(seconds=30),
        )

    def reject(self, task_id: int, reason: str) -> None:
        self._record("reject", task_id, reason)

    def progress(self, task_id: int, stage: str, message: str = "") -> None:
        self._record("progress", task_id, stage)

    def result(self, task_id: int, body: TaskResult) -> None:
        self._record("result", task_id, body)

    def fail(self, task_id: int, code: str, message: str) -> None:
        self._record("fail", task_id, code, message)

    def close(self) -> None:
        self._record("close")


class FakeParty:
    """Stands in for `smpc.run_party`: records the job, answers a fixed outcome."""

    def __init__(self, error: Exception | None = None, hold: threading.Event | None = None):
        self.jobs: list[Any] = []
        self.error = error
        self.hold = hold

    def __call__(self, job: Any) -> Any:
        from smpc import PartyOutcome

        self.jobs.append(job)
        if self.hold is not None:
            self.hold.wait(10)
        if self.error is not None:
            raise self.error
        return PartyOutcome(result={"count": 42, "n": 42}, min_count_applied=7, seconds=0.25)


def make_task(
    task_id: int = 11, query: dict[str, Any] | None = None, key: CoordinatorKey | None = None
) -> TaskOut:
    """A task as the coordinator sends it: signed by `key` (the fake coordinator's)."""
    task = TaskOut(
        id=task_id,
        query_id=5,
        study_id=9,
        party_id=1,
        n_parties=3,
        dataset="cohort",
        query={"dataset": "cohort", **(query or {"statistic": "count"})},
        deadline=datetime.now(UTC) + timedelta(seconds=30),
        researcher_id=3,
        researcher="rita",
        submitted_at=datetime.now(UTC),
    )
    task.signature = (key or COORDINATOR_KEY).sign_statement(task.statement())
    return task


def changed(task: TaskOut, update: dict[str, Any]) -> TaskOut:
    """The task with other fields, as the coordinator would have signed it."""
    other = task.model_copy(update=update)
    other.signature = COORDINATOR_KEY.sign_statement(other.statement())
    return other


@pytest.fixture
def node(configs):  # type: ignore[no-untyped-def]
    configs.cohort().to_csv(configs.root / "cohort.csv", index=False)

    def build(policy: str = "min_count = 7", party: FakeParty | None = None, top: str = ""):  # type: ignore[no-untyped-def]
        text = configs.node_toml(configs.dataset(), policy=policy, top=top)
        text = text.replace('"21000-21009"', f'"{free_range()}"')
        settings = configs.settings(text)
        fake = FakeCoordinator()
        agent = NodeAgent(settings, client=fake, run_party=party or FakeParty())  # type: ignore[arg-type]
        if NodeIdentity.exists(settings.work_dir):  # a second agent on the same folder
            identity = NodeIdentity.load(settings.work_dir, settings.name)
        else:
            identity = NodeIdentity.create(settings.work_dir, settings.name)
        fake.identity = identity.certificate_pem  # as if it had said hello
        for i, (_, authority) in fake.peer_keys.items():
            TrustedPeers(settings.work_dir).trust(f"peer-{i}", fingerprint(authority))
        return agent, fake

    return build


def free_range() -> str:
    """Ten ports starting at one the system just handed out, as text."""
    import socket
    from contextlib import closing

    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        low = min(s.getsockname()[1], 65000)
    return f"{low}-{low + 9}"


def audit_actions(agent: NodeAgent) -> list[tuple[str, str]]:
    lines = agent.settings.audit_path.read_text().splitlines()
    return [(e["action"], e["outcome"]) for e in map(json.loads, lines)]


def test_a_task_runs_and_only_the_opened_result_is_sent(node) -> None:
    party = FakeParty()
    agent, fake = node(party=party)
    with running(agent):
        fake.queue.append(make_task())
        deadline = time.monotonic() + 10
        while not ("result" in fake.names() and fake.budget_reports()):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)

    names = [n for n in fake.names() if n != "report_budget"]  # sent from its own thread
    assert names[:3] == ["hello", "register_dataset", "accept"]
    assert names[3:] == ["start", "start", "result", "close"]  # the coordinator sets stage mpc
    assert fake.budget_reports() == [NodeBudgetReport(entries=[])]
    [job] = party.jobs
    low, high = agent.settings.port_range
    accepted = fake.accepted[11]
    assert low <= accepted.mpc_port <= high and accepted.mpc_host == "127.0.0.1"
    assert accepted.mpc_certificate and "BEGIN CERTIFICATE" in accepted.mpc_certificate
    assert job.party_id == 1
    assert job.parties == [
        ("127.0.0.1", 30000),
        ("127.0.0.1", accepted.mpc_port),
        ("127.0.0.1", 30002),
    ]
    assert job.min_count_floor == 7
    assert 25 < job.timeout_s <= 30
    assert job.summary.counts == [6]
    assert job.tls.certificates[1] == accepted.mpc_certificate
    assert job.tls.authorities[1] == agent.identity.certificate_pem
    assert job.tls.run_id == "query-5"
    assert "PRIVATE KEY" in job.tls.key_pem
    result = next(args for name, args in fake.calls if name == "result")
    assert result == (
        11,
        TaskResult(result={"count": 42, "n": 42}, min_count_applied=7, seconds=0.25),
    )
    sent = json.dumps([repr(args) for _, args in fake.calls])
    assert "PRIVATE KEY" not in sent and "counts" not in sent  # key and summary stay home
    assert agent.ports.in_use == frozenset()
    assert audit_actions(agent) == [
        ("task.received", "received"),
        ("task.accepted", "accepted"),
        ("result.opened", "succeeded"),
    ]


def test_a_refused_task_is_rejected_with_the_rule(node) -> None:
    agent, fake = node(policy='allowed_statistics = ["count"]')
    agent.handle(make_task(query={"statistic": "mean", "column": "weight"}))
    assert fake.calls == [("reject", (11, "policy does not allow 'mean' queries (allowed: count)"))]


def test_an_invalid_query_is_refused_not_run(node) -> None:
    agent, fake = node()
    agent.handle(make_task(query={"statistic": "mean", "column": "height"}))
    [(name, (_, reason))] = fake.calls
    assert name == "reject" and "unknown column 'height'" in reason


def test_a_query_that_failed_elsewhere_is_abandoned_quietly(node) -> None:
    agent, fake = node()
    fake.start_error = Conflict("query 5 is over: node b refused")
    agent.handle(make_task())
    assert fake.names() == ["accept", "start"]
    assert agent.ports.in_use == frozenset()


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (
            ProtocolFailed("party 1 did not finish within 30 s"),
            "protocol_failed",
            "party 1 did not finish within 30 s",
        ),
        (RuntimeError("secret detail 123.4"), "node_error", "node error: RuntimeError"),
    ],
)
def test_a_failing_party_is_reported_with_its_code(node, error, code, message) -> None:
    agent, fake = node(party=FakeParty(error=error))
    agent.handle(make_task())
    assert fake.calls[-1] == ("fail", (11, code, message))
    assert agent.ports.in_use == frozenset()


def test_data_that_broke_its_schema_fails_the_task_without_values(node, configs) -> None:
    agent, fake = node()
    broken = configs.cohort()
    broken.loc[2, "weight"] = 999.0
    broken.to_csv(configs.root / "cohort.csv", index=False)
    agent.handle(make_task(query={"statistic": "mean", "column": "weight"}))
    [(name, (_, code, message))] = fake.calls
    assert (name, code) == ("fail", "data_invalid")
    assert message == (
        "dataset 'cohort', column 'weight': 1 row (first: data row 3) above the declared "
        "maximum 200"
    )


def test_a_missing_certificate_stops_the_run(node) -> None:
    agent, fake = node()
    fake.not_yet = 0
    original = fake.start

    def without_certificates(task_id: int, wait: float) -> TaskStart:
        answer = original(task_id, wait)
        answer.parties[0].certificate = None
        return answer

    fake.start = without_certificates  # type: ignore[method-assign]
    agent.handle(make_task())
    name, (_, code, message) = fake.calls[-1]
    assert (name, code) == ("fail", "peer_refused")
    assert "party 2 (node peer-2) sent no certificate" in message


def test_overlapping_tasks_get_their_own_ports(node) -> None:
    hold = threading.Event()
    agent, fake = node(party=FakeParty(hold=hold))
    threads = [threading.Thread(target=agent.handle, args=(make_task(i),)) for i in (1, 2, 3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(fake.accepted) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)  # a task takes its slot and port before it accepts
    assert len({a.mpc_port for a in fake.accepted.values()}) == 3
    assert len(agent.ports.in_use) == 3
    hold.set()
    for t in threads:
        t.join(10)
    assert fake.names().count("result") == 3
    assert agent.ports.in_use == frozenset()


@pytest.mark.parametrize("notice_s, told", [(0.2, True), (30.0, False)])
def test_a_task_tells_it_is_queued_only_once_it_waited(node, monkeypatch, notice_s, told) -> None:
    """One protocol slot, held by a first task for 1 s: the second task waits for it, and
    tells the coordinator (stage `queued`, once) only when the wait outlasts the notice."""
    import node_agent.agent as agent_module

    monkeypatch.setattr(agent_module, "QUEUED_NOTICE_S", notice_s)
    hold = threading.Event()
    agent, fake = node(party=FakeParty(hold=hold), top="max_concurrent_protocols = 1")
    fake.not_yet = 0
    first = threading.Thread(target=agent.handle, args=(make_task(1),))
    first.start()
    wait_for(lambda: 1 in fake.accepted)
    second = threading.Thread(target=agent.handle, args=(make_task(2),))
    second.start()
    time.sleep(1.0)
    assert 2 not in fake.accepted, "the second task waits for the slot"
    hold.set()
    for t in (first, second):
        t.join(10)
    notes = [args for name, args in fake.calls if name == "progress"]
    assert notes == ([(2, "queued")] if told else [])
    assert fake.names().count("result") == 2
    if told:  # the note came before the task's accept
        names = [(name, args[0]) for name, args in fake.calls if name in ("progress", "accept")]
        assert names.index(("progress", 2)) < names.index(("accept", 2))


def test_the_cached_frame_serves_every_task(node) -> None:
    agent, _ = node()
    for i in range(4):
        agent.handle(make_task(i))
    assert agent.cache.reads == 1


def test_it_registers_again_after_an_outage(node) -> None:
    agent, fake = node()
    with running(agent):
        assert fake.names().count("hello") == 1
        fake.on_reconnect()  # what the client does once a retried call got through
        deadline = time.monotonic() + 5
        while fake.names().count("hello") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert fake.names().count("hello") == 2
    assert fake.names().count("register_dataset") == 2


def test_a_revoked_key_stops_the_agent(node) -> None:
    agent, fake = node()
    fake.poll_error = Unauthorized("invalid API key")
    with pytest.raises(Unauthorized), running(agent):
        time.sleep(0.5)  # the agent stops by itself; the block's end reports why


def test_a_second_agent_on_the_same_work_dir_is_refused(node) -> None:
    from tessera.errors import ConfigInvalid

    first, _ = node()
    second, _ = node()
    second.settings = first.settings
    with running(first), pytest.raises(ConfigInvalid, match="is in use by another node agent"):
        second.run(install_signal_handlers=False)


def test_a_bad_dataset_stops_the_agent_before_it_registers(node, configs) -> None:
    from tessera.errors import ConfigInvalid

    pd.DataFrame({"age": [1]}).to_csv(configs.root / "cohort.csv", index=False)
    agent, fake = node()
    with pytest.raises(ConfigInvalid, match="missing from the data: sex, weight, icu"):
        agent.run(install_signal_handlers=False)
    assert "hello" not in fake.names()


def test_stopping_fails_the_tasks_still_waiting_for_their_start(node) -> None:
    agent, fake = node()
    fake.not_yet, fake.start_wait_s = 1000, 0.05
    with running(agent):
        fake.queue.append(make_task())
        deadline = time.monotonic() + 10
        while "start" not in fake.names() and time.monotonic() < deadline:
            time.sleep(0.01)
    fails = [args for name, args in fake.calls if name == "fail"]
    assert fails == [(11, "node_stopping", "the node agent stopped")]
    assert "result" not in fake.names()
    assert fake.names()[-1] == "close"


def test_the_go_that_comes_with_the_accept_is_used_without_a_start_poll(node) -> None:
    party = FakeParty()
    agent, fake = node(party=party)
    fake.go_on_accept = True
    agent.handle(make_task())
    [accepted] = [args for name, args in fake.calls if name == "accept"]
    assert accepted[2] > 0  # the accept waited for the go
    assert "start" not in fake.names()
    assert len(party.jobs) == 1 and fake.names()[-1] == "result"


def test_behind_nat_it_advertises_mpc_host_and_listens_on_mpc_bind_host(node) -> None:
    party = FakeParty()
    agent, fake = node(party=party, top='mpc_host = "192.0.2.7"\nmpc_bind_host = "127.0.0.1"')
    fake.not_yet = 0
    agent.handle(make_task())
    accepted = fake.accepted[11]
    assert accepted.mpc_host == "192.0.2.7"
    [job] = party.jobs
    assert job.parties[1] == ("127.0.0.1", accepted.mpc_port)
    assert fake.names()[-1] == "result"


# ---- differential privacy: the budget ----------------------------------------------------


def dp_task(task_id: int, epsilon: float, delta: float = 0.0) -> TaskOut:
    return make_task(task_id, {"statistic": "count", "dp": {"epsilon": epsilon, "delta": delta}})


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_dp_query_is_charged_when_accepted_and_the_ledger_reported(node) -> None:
    agent, fake = node(policy="dp_epsilon_budget = 1.0\ndp_delta_budget = 1e-6")
    with running(agent):
        fake.queue.append(dp_task(11, 0.1, 1e-7))
        wait_for(lambda: "result" in fake.names() and len(fake.budget_reports()) == 2)
    # basic composition's epsilon and (declared) delta, and zCDP's rho 0.1^2 / 2
    assert fake.budget_reports() == [
        NodeBudgetReport(entries=[]),  # at registration
        NodeBudgetReport(
            entries=[
                BudgetSpent(
                    study_id=9,
                    dataset="cohort",
                    epsilon_spent=0.1,
                    delta_spent=1e-7,
                    charges=1,
                    rho_spent=0.005,
                )
            ],
            dataset_totals=[
                DatasetSpent(
                    dataset="cohort",
                    epsilon_spent=0.1,
                    delta_spent=1e-7,
                    charges=1,
                    rho_spent=0.005,
                )
            ],
        ),
    ]
    assert audit_actions(agent) == [
        ("task.received", "received"),
        ("budget.charged", "charged"),
        ("task.accepted", "accepted"),
        ("result.opened", "succeeded"),
    ]
    charged = json.loads(agent.settings.audit_path.read_text().splitlines()[1])
    assert {k: charged[k] for k in ("study", "dataset", "task", "query")} == {
        "study": 9,
        "dataset": "cohort",
        "task": 11,
        "query": 5,
    }
    assert (charged["epsilon"], charged["rho_spent"], charged["epsilon_limit"]) == (0.1, 0.005, 1.0)
    assert (charged["epsilon_spent"], charged["delta_spent"]) == (0.1, 1e-7)
    assert charged["rho_limit"] == pytest.approx(float(rho_budget(1.0, 1e-6)))


def test_a_dp_model_is_charged_as_every_dp_query(node) -> None:
    """A dp linear_regression or correlation (noisy Gram matrix) spends its ε like a count."""
    agent, fake = node(policy='dp_epsilon_budget = 1.0\n[policy.disclosure]\nmode = "dp"')
    dp = {"dp": {"epsilon": 0.3}}
    regression = {"statistic": "linear_regression", "outcome": "weight", "predictors": ["age"]}
    agent.handle(make_task(11, {**regression, **dp}))
    agent.handle(make_task(12, {"statistic": "correlation", "columns": ["age", "weight"], **dp}))
    assert fake.names().count("result") == 2 and "reject" not in fake.names()
    spent = agent.ledger.spent(9, "cohort")
    assert (spent.charges, float(spent.epsilon)) == (2, pytest.approx(0.6))
    agent.handle(make_task(13, {**regression, "dp": {"epsilon": 0.5}}))  # 1.1 > 1
    assert fake.names()[-1] == "reject"


def test_an_over_budget_dp_task_is_refused_naming_what_is_left(node) -> None:
    agent, fake = node(policy="dp_epsilon_budget = 1.0")  # rho 0.0174689 (delta 0: at 1e-6)
    with running(agent):
        fake.queue.append(dp_task(11, 0.6))  # basic composition: 0.6 of 1 (rho 0.18: not zCDP)
        wait_for(lambda: "result" in fake.names())
        fake.queue.append(dp_task(12, 0.6))
        wait_for(lambda: "reject" in fake.names())
    [(task_id, reason)] = [args for name, args in fake.calls if name == "reject"]
    assert task_id == 12
    assert reason == (
        "the query's rho 0.18 (epsilon 0.6, delta 0) would exceed the privacy allocation of "
        "study 9 on dataset 'cohort' by both accountants: basic composition has spent epsilon "
        "0.6 and delta 0 of (1, 0); zCDP has spent rho 0.18 of 0.0174689 (epsilon 1 at delta "
        "1e-06); a query of epsilon up to 0.4 remains (per study)"
    )
    assert 12 not in fake.accepted
    assert audit_actions(agent)[-2:] == [("task.received", "received"), ("task.refused", "refused")]
    refused = json.loads(agent.settings.audit_path.read_text().splitlines()[-1])
    assert (refused["reason"], refused["study"]) == (reason, 9)
    assert refused["epsilon_remaining"] == pytest.approx(0.4)

    # The spending survives a restart of the agent: the same work_dir refuses again.
    again, fake_again = node(policy="dp_epsilon_budget = 1.0")
    again.settings = agent.settings
    again.handle(dp_task(13, 0.45))
    [(name, (_, reason))] = fake_again.calls
    assert name == "reject" and "a query of epsilon up to 0.4 remains" in reason
    again.handle(dp_task(14, 0.4))
    assert fake_again.names()[-1] == "result"


def test_a_study_has_its_own_allocation_of_the_dataset_total(node) -> None:
    agent, fake = node(policy="dp_epsilon_budget = 1.0\ndp_epsilon_total = 1.5")
    agent.handle(dp_task(11, 0.7))  # 0.7 of the study's 1 (basic composition)
    other_study = changed(dp_task(12, 0.7), {"study_id": 10})
    agent.handle(other_study)  # 1.4 of the total's 1.5
    assert fake.names().count("result") == 2 and "reject" not in fake.names()
    agent.handle(dp_task(13, 0.31))  # over study 9's allocation (and the total)
    assert fake.names()[-1] == "reject"
    [(_, reason)] = [args for name, args in fake.calls if name == "reject"]
    assert "allocation of study 9" in reason


def test_the_dataset_total_caps_every_study_and_the_refusal_says_so(node) -> None:
    agent, fake = node(policy="dp_epsilon_budget = 1.0\ndp_epsilon_total = 1.5")
    with running(agent):
        fake.queue.append(dp_task(11, 0.7))
        wait_for(lambda: fake.names().count("result") == 1)
        fake.queue.append(changed(dp_task(12, 0.7), {"study_id": 10}))
        wait_for(lambda: fake.names().count("result") == 2)
        fake.queue.append(changed(dp_task(13, 0.2), {"study_id": 11}))
        wait_for(lambda: "reject" in fake.names())
    charges = [
        e
        for e in map(json.loads, agent.settings.audit_path.read_text().splitlines())
        if e["action"] == "budget.charged"
    ]
    total_rho = float(rho_budget(1.5, 1e-6))
    assert [
        (c["dataset_epsilon_spent"], c["dataset_rho_spent"], c["dataset_rho_total"])
        for c in charges
    ] == [(0.7, 0.245, total_rho), (1.4, 0.49, total_rho)]
    [(task_id, reason)] = [args for name, args in fake.calls if name == "reject"]
    assert task_id == 13
    assert reason == (
        "the query's rho 0.02 (epsilon 0.2, delta 0) would exceed the privacy budget of dataset "
        "'cohort' over all studies by both accountants: basic composition has spent epsilon "
        "1.4 and delta 0 of (1.5, 0); zCDP has spent rho 0.49 of 0.0386443 (epsilon 1.5 at "
        "delta 1e-06); a query of epsilon up to 0.1 remains (over all studies)"
    )
    refused = json.loads(agent.settings.audit_path.read_text().splitlines()[-1])
    assert (refused["limit"], refused["study"]) == ("dataset_total", 11)
    assert refused["epsilon_remaining"] == pytest.approx(0.1)
    [total] = agent.ledger.report().dataset_totals
    assert (total.epsilon_spent, total.rho_spent, total.charges) == (1.4, 0.49, 2)


def test_a_dp_query_is_refused_where_no_budget_is_set(node) -> None:
    agent, fake = node()
    agent.handle(dp_task(11, 0.1))
    assert fake.calls == [
        (
            "reject",
            (
                11,
                "this node has no differential-privacy budget for dataset 'cohort' "
                "(policy.dp_epsilon_budget): it takes part in no query with 'dp'",
            ),
        )
    ]
    assert not agent.settings.ledger_path.exists() or agent.ledger.entries() == []


def test_a_dp_task_without_its_study_is_refused(node) -> None:
    agent, fake = node(policy="dp_epsilon_budget = 1.0")
    agent.handle(changed(dp_task(11, 0.1), {"study_id": None}))
    [(name, (_, reason))] = fake.calls
    assert (name, reason) == (
        "reject",
        "the task names no study, so its privacy spend cannot be charged",
    )


def test_a_dp_query_that_fails_after_acceptance_is_not_refunded(node) -> None:
    agent, fake = node(
        policy="dp_epsilon_budget = 1.0", party=FakeParty(error=ProtocolFailed("peer vanished"))
    )
    agent.handle(dp_task(11, 0.15))
    assert fake.calls[-1] == ("fail", (11, "protocol_failed", "peer vanished"))
    assert float(agent.ledger.spent(9, "cohort").rho) == 0.01125


def test_a_budget_report_the_coordinator_refuses_does_not_stop_the_node(node, caplog) -> None:
    agent, fake = node()
    fake.report_error = TesseraError("coordinator answered 404")
    with running(agent):
        fake.queue.append(make_task())
        wait_for(lambda: "result" in fake.names())
    assert fake.names().count("report_budget") == 1 and "result" in fake.names()
    assert "could not report the privacy ledger: coordinator answered 404" in caplog.text


# ---- signed tasks, the pinned coordinator key, the cross-anchors -------------------------------


def _refusal(fake: FakeCoordinator) -> str:
    [(name, (_, reason))] = fake.calls
    assert name == "reject"
    return str(reason)


def test_a_task_with_a_tampered_query_is_refused_and_audited(node) -> None:
    """A coordinator double (or anyone on the path) that alters a signed task's query."""
    agent, fake = node()
    agent.audit = AuditLog(agent.settings.audit_path, agent.identity)
    task = make_task()
    tampered = task.model_copy(update={"query": {**task.query, "statistic": "sum"}})
    tampered.query["column"] = "weight"

    agent.handle(tampered)

    assert "not the pinned coordinator key's" in _refusal(fake)
    assert audit_actions(agent) == [("task.received", "received"), ("task.refused", "refused")]


def test_a_task_signed_by_another_key_is_refused(node) -> None:
    agent, fake = node()
    agent.handle(make_task(key=CoordinatorKey.generate()))
    assert "not the pinned coordinator key's" in _refusal(fake)


def test_an_unsigned_task_is_refused(node) -> None:
    agent, fake = node()
    agent.handle(make_task().model_copy(update={"signature": None}))
    assert _refusal(fake).startswith("the task carries no coordinator signature")


def test_a_signed_task_runs_and_its_statement_and_researcher_are_audited(node) -> None:
    from tessera.signing import statement_hash

    agent, fake = node()
    agent.audit = AuditLog(agent.settings.audit_path, agent.identity)
    task = make_task()
    agent.handle(task)
    assert "result" in fake.names()
    received = json.loads(agent.settings.audit_path.read_text().splitlines()[0])
    assert received["action"] == "task.received"
    assert received["statement_hash"] == statement_hash(task.statement())
    assert (received["researcher"], received["researcher_id"]) == ("rita", 3)
    assert verify(agent.settings.audit_path, agent.identity.certificate_pem).signed == len(
        agent.settings.audit_path.read_text().splitlines()
    )


def test_the_coordinator_key_is_trusted_on_first_use_and_a_change_is_refused(node) -> None:
    from node_agent.coordinator_key import pinned_path

    agent, fake = node()
    agent.pin_coordinator_key()
    assert pinned_path(agent.settings.work_dir).read_text() == COORDINATOR_KEY.public_pem
    fake.key = CoordinatorKey.generate()
    with pytest.raises(ConfigInvalid, match="signing key changed"):
        agent.pin_coordinator_key()
    with pytest.raises(ConfigInvalid, match="signing key changed"), running(agent):
        pass  # registration refuses it: the agent does not start


def test_a_configured_coordinator_key_must_match(node) -> None:
    agent, _ = node(top=f'coordinator_key = "{CoordinatorKey.generate().fingerprint}"')
    with pytest.raises(ConfigInvalid, match="not the configured coordinator_key"):
        agent.pin_coordinator_key()
    good, _ = node(top=f'coordinator_key = "{COORDINATOR_KEY.fingerprint.upper()}"')
    assert good.pin_coordinator_key() == COORDINATOR_KEY.public_pem


def test_the_coordinator_head_is_recorded_when_it_changes_only(node) -> None:
    from tessera.signing import audit_message

    agent, _ = node()
    agent.audit = AuditLog(agent.settings.audit_path, agent.identity)
    agent.pin_coordinator_key()

    def head(seq: int, key: CoordinatorKey = COORDINATOR_KEY) -> tuple[int, str, str]:
        chain_hash = f"{seq:064x}"
        return seq, chain_hash, key.sign(audit_message(chain_hash))

    for h in (head(5), head(5), head(5), head(7), head(7)):
        agent.note_coordinator_head(h)
    agent.note_coordinator_head(head(8, CoordinatorKey.generate()))
    agent.note_coordinator_head(head(6))
    entries = [json.loads(line) for line in agent.settings.audit_path.read_text().splitlines()]
    assert [(e["coordinator_seq"], e["outcome"]) for e in entries] == [
        (5, "recorded"),
        (7, "recorded"),
        (8, "invalid"),
        (6, "went_back"),
    ]


def test_the_node_sends_its_signed_log_head_with_each_poll(node) -> None:
    from tessera.signing import node_audit_message, unb64
    from tessera.signing import verify_ecdsa as verify_signature

    agent, fake = node()
    sent: list[Any] = []
    plain = fake.tasks

    def tasks(wait: float, audit_head: Any = None) -> list[TaskOut]:
        sent.append(audit_head)
        return plain(wait)

    fake.tasks = tasks  # type: ignore[method-assign]
    fake.queue.append(make_task())
    with running(agent):
        deadline = time.monotonic() + 5
        while "result" not in fake.names() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)
    heads = [h for h in sent if h is not None]
    assert heads, "the node sent its head"
    entries, last_hash, sig = heads[-1]
    lines = [json.loads(line) for line in agent.settings.audit_path.read_text().splitlines()]
    assert lines[entries - 1]["hash"] == last_hash
    raw = unb64(sig)
    assert raw is not None
    assert verify_signature(agent.identity.certificate_pem, node_audit_message(last_hash), raw)


# ---- signed synthesis jobs ------------------------------------------------------------------


def make_job(key: CoordinatorKey | None = None, **spec: Any) -> SynthesisJobOut:
    """A pooled synthesis job as the coordinator offers it: signed by `key` (its own tag)."""
    job = SynthesisJobOut(
        id=21,
        request_id=4,
        study_id=9,
        requested_by="rita",
        spec=SynthesisSpec(
            dataset="cohort", generator="mst", rows=10, epsilon=1.0, scope="pooled", **spec
        ),
        deadline=datetime.now(UTC) + timedelta(seconds=30),
        party_id=1,
        n_parties=3,
    )
    job.signature = (key or COORDINATOR_KEY).sign_synthesis(job.statement())
    return job


def _job_refusal(agent: NodeAgent, fake: FakeCoordinator, job: SynthesisJobOut) -> str:
    told: list[str] = []
    fake.refuse_synthesis = lambda job_id, reason: told.append(reason)  # type: ignore[attr-defined]
    agent.synthesis.handle(job)
    [reason] = told
    return reason


def test_a_synthesis_job_is_run_only_on_the_coordinators_signed_word(node) -> None:
    agent, fake = node()
    unsigned = make_job().model_copy(update={"signature": None})
    assert _job_refusal(agent, fake, unsigned).startswith(
        "the synthesis job carries no coordinator signature"
    )
    # a larger epsilon, or another party id, than the coordinator signed
    job = make_job()
    for update in (
        {"spec": job.spec.model_copy(update={"epsilon": 5.0})},
        {"party_id": 0},
    ):
        altered = job.model_copy(update=update)
        assert "not the pinned coordinator key's" in _job_refusal(agent, fake, altered)
    assert "not the pinned coordinator key's" in _job_refusal(
        agent, fake, make_job(key=CoordinatorKey.generate())
    )
    # a task's signature (another domain tag) over the same statement is not a job's
    as_task = job.model_copy(update={"signature": COORDINATOR_KEY.sign_statement(job.statement())})
    assert "not the pinned coordinator key's" in _job_refusal(agent, fake, as_task)
    # the coordinator's own signature passes: what refuses it now is this node's policy
    assert "allows no synthesis" in _job_refusal(agent, fake, make_job())
