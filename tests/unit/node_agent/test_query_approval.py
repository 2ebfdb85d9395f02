"""Manual approval of query shapes at the node: the policy keys, the shape (no constants), the
steward queue, `tessera steward queries|approve-query|reject-query`, remembered shapes, the
timeout, and decisions that do not count (forged, by a key the policy does not list)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from node_agent.config import NodeSettings
from node_agent.policy import Policy
from node_agent.query_approval import QueryApprovals, QueryQueue
from tessera.errors import ConfigInvalid
from tessera.schemas import TaskOut
from tessera.stewards import digest, fingerprint, query_shape

MEAN = {"statistic": "mean", "column": "age", "where": [["sex", "==", "F"]]}


def node_toml(configs: Any, stewards: Any, policy: str) -> str:
    return (
        configs.node_toml(configs.dataset(), top='work_dir = "state"', policy=policy)
        + "\n[policy.stewards]\n"
        + stewards.table("ada", "bob")
    )


def task(query: dict[str, Any], task_id: int = 1, seconds: float = 60) -> TaskOut:
    return TaskOut(
        id=task_id,
        query_id=10 + task_id,
        study_id=1,
        party_id=1,
        n_parties=3,
        dataset="cohort",
        query={"dataset": "cohort", **query},
        deadline=datetime.now(UTC) + timedelta(seconds=seconds),
        researcher="rita",
    )


class Node:
    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.policy = Policy(settings.policy, settings.datasets)
        self.audited: list[tuple[str, dict[str, Any]]] = []
        self.told: list[tuple[Any, ...]] = []
        self.stopping = threading.Event()
        self.approvals = QueryApprovals(
            settings,
            lambda action, outcome, **f: self.audited.append((action, f)),
            lambda *args: self.told.append(args),
            self.stopping,
            poll_s=0.05,
        )

    def compiled(self, t: TaskOut) -> Any:
        decision = self.policy.decide(t)
        assert decision.statistic is not None, decision.refusal
        return decision.statistic.query

    def check(self, t: TaskOut) -> str | None:
        return self.approvals.check(t, self.compiled(t))

    def start(self, t: TaskOut) -> dict[str, Any]:
        """Run `check` in a thread (as the agent's task thread would); its answer lands in
        the returned dict under "answer" once it returns."""
        out: dict[str, Any] = {}

        def run() -> None:
            out["answer"] = self.check(t)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        out["thread"] = thread
        deadline = time.monotonic() + 10
        while not self.settings.query_approvals_path.exists() or not any(
            h.task_id == t.id for h in QueryQueue(self.settings.query_approvals_path).list()
        ):
            assert time.monotonic() < deadline, "the task was not held"
            time.sleep(0.02)
        return out

    def actions(self) -> list[str]:
        return [a for a, _ in self.audited]


def finished(out: dict[str, Any], timeout: float = 10) -> str | None:
    out["thread"].join(timeout)
    assert not out["thread"].is_alive(), "still waiting"
    return out["answer"]  # type: ignore[no-any-return]


@pytest.fixture
def node(configs, stewards) -> Node:  # type: ignore[no-untyped-def]
    text = node_toml(configs, stewards, 'approval = "manual"\napproval_timeout_s = 30')
    return Node(configs.settings(text))


def test_the_policy_keys(configs, stewards) -> None:  # type: ignore[no-untyped-def]
    auto = configs.settings(configs.node_toml(configs.dataset()))
    assert auto.policy.approval == "auto" and auto.policy.approval_mode("cohort") == "auto"
    mixed = configs.settings(
        node_toml(configs, stewards, 'dataset_approval = { cohort = "manual" }')
    )
    assert mixed.policy.approval_mode("cohort") == "manual"
    assert mixed.policy.approval_mode("other") == "auto"
    assert mixed.policy.query_stewards == {n: stewards.public(n) for n in ("ada", "bob")}
    with pytest.raises(ConfigInvalid, match=r'approval = "manual" needs stewards'):
        configs.settings(configs.node_toml(configs.dataset(), policy='approval = "manual"'))
    with pytest.raises(ConfigInvalid, match="approval"):
        configs.settings(configs.node_toml(configs.dataset(), policy='approval = "sometimes"'))
    # the synthesis stewards approve queries too when [policy.stewards] is absent
    synthesis = (
        configs.node_toml(configs.dataset(), policy='approval = "manual"')
        + '[policy.synthesis]\ngenerators = ["cart"]\n[policy.synthesis.stewards]\n'
        + stewards.table("cy")
    )
    assert configs.settings(synthesis).policy.query_stewards == {"cy": stewards.public("cy")}


def test_the_shape_leaves_out_every_constant(node: Node) -> None:
    def shape(query: dict[str, Any]) -> dict[str, Any]:
        return query_shape(node.compiled(task(query)))

    base = shape(MEAN)
    assert base == {
        "statistic": "mean",
        "dataset": "cohort",
        "columns": ["age"],
        "group_by": [],
        "where": ["sex"],
    }
    assert shape({**MEAN, "where": [["sex", "==", "M"]], "min_count": 20}) == base
    assert shape({**MEAN, "where": [["sex", "==", "M"], ["sex", "!=", "F"]]}) == base
    assert shape({**MEAN, "column": "weight"}) != base
    assert shape({**MEAN, "group_by": ["icu"]}) != base
    assert shape({**MEAN, "where": [["icu", "==", True]]}) != base
    assert shape({**MEAN, "statistic": "sum"}) != base


def test_auto_goes_on_at_once(configs, stewards) -> None:  # type: ignore[no-untyped-def]
    auto = Node(configs.settings(node_toml(configs, stewards, "")))
    assert auto.check(task(MEAN)) is None
    assert auto.audited == [] and not auto.settings.query_approvals_path.exists()


def test_a_held_query_goes_on_when_a_steward_approves_and_its_shape_is_remembered(
    node: Node, stewards: Any, tessera_cli: Any, configs: Any, tmp_path: Path
) -> None:
    config = configs.root / "node.toml"
    ada = stewards.write("ada", tmp_path / "keys")
    waiting = node.start(task(MEAN, 1))
    assert node.told[0][:3] == ("progress", 1, "steward_review")
    listed = tessera_cli("steward", "queries", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    assert "    1  waiting  mean on cohort: columns age; group_by -; where on sex" in listed.stdout
    assert "(query 11 by rita, study 1" in listed.stdout
    assert '"where": [["sex", "==", "F"]]' in listed.stdout, "the steward sees the query"
    ok = tessera_cli(
        "steward", "approve-query", "1", "-c", str(config), "-k", str(ada), "--remember"
    )
    assert ok.returncode == 0 and "approved by ada; later queries of this shape" in ok.stdout
    assert finished(waiting) is None
    assert "steward.query_approved" in node.actions()
    again = tessera_cli("steward", "approve-query", "1", "-c", str(config), "-k", str(ada))
    assert again.returncode == 2 and "query 1 is approved, not waiting" in again.stderr

    # the same shape with other constants: no steward is asked
    assert node.check(task({**MEAN, "where": [["sex", "==", "M"]]}, 2)) is None
    assert node.actions()[-1] == "query.shape_approved"
    # another shape waits again; a rejection refuses it, with the steward's reason
    waiting = node.start(task({**MEAN, "group_by": ["icu"]}, 3))
    bob = stewards.write("bob", tmp_path / "keys")
    no = tessera_cli(
        "steward", "reject-query", "3", "-c", str(config), "-k", str(bob), "--reason", "too fine"
    )
    assert no.returncode == 0, no.stderr
    assert finished(waiting) == "a steward of node node-a rejected this query: too fine"
    done = tessera_cli("steward", "queries", "--config", str(config), "--all", "--json")
    statuses = {q["id"]: q["status"] for q in json.loads(done.stdout)}
    assert statuses == {1: "approved", 3: "rejected"}


def test_an_approval_without_remember_approves_one_query(
    node: Node, stewards: Any, tessera_cli: Any, configs: Any, tmp_path: Path
) -> None:
    ada = stewards.write("ada", tmp_path / "keys")
    waiting = node.start(task(MEAN, 1))
    config = str(configs.root / "node.toml")
    assert (
        tessera_cli("steward", "approve-query", "1", "-c", config, "-k", str(ada)).returncode == 0
    )
    assert finished(waiting) is None
    waiting = node.start(task(MEAN, 2))  # the same shape is held again
    assert (
        tessera_cli("steward", "approve-query", "2", "-c", config, "-k", str(ada)).returncode == 0
    )
    assert finished(waiting) is None


def test_a_query_nobody_approves_is_refused_at_the_timeout(configs, stewards) -> None:  # type: ignore[no-untyped-def]
    quick = Node(
        configs.settings(
            node_toml(configs, stewards, 'approval = "manual"\napproval_timeout_s = 0.3')
        )
    )
    assert quick.check(task(MEAN)) == (
        "no steward of node node-a approved this query's shape within 0.3 s "
        "(policy.approval_timeout_s)"
    )
    assert quick.actions()[-1] == "query.expired"
    # bounded by the task's own deadline as well
    assert quick.check(task(MEAN, 2, seconds=0.1)) == (
        "the query's deadline passed while it waited for a steward"
    )


def test_decisions_that_do_not_count(
    node: Node, stewards: Any, tessera_cli: Any, configs: Any, tmp_path: Path
) -> None:
    """Someone who can write the queue but holds no steward's key: a forged approval, and a
    real signature by a key the policy does not list, are refused; so is an outsider's key at
    the CLI; and a held query changed after ada approved it does not count as approved."""
    from node_agent.query_approval import QueryDecision, signed_query_decision

    config = str(configs.root / "node.toml")
    eve = stewards.write("eve", tmp_path / "keys")
    outsider = tessera_cli("steward", "approve-query", "1", "-c", config, "-k", str(eve))
    assert outsider.returncode == 2 and "no query has waited" in outsider.stderr
    waiting = node.start(task(MEAN, 1))
    outsider = tessera_cli("steward", "approve-query", "1", "-c", config, "-k", str(eve))
    assert outsider.returncode == 2 and "is no query steward's of node node-a" in outsider.stderr
    queue = node.approvals.queue
    held = queue.get(1)
    real = signed_query_decision(
        stewards.private("ada"), held, node="node-a", steward="ada", decision="approve"
    )
    queue.decide(
        QueryDecision(1, "ada", "approve", True, "", real.at, real.key, real.signature[::-1])
    )
    queue.decide(
        signed_query_decision(
            stewards.private("eve"), held, node="node-a", steward="bob", decision="approve"
        )
    )
    time.sleep(0.3)
    assert node.approvals.queue.get(1).status == "waiting"
    refused = [f["reason"] for a, f in node.audited if a == "steward.refused"]
    assert sorted(refused) == [
        "'ada''s signature does not verify with their key",
        f"'bob' signed with key {fingerprint(stewards.public('eve'))}, not their listed key",
    ]
    # ada's genuine approval, but the held query's text swapped under it: not counted
    with sqlite3.connect(node.settings.query_approvals_path) as conn:
        conn.execute("DELETE FROM query_decisions")
    queue.decide(real)
    with sqlite3.connect(node.settings.query_approvals_path) as conn:
        swapped = {**held.query, "column": "weight"}
        conn.execute(
            "UPDATE held_queries SET query = ?, query_sha256 = ?",
            (json.dumps(swapped), digest(swapped)),
        )
    time.sleep(0.3)
    assert node.approvals.queue.get(1).status == "waiting"
    node.stopping.set()
    assert finished(waiting) == "the node agent stopped before a steward decided on this query"
