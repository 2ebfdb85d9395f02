"""Attacks through a real network (a coordinator and three node agents, each its own OS
process): a node in the `dp` disclosure mode refuses every query without `dp`, naming the rule,
and answers one with it; with every node in the default `exact` mode, differencing two sums
that differ by one child does not give that child's value, and repeating the query returns the
same answer (nothing to average away)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

from demo.network import DataSource, Network, NodeSpec
from node_agent.config import NodeSettings
from node_agent.datasets import DatasetCache
from smpc.statistics import reference_parties
from tessera.client import TesseraClient
from tessera.errors import Conflict, TesseraError
from tessera.privacy import query_rho
from tessera.schemas import ColumnSpec, DatasetSchema

pytestmark = pytest.mark.slow

DATASET = "growth"
SCHEMA = DatasetSchema(
    columns=[
        ColumnSpec(name="age", type="integer", min=0, max=216),  # months
        ColumnSpec(name="weight", type="float", min=2, max=120),  # kg
    ]
)
WEIGHT_RANGE = 120 - 2
NODES = ("node-a", "node-b", "node-c")
TARGET_AGE, TARGET_WEIGHT = 200, 41.5  # the only child aged 200 months, at node-a
FLOOR = 3  # every node's min_count


def frames(seed: int = 28) -> dict[str, pd.DataFrame]:
    """30, 25 and 20 children under 190 months, 4 children of 205-216 months at every node,
    and the target at node-a."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, rows in zip(NODES, (30, 25, 20), strict=True):
        age = rng.integers(0, 190, rows)
        young = pd.DataFrame(
            {"age": age, "weight": np.round(5 + 0.25 * age + rng.uniform(-3, 3, rows), 1)}
        )
        older = pd.DataFrame(
            {"age": rng.integers(205, 217, 4), "weight": np.round(rng.uniform(45, 70, 4), 1)}
        )
        parts = [young, older]
        if name == "node-a":
            parts.append(pd.DataFrame({"age": [TARGET_AGE], "weight": [TARGET_WEIGHT]}))
        out[name] = pd.concat(parts, ignore_index=True)
    return out


class World:
    def __init__(self, net: Network, disclosure: dict[str, dict[str, Any]]) -> None:
        self.net = net
        root = net.root
        self.net.start_coordinator(accept_timeout_s=20, query_timeout_s=40, sweep_interval_s=1.0)
        admin = TesseraClient(self.net.url)
        admin.login("admin", self.net.admin_password)
        orgs = []
        for name, frame in frames().items():
            path = root / f"{name}.csv"
            frame.to_csv(path, index=False)
            spec = NodeSpec(
                name,
                f"Hospital {name[-1].upper()}",
                [DataSource(DATASET, "csv", SCHEMA, path=str(path))],
                min_count=FLOOR,
                dp_epsilon_budget=1.0,
                dp_delta_budget=1e-6,
                disclosure=disclosure.get(name),
            )
            # a fixed row-key secret, so the perturbation (and this test) is the same each run
            (root / name).mkdir(exist_ok=True)
            (root / name / "row_keys.secret").write_text(f"secret-of-{name}"[:16].ljust(16, "0"))
            org = admin.create_organisation(spec.organisation)
            orgs.append(org["id"])
            node = admin.create_node(name, org["id"])
            self.net.start_node(spec, node["api_key"], node["enrolment_token"])
        admin.create_user("eve", "eve-password", role="researcher")
        study = admin.create_study(
            "growth", organisation_ids=orgs, datasets=[DATASET], members=["eve"]
        )
        self.study = study["id"]
        self.researcher = TesseraClient(self.net.url)
        self.researcher.login("eve", "eve-password")
        deadline = time.monotonic() + 60
        while not all(n["reported_at"] for n in self.budget()):
            for proc in self.net.nodes.values():
                assert proc.alive(), f"{proc.name} exited:\n{proc.tail()}"
            assert time.monotonic() < deadline, "the nodes did not register"
            time.sleep(0.1)

    def reference(self, query: dict[str, Any]) -> dict[str, Any]:
        """What the network must answer: the `exact` mode's perturbation recomputed in
        plaintext from each node's rows as the node reads them and its row-key secret."""
        frames, secrets = [], []
        cache = DatasetCache()
        for name in NODES:
            settings = NodeSettings.load(self.net.root / name / "node.toml")
            dataset = settings.dataset(DATASET)
            assert dataset is not None
            frames.append(cache.get(dataset))
            secrets.append((settings.work_dir / "row_keys.secret").read_text().strip())
        return reference_parties(
            {"dataset": DATASET, **query},
            frames,
            SCHEMA,
            min_count_floors=[FLOOR] * len(NODES),
            key_secrets=secrets,
        )

    def budget(self) -> list[dict[str, Any]]:
        [entry] = self.researcher.study_budget(self.study)["datasets"]
        return entry["nodes"]

    def run(self, query: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while True:  # until every node has registered the dataset
            try:
                submitted = self.researcher.submit_query(self.study, {"dataset": DATASET, **query})
                break
            except Conflict as exc:
                if "MPC needs at least" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return self.researcher.wait_query(submitted["id"], timeout=60)


@pytest.fixture(scope="module")
def dp_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    net = Network(tmp_path_factory.mktemp("dp-mode"))
    try:
        yield World(net, {"node-b": {"mode": "dp"}})
    finally:
        net.stop()


@pytest.fixture(scope="module")
def exact_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    net = Network(tmp_path_factory.mktemp("exact-mode"))
    try:
        yield World(net, {})
    finally:
        net.stop()


def test_a_node_in_the_dp_mode_refuses_an_exact_count_and_answers_a_dp_one(
    dp_world: World,
) -> None:
    with pytest.raises(TesseraError) as refused:
        dp_world.run({"statistic": "count"})
    message = str(refused.value)
    assert "node-b" in message, message
    assert f"dataset {DATASET!r} is in the 'dp' disclosure mode: every query must carry 'dp'" in (
        message
    )

    result = dp_world.run({"statistic": "count", "dp": {"epsilon": 0.1}})
    assert result["status"] == "succeeded", result
    assert result["result"]["dp"]["epsilon"] == 0.1, result["result"]
    deadline = time.monotonic() + 15
    while not all(n["charges"] == 1 for n in dp_world.budget()):  # reported after the charge
        assert time.monotonic() < deadline, dp_world.budget()
        time.sleep(0.1)
    for node in dp_world.budget():
        assert node["rho_spent"] == pytest.approx(float(query_rho(0.1)), rel=1e-9), node


def test_differencing_two_sums_through_the_network_does_not_give_the_childs_weight(
    exact_world: World,
) -> None:
    def weight_sum(op: str) -> dict[str, Any]:
        query = {"statistic": "sum", "column": "weight", "where": [["age", op, TARGET_AGE]]}
        done = exact_world.run(query)
        assert done["status"] == "succeeded", done
        assert done["result"] == exact_world.reference(query), "the published perturbation"
        return dict(done["result"])

    pooled = pd.concat(frames().values(), ignore_index=True)
    assert (pooled["age"] == TARGET_AGE).sum() == 1  # one child of that age, at node-a
    for frame in frames().values():
        assert (frame["age"] > TARGET_AGE).sum() >= 4  # released by every node's floor of 3
    exact = pooled.loc[pooled["age"] >= TARGET_AGE, "weight"].sum()
    assert exact - pooled.loc[pooled["age"] > TARGET_AGE, "weight"].sum() == pytest.approx(
        TARGET_WEIGHT
    ), "without the perturbation the difference is the child's weight"

    at_least, above = weight_sum(">="), weight_sum(">")
    error = abs(at_least["sum"] - above["sum"] - TARGET_WEIGHT)
    assert error > 0.02 * WEIGHT_RANGE, (at_least, above, error)
    assert weight_sum(">=") == at_least, "the same query gets the same answer"
