"""Manual approval of query shapes end to end: a coordinator and three node agents, each its own
OS process; hospital C's policy says `approval = "manual"`, its stewards' keys made with
`tessera steward keygen`.

A count query waits at hospital C (the researcher sees why in the task's progress) until its
steward approves it with `tessera steward approve-query --remember`; then it runs by MPC. The
same shape with another constant runs at once. Another shape is rejected by a steward (the
query fails with the steward's reason), and one nobody decides on is refused at the timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from demo.network import DataSource, Network, NodeSpec
from tessera.client import TesseraClient
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
TIMEOUT_S = 6.0  # node-c's approval_timeout_s


def tessera(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )


def cohort(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(0, 19, rows),
            "sex": rng.choice(["F", "M"], rows),
            "weight": np.round(rng.uniform(3, 90, rows), 2),
        }
    )


@dataclass
class World:
    net: Network
    researcher: TesseraClient
    study: int

    def config(self) -> Path:
        return self.net.root / "node-c" / "node.toml"

    def key(self, who: str) -> Path:
        return self.net.root / "keys" / f"{who}.key"

    def submit(self, query: dict[str, Any]) -> int:
        made = self.researcher.submit_query(self.study, {"dataset": DATASET, **query})
        return int(made["id"])

    def held(self, timeout: float = 30) -> dict[str, Any]:
        """The one query node-c holds for a steward, once it holds it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listed = tessera("steward", "queries", "--config", self.config(), "--json")
            if listed.returncode == 0 and json.loads(listed.stdout):
                [held] = json.loads(listed.stdout)
                return held  # type: ignore[no-any-return]
            time.sleep(0.3)
        raise AssertionError("node-c held no query")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("query-approval")
    net = Network(root)
    try:
        public = {}
        for who in ("ada", "bob"):
            made = tessera(
                "steward", "keygen", "--out", root / "keys", "--name", who, "--no-passphrase"
            )
            assert made.returncode == 0, made.stderr
            public[who] = made.stdout.splitlines()[0]
        net.start_coordinator(sweep_interval_s=0.2, query_timeout_s=120, accept_timeout_s=90)
        admin = TesseraClient(net.url)
        admin.login("admin", net.admin_password)
        orgs = []
        for i, name in enumerate(NODES):
            path = root / f"{name}.csv"
            cohort(150 + 40 * i, i).to_csv(path, index=False)
            org = admin.create_organisation(f"Hospital {name[-1].upper()}")
            orgs.append(org["id"])
            node = admin.create_node(name, org["id"])
            manual = name == "node-c"
            spec = NodeSpec(
                name,
                org["name"],
                [DataSource(DATASET, "csv", SCHEMA, path=str(path))],
                approval="manual" if manual else None,
                approval_timeout_s=TIMEOUT_S if manual else None,
                stewards=public if manual else None,
            )
            net.start_node(spec, node["api_key"], node["enrolment_token"])
        admin.create_user("rita", "rita-password", role="researcher")
        study = admin.create_study(
            "reviewed", organisation_ids=orgs, datasets=[DATASET], members=["rita"]
        )
        researcher = TesseraClient(net.url)
        researcher.login("rita", "rita-password")
        deadline = time.monotonic() + 60
        while len(researcher.study_datasets(study["id"])[0]["nodes"]) < 3:
            assert time.monotonic() < deadline, "the nodes did not register"
            time.sleep(0.2)
        yield World(net, researcher, study["id"])
    finally:
        net.stop()


def test_a_query_waits_for_a_steward_and_its_shape_is_remembered(world: World) -> None:
    first = world.submit({"statistic": "count", "where": [["sex", "==", "F"]]})
    held = world.held()
    assert held["researcher"] == "rita"  # as the coordinator signed it in the task
    assert held["query"] == first and held["shape"] == {
        "statistic": "count",
        "dataset": DATASET,
        "columns": [],
        "group_by": [],
        "where": ["sex"],
    }
    deadline = time.monotonic() + 10
    while True:  # the researcher sees why: node-c's task is in steward review
        view = world.researcher.get_query(first)
        stages = {t["node"]: t["stage"] for t in view["tasks"]}
        if stages["node-c"] == "steward_review" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert view["status"] == "pending" and stages["node-c"] == "steward_review", view
    approved = tessera(
        "steward",
        "approve-query",
        str(held["id"]),
        "--config",
        world.config(),
        "--key",
        world.key("ada"),
        "--remember",
    )
    assert approved.returncode == 0, approved.stderr
    done = world.researcher.wait_query(first, timeout=90)
    assert done["status"] == "succeeded", done
    assert done["result"]["count"] > 0

    # the same shape, another constant: node-c asks nobody
    second = world.submit({"statistic": "count", "where": [["sex", "==", "M"]]})
    assert world.researcher.wait_query(second, timeout=90)["status"] == "succeeded"
    audit = (world.net.root / "node-c" / "audit.jsonl").read_text()
    assert '"steward.query_approved"' in audit and '"query.shape_approved"' in audit


def test_another_shape_is_rejected_or_refused_at_the_timeout(world: World) -> None:
    rejected = world.submit({"statistic": "mean", "column": "weight", "group_by": ["sex"]})
    held = world.held()
    no = tessera(
        "steward",
        "reject-query",
        str(held["id"]),
        "--config",
        world.config(),
        "--key",
        world.key("bob"),
        "--reason",
        "weight by sex is not in our agreement",
    )
    assert no.returncode == 0, no.stderr
    failed = world.researcher.wait_query(rejected, timeout=60)
    assert failed["status"] == "failed", failed
    assert "weight by sex is not in our agreement" in json.dumps(failed), failed

    ignored = world.submit({"statistic": "mean", "column": "age"})
    failed = world.researcher.wait_query(ignored, timeout=60)
    assert failed["status"] == "failed", failed
    assert f"approved this query's shape within {TIMEOUT_S:g} s" in json.dumps(failed), failed
