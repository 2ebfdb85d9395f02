"""Differential privacy end to end: a coordinator and three node agents, each its own OS
process, with privacy budgets in their policies.

A dp mean (of a column with declared bounds) and a dp histogram succeed; each result carries
its `dp` entry and lies within a generous multiple of the noise scale of the exact, noiseless
value; every node's ledger is charged, which `GET /studies/{id}/budget` shows; a query beyond
what is left is refused up front (409, naming the nodes), one beyond a node's total over all
studies too (naming the limit; a node's total is its study allocation unless it configures
one), and the nodes themselves refuse a query the coordinator was misled into sending. The
ledgers compose in zCDP, and every expected amount is derived with `tessera.privacy`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from demo.network import DataSource, Network, NodeSpec
from smpc import reference
from tessera.client import TesseraClient
from tessera.errors import BudgetExceeded
from tessera.privacy import epsilon_of, largest_epsilon, query_rho, rho_budget
from tessera.schemas import ColumnSpec, DatasetSchema

DATASET = "admissions"
SCHEMA = DatasetSchema(
    columns=[
        ColumnSpec(name="age", type="integer", min=0, max=18),
        ColumnSpec(name="sex", type="categorical", levels=["F", "M"]),
        ColumnSpec(name="weight", type="float", min=1, max=120),
    ]
)
NODES = ("node-a", "node-b", "node-c")
# The ledgers compose in zCDP (`tessera.privacy`): a pure epsilon-DP query costs rho =
# epsilon^2 / 2, and a limit (epsilon, delta 0) is the rho it converts to at delta 1e-6.
BUDGET = 8.0  # epsilon per study and dataset, at every node: rho 0.9097
TOTAL = 10.0  # node-a's epsilon over all studies: rho 1.353
TAIL = 10  # |noise| > 10 scales has probability about e^-10 per value
MEAN = {"statistic": "mean", "column": "weight", "dp": {"epsilon": 1.0}}
HISTOGRAM = {
    "statistic": "histogram",
    "column": "age",
    "bins": [0, 5, 10, 15, 19],
    "dp": {"epsilon": 0.5},
}
SPENT = query_rho(1.0) + query_rho(0.5)  # the mean and the histogram: rho 0.625
RHO_BUDGET, RHO_TOTAL = rho_budget(BUDGET, None), rho_budget(TOTAL, None)
LEFT = largest_epsilon(RHO_BUDGET - SPENT)  # the largest query the study can still afford
# Queries of the second study that each node's allocation to that study affords: the first
# fits node-a's total over all studies (less what the first study spent) but not node-b's and
# node-c's (their study allocation: what the first study left), the second fits none.
SECOND = (1.0, 1.25)


def cohort(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(0, 19, rows)
    return pd.DataFrame(
        {
            "age": age,
            "sex": rng.choice(["F", "M"], rows),
            "weight": np.round(3.5 + 3.1 * age + rng.normal(0, 2, rows).clip(-2, 2), 2),
        }
    )


@dataclass
class World:
    net: Network
    researcher: TesseraClient
    study: int
    second_study: int
    keys: dict[str, str]
    pooled: pd.DataFrame

    def run(self, query: dict[str, Any], study: int | None = None) -> dict[str, Any]:
        submitted = self.researcher.submit_query(study or self.study, {"dataset": DATASET, **query})
        return self.researcher.wait_query(submitted["id"], timeout=60)

    def budget(self, study: int | None = None) -> dict[str, dict[str, Any]]:
        [entry] = self.researcher.study_budget(study or self.study)["datasets"]
        return {n["node"]: n for n in entry["nodes"]} | {"": entry}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("dp-network")
    net = Network(root)
    frames = {
        name: cohort(rows, seed)
        for name, rows, seed in zip(NODES, (300, 200, 150), (1, 2, 3), strict=True)
    }
    try:
        net.start_coordinator(accept_timeout_s=20, query_timeout_s=40, sweep_interval_s=1.0)
        admin = TesseraClient(net.url)
        admin.login("admin", net.admin_password)
        orgs, keys = [], {}
        for name in NODES:
            path = root / f"{name}.csv"
            frames[name].to_csv(path, index=False)
            spec = NodeSpec(
                name,
                f"Hospital {name[-1].upper()}",
                [DataSource(DATASET, "csv", SCHEMA, path=str(path))],
                dp_epsilon_budget=BUDGET,
                dp_epsilon_total=TOTAL if name == "node-a" else None,
            )
            org = admin.create_organisation(spec.organisation)
            orgs.append(org["id"])
            keys[name] = admin.create_node(name, org["id"])["api_key"]
            net.start_node(spec, keys[name])
        admin.create_user("rita", "rita-password", role="researcher")
        studies = [
            admin.create_study(label, organisation_ids=orgs, datasets=[DATASET], members=["rita"])
            for label in ("growth", "follow-up")
        ]
        researcher = TesseraClient(net.url)
        researcher.login("rita", "rita-password")
        world = World(
            net,
            researcher,
            studies[0]["id"],
            studies[1]["id"],
            keys,
            pd.concat(frames.values(), ignore_index=True),
        )
        wait_until(lambda: all(world.budget().get(n, {}).get("reported_at") for n in NODES), net)
        yield world
    finally:
        net.stop()


def wait_until(condition: Any, net: Network, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in net.nodes.values():
            assert proc.alive(), f"{proc.name} exited:\n{proc.tail()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_dp_queries_are_noisy_within_their_scale_and_charged_at_every_node(
    world: World,
) -> None:
    assert SPENT <= RHO_BUDGET < SPENT + query_rho(MEAN["dp"]["epsilon"]), "the budget's intent"
    before = world.budget()
    assert [before[n]["epsilon_limit"] for n in NODES] == [BUDGET] * 3
    assert [before[n]["epsilon_remaining"] for n in NODES] == pytest.approx(
        [largest_epsilon(RHO_BUDGET)] * 3, rel=1e-9
    )
    assert before["node-a"]["dataset_total"]["epsilon_remaining"] == pytest.approx(
        largest_epsilon(RHO_TOTAL), rel=1e-9
    )
    # node-b configures no total: its total over all studies is its study allocation
    assert before["node-b"]["dataset_total"]["epsilon_limit"] == BUDGET

    mean = world.run(MEAN)
    assert mean["status"] == "succeeded", mean
    exact = reference({"dataset": DATASET, **MEAN}, world.pooled, SCHEMA)
    dp = mean["result"]["dp"]
    assert dp == exact["dp"]
    assert (dp["epsilon"], dp["mechanism"]) == (1.0, "discrete_laplace")
    b_count, b_sum = dp["noise_scale"]["count"], dp["noise_scale"]["sum"]
    n = exact["n"]
    assert abs(mean["result"]["n"] - n) <= TAIL * b_count
    bound = (TAIL * b_sum + exact["mean"] * TAIL * b_count) / (n - TAIL * b_count)
    assert abs(mean["result"]["mean"] - exact["mean"]) <= bound
    assert 1 <= mean["result"]["mean"] <= 120

    histogram = world.run(HISTOGRAM)
    assert histogram["status"] == "succeeded", histogram
    exact = reference({"dataset": DATASET, **HISTOGRAM}, world.pooled, SCHEMA)
    scale = histogram["result"]["dp"]["noise_scale"]["count"]
    assert scale == 2.0 and histogram["result"]["edges"] == HISTOGRAM["bins"]
    for got, want in zip(histogram["result"]["counts"], exact["counts"], strict=True):
        assert abs(got - want) <= TAIL * scale

    wait_until(lambda: all(world.budget()[n]["charges"] == 2 for n in NODES), world.net, 15)
    after = world.budget()
    spent = epsilon_of(SPENT, None)  # rho 0.625 at delta 1e-6: epsilon 6.502
    for name in NODES:
        assert after[name]["rho_spent"] == pytest.approx(float(SPENT), rel=1e-9)
        assert after[name]["epsilon_spent"] == pytest.approx(spent, rel=1e-9)
        assert after[name]["epsilon_remaining"] == pytest.approx(LEFT, rel=1e-9)
    assert after["node-a"]["dataset_total"]["epsilon_spent"] == pytest.approx(spent, rel=1e-9)
    assert after[""]["epsilon_remaining"] == pytest.approx(LEFT, rel=1e-9)


def test_a_query_beyond_what_is_left_is_refused_up_front_naming_the_nodes(world: World) -> None:
    with pytest.raises(BudgetExceeded) as refused:
        world.researcher.submit_query(world.study, {"dataset": DATASET, **MEAN})
    assert refused.value.http_status == 409
    each = f"rho {float(RHO_BUDGET - SPENT):.6g} (a query of epsilon up to {LEFT:.6g})"
    assert refused.value.message == (
        "the query's epsilon 1 (rho 0.5) exceeds what study 'growth' has left of the "
        "differential-privacy budget on dataset 'admissions' "
        f"(node node-a: {each}; node node-b: {each}; node node-c: {each}, as last reported)"
    )

    # Another study has an allocation of its own, but not beyond each node's total over all
    # studies: node-a's configured TOTAL, the others' the study allocation (the default).
    fits, too_much = (query_rho(e) for e in SECOND)
    assert RHO_BUDGET - SPENT < fits <= RHO_TOTAL - SPENT < too_much <= RHO_BUDGET, "intent"
    second = world.budget(world.second_study)
    a_left = largest_epsilon(RHO_TOTAL - SPENT)
    for name in NODES:
        assert second[name]["epsilon_remaining"] == pytest.approx(
            largest_epsilon(RHO_BUDGET), rel=1e-9
        )
        assert second[name]["epsilon_available"] == pytest.approx(
            a_left if name == "node-a" else LEFT, rel=1e-9
        )
    others = (
        f"node node-b: {each} of the dataset's total over all studies; "
        f"node node-c: {each} of the dataset's total over all studies"
    )
    with pytest.raises(BudgetExceeded) as over_total:
        world.researcher.submit_query(
            world.second_study, {"dataset": DATASET, **MEAN, "dp": {"epsilon": SECOND[0]}}
        )
    assert over_total.value.message.endswith(f"({others}, as last reported)")
    assert [n["node"] for n in over_total.value.details["nodes"]] == ["node-b", "node-c"]
    with pytest.raises(BudgetExceeded) as over_total:
        world.researcher.submit_query(
            world.second_study, {"dataset": DATASET, **MEAN, "dp": {"epsilon": SECOND[1]}}
        )
    assert over_total.value.message.endswith(
        f"(node node-a: rho {float(RHO_TOTAL - SPENT):.6g} (a query of epsilon up to "
        f"{a_left:.6g}) of the dataset's total over all studies; {others}, as last reported)"
    )
    assert [n["limit"] for n in over_total.value.details["nodes"]] == ["dataset_total"] * 3


def test_the_nodes_refuse_what_a_misled_coordinator_sends(world: World) -> None:
    """Each node is told to publish a far larger budget: the coordinator lets the query through,
    and the nodes refuse it by their own ledgers."""
    for name, key in world.keys.items():
        response = httpx.post(
            f"{world.net.url}/api/v1/nodes/me/hello",
            headers={"Authorization": f"Bearer {key}"},
            json={"agent_version": "spoofed", "policy": {"dp_budget": {"epsilon": 100}}},
        )
        assert response.status_code == 200, (name, response.text)
    refused = world.run(MEAN)
    assert refused["status"] == "failed", refused
    assert refused["error"]["message"].startswith("node node-")
    assert refused["error"]["message"].endswith(
        " refused: the query's rho 0.5 (epsilon 1) would exceed the privacy allocation of study "
        f"{world.study} on dataset 'admissions': remaining rho {float(RHO_BUDGET - SPENT):.6g} "
        f"(a query of epsilon up to {LEFT:.6g}) of rho {float(RHO_BUDGET):.6g} (epsilon "
        f"{BUDGET:g} at delta 1e-06, per study)"
    )
    assert refused["result"] is None
    spent = world.budget()
    assert all(spent[n]["rho_spent"] == pytest.approx(float(SPENT)) for n in NODES), "no charge"
    assert all(spent[n]["charges"] == 2 for n in NODES), "nothing charged"


def test_the_node_budget_command_shows_the_ledger_and_the_total(world: World) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "node",
            "budget",
            "--config",
            str(world.net.root / "node-a" / "node.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    ledger = json.loads(done.stdout)
    [entry] = ledger["entries"]
    assert (entry["study_id"], entry["charges"], entry["rho_spent"]) == (
        world.study,
        2,
        float(SPENT),
    )
    assert (entry["epsilon_limit"], entry["rho_limit"]) == (BUDGET, float(RHO_BUDGET))
    assert entry["epsilon_spent"] == pytest.approx(epsilon_of(SPENT, None), rel=1e-12)
    assert entry["epsilon_remaining"] == pytest.approx(LEFT, rel=1e-12)
    [total] = ledger["dataset_totals"]
    assert (total["dataset"], total["epsilon_limit"], total["rho_spent"]) == (
        DATASET,
        TOTAL,
        float(SPENT),
    )
    assert total["epsilon_remaining"] == pytest.approx(
        largest_epsilon(RHO_TOTAL - SPENT), rel=1e-12
    )


def test_the_query_budget_command_shows_what_the_study_has_left(world: World) -> None:
    env = {
        **os.environ,
        "TESSERA_COORDINATOR_URL": world.net.url,
        "TESSERA_USER": "rita",
        "TESSERA_PASSWORD": "rita-password",
    }
    command = [sys.executable, "-m", "cli.main", "query", "budget", "--study", "growth"]
    table = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert table.returncode == 0, table.stderr
    left = world.budget()[""]["epsilon_remaining"]
    assert f"dataset {DATASET}: the study can still spend epsilon {left:g}" in table.stdout
    for name in NODES:
        assert name in table.stdout
    as_json = subprocess.run(
        [*command, "--json"], capture_output=True, text=True, timeout=60, env=env
    )
    assert json.loads(as_json.stdout)["datasets"][0]["dataset"] == DATASET
    unknown = subprocess.run(
        [*command[:-1], "no-such-study"], capture_output=True, text=True, timeout=60, env=env
    )
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1
