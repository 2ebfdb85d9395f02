"""Differential privacy end to end: a coordinator and three node agents, each its own OS
process, with privacy budgets in their policies.

A dp mean (of a column with declared bounds) and a dp histogram succeed; each result carries
its `dp` entry and lies within a generous multiple of the noise scale of the exact, noiseless
value; every node's ledger is charged, which `GET /studies/{id}/budget` shows; a query beyond
what is left is refused up front (409, naming the nodes), one beyond a node's total over all
studies too (naming the limit; a node's total is its study allocation unless it configures
one), and the nodes themselves refuse a query the coordinator was misled into sending. The
ledgers admit a charge when basic composition or zCDP is within the limit (the better of the
two), and every expected amount is derived from those rules, zCDP's with `tessera.privacy`.
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
from tessera.privacy import largest_epsilon, query_rho, rho_budget
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
# Each ledger keeps two accountants over the same charges and admits a charge when, with it,
# either is within the limit: basic composition (sum epsilon <= epsilon_L, sum delta <= delta_L)
# or zCDP (sum rho <= rho_L; a pure epsilon-DP query costs rho = epsilon^2 / 2, and a limit
# (epsilon, delta 0) is the rho it converts to at delta 1e-6). With a few large queries basic
# composition is the better one, so these budgets are the ones an epsilon sum makes plain.
BUDGET = 2.0  # epsilon per study and dataset, at every node (delta 0)
TOTAL = 3.0  # node-a's epsilon over all studies; node-b's and node-c's is BUDGET (the default)
TAIL = 10  # |noise| > 10 scales has probability about e^-10 per value
MEAN = {"statistic": "mean", "column": "weight", "dp": {"epsilon": 1.0}}
HISTOGRAM = {
    "statistic": "histogram",
    "column": "age",
    "bins": [0, 5, 10, 15, 19],
    "dp": {"epsilon": 0.5},
}
EPSILONS = (MEAN["dp"]["epsilon"], HISTOGRAM["dp"]["epsilon"])  # the first study's queries
SPENT_EPSILON = sum(EPSILONS)  # basic composition: 1 + 0.5 = 1.5 (their delta: 0 + 0)
SPENT = sum(query_rho(e) for e in EPSILONS)  # zCDP: 1/2 + 1/8 = rho 0.625
RHO_BUDGET, RHO_TOTAL = rho_budget(BUDGET, None), rho_budget(TOTAL, None)  # 0.0676, 0.1473
# zCDP is past both limits after the first study's queries (0.625 > rho 0.1473 of even TOTAL),
# and never recovers (rho only grows): it has nothing left, so what is left is basic
# composition's epsilon_L - sum epsilon (the better of the two).
LEFT = BUDGET - SPENT_EPSILON  # the largest query the study can still afford: 0.5
A_LEFT = TOTAL - SPENT_EPSILON  # what node-a's total over all studies has left: 1.5
# Queries of the second study, each within that study's own allocation (BUDGET) by basic
# composition: the first fits node-a's total (1.5 + 1 <= 3) but not node-b's and node-c's
# (their total is BUDGET: 1.5 + 1 > 2), the second fits none (1.5 + 1.75 > 3).
SECOND = (1.0, 1.75)


def short(epsilon: float, where: str = "") -> str:
    """How the coordinator names what a node has left of a limit once zCDP is past it (rho 0
    left): the better of the two is basic composition's epsilon (its delta left: 0 of 0)."""
    return (
        f"a query of epsilon up to {epsilon:.6g} (basic composition: epsilon {epsilon:.6g}, "
        f"delta 0 left; zCDP: rho 0 left){where}"
    )


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
            node = admin.create_node(name, org["id"])
            keys[name] = node["api_key"]
            net.start_node(spec, keys[name], node["enrolment_token"])
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
    # the budget's intent: basic composition affords both queries and not a second mean, and
    # zCDP alone would afford neither (it is past even node-a's total after them)
    assert SPENT_EPSILON <= BUDGET < SPENT_EPSILON + MEAN["dp"]["epsilon"]
    assert query_rho(MEAN["dp"]["epsilon"]) > RHO_TOTAL > RHO_BUDGET
    before = world.budget()
    assert world.researcher.study_budget(world.study)["composition"] == "basic or zcdp"
    assert [before[n]["epsilon_limit"] for n in NODES] == [BUDGET] * 3
    assert [before[n]["rho_limit"] for n in NODES] == pytest.approx([float(RHO_BUDGET)] * 3)
    # nothing spent: basic composition has the whole epsilon_L, zCDP sqrt(2 rho_L) < epsilon_L
    for name in NODES:
        assert before[name]["basic_epsilon_remaining"] == BUDGET
        assert before[name]["zcdp_epsilon_remaining"] == pytest.approx(
            largest_epsilon(RHO_BUDGET), rel=1e-9
        )
        assert before[name]["epsilon_remaining"] == BUDGET  # the better of the two
    assert before["node-a"]["dataset_total"]["epsilon_remaining"] == TOTAL
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
    for name in NODES:
        # basic composition's sums, and zCDP's
        assert (after[name]["epsilon_spent"], after[name]["delta_spent"]) == (SPENT_EPSILON, 0)
        assert after[name]["rho_spent"] == pytest.approx(float(SPENT), rel=1e-9)
        assert after[name]["basic_epsilon_remaining"] == pytest.approx(LEFT, rel=1e-9)
        assert after[name]["zcdp_epsilon_remaining"] == 0  # rho 0.625 is past rho_L
        assert after[name]["epsilon_remaining"] == pytest.approx(LEFT, rel=1e-9)
    total = after["node-a"]["dataset_total"]
    assert (total["epsilon_spent"], total["rho_spent"]) == (SPENT_EPSILON, float(SPENT))
    assert total["epsilon_remaining"] == pytest.approx(A_LEFT, rel=1e-9)
    assert after[""]["epsilon_remaining"] == pytest.approx(LEFT, rel=1e-9)


def test_a_query_beyond_what_is_left_is_refused_up_front_naming_the_nodes(world: World) -> None:
    with pytest.raises(BudgetExceeded) as refused:
        world.researcher.submit_query(world.study, {"dataset": DATASET, **MEAN})
    assert refused.value.http_status == 409
    # basic composition: 1.5 + 1 > 2; zCDP: 0.625 + 0.5 > rho_L, with nothing left (rho 0)
    each = short(LEFT)
    assert refused.value.message == (
        "the query's epsilon 1 (rho 0.5) exceeds what study 'growth' has left of the "
        "differential-privacy budget on dataset 'admissions' by both basic composition and "
        f"zCDP (node node-a: {each}; node node-b: {each}; node node-c: {each}, as last reported)"
    )

    # Another study has an allocation of its own, but not beyond each node's total over all
    # studies: node-a's configured TOTAL, the others' the study allocation (the default).
    fits, too_much = SECOND
    assert LEFT < fits <= A_LEFT < too_much <= BUDGET, "the intent (by basic composition)"
    assert query_rho(fits) > RHO_BUDGET, "zCDP affords neither, even with nothing spent"
    second = world.budget(world.second_study)
    for name in NODES:
        # the second study has spent nothing of its own allocation ...
        assert second[name]["epsilon_remaining"] == BUDGET
        # ... but only what the total over all studies has left is available
        assert second[name]["epsilon_available"] == pytest.approx(
            A_LEFT if name == "node-a" else LEFT, rel=1e-9
        )
    of_total = " of the dataset's total over all studies"
    others = (
        f"node node-b: {short(LEFT, where=of_total)}; node node-c: {short(LEFT, where=of_total)}"
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
        f"(node node-a: {short(A_LEFT, where=of_total)}; {others}, as last reported)"
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
    # each node's own ledger: basic composition 1.5 + 1 > 2, zCDP 0.625 + 0.5 > rho_L
    assert refused["error"]["message"].endswith(
        " refused: the query's rho 0.5 (epsilon 1, delta 0) would exceed the privacy allocation "
        f"of study {world.study} on dataset 'admissions' by both accountants: basic composition "
        f"has spent epsilon {SPENT_EPSILON:g} and delta 0 of ({BUDGET:g}, 0); zCDP has spent "
        f"rho {float(SPENT):.6g} of {float(RHO_BUDGET):.6g} (epsilon {BUDGET:g} at delta 1e-06); "
        f"a query of epsilon up to {LEFT:.6g} remains (per study)"
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
    assert (entry["epsilon_spent"], entry["delta_spent"]) == (SPENT_EPSILON, 0)
    assert entry["basic_epsilon_remaining"] == pytest.approx(LEFT, rel=1e-12)
    assert entry["zcdp_epsilon_remaining"] == 0
    assert entry["epsilon_remaining"] == pytest.approx(LEFT, rel=1e-12)
    [total] = ledger["dataset_totals"]
    assert (total["dataset"], total["epsilon_limit"], total["rho_spent"]) == (
        DATASET,
        TOTAL,
        float(SPENT),
    )
    assert (total["epsilon_spent"], total["rho_limit"]) == (SPENT_EPSILON, float(RHO_TOTAL))
    assert total["epsilon_remaining"] == pytest.approx(A_LEFT, rel=1e-12)


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
