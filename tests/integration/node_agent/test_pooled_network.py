"""A pooled synthetic cohort end to end: a coordinator and three node agents, each its own OS
process, their MPC parties talking TLS over loopback; the stewards decide with `tessera steward`.

1. Every hospital's steward approves: one release is published, after the last approval and
   not before; its card lists every hospital's own evaluation, verdict, gates and signed
   approvals; each hospital's report is served; epsilon was charged at every hospital's ledger;
   the data matches the card's hash.
2. One hospital's steward rejects: nothing is published, the other hospitals' candidates are
   dropped.
3. One hospital no longer trusts another: it refuses the run before any share is sent, naming
   the peer, and the whole request fails.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from demo.cohort import HOSPITALS, cohort, schema
from demo.network import DataSource, Network, NodeSpec
from tessera.client import TesseraClient

pytestmark = pytest.mark.slow

DATASET = "cohort"
NODES = ("node-a", "node-b", "node-c")
STEWARDS = {"node-a": "ada", "node-b": "cy", "node-c": "dee"}
SPEC = {
    "dataset": DATASET,
    "generator": "mst",
    "rows": 400,
    "epsilon": 1.0,
    "target": "icu_admission",
    "seed": 5,
    "scope": "pooled",
    "params": {"iters": 200},
}


def tessera(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )


@dataclass
class World:
    net: Network
    researcher: TesseraClient
    study: int

    def config(self, node: str) -> Path:
        return self.net.root / node / "node.toml"

    def decide(self, node: str, job_id: int, decision: str) -> None:
        key = self.net.root / "keys" / f"{STEWARDS[node]}.key"
        done = tessera(
            "steward", decision, str(job_id), "--config", self.config(node), "--key", key,
            "--reason", f"{decision} in the pooled network test",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

    def candidate_file(self, node: str, job_id: int) -> Path:
        return self.net.root / node / "synthesis" / f"job-{job_id}" / "synthetic.parquet"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("pooled-network")
    net = Network(root)
    try:
        net.start_coordinator(sweep_interval_s=0.2)
        admin = TesseraClient(net.url)
        admin.login("admin", net.admin_password)
        orgs = []
        for name, hospital in zip(NODES, HOSPITALS, strict=True):
            steward = STEWARDS[name]
            made = tessera(
                "steward", "keygen", "--out", root / "keys", "--name", steward, "--no-passphrase"
            )
            assert made.returncode == 0, made.stderr
            rules = {
                "generators": ["mst"],
                "stewards": {steward: made.stdout.splitlines()[0]},
                "pooled": True,
            }
            path = root / f"{name}.csv"
            cohort(hospital).to_csv(path, index=False)
            org = admin.create_organisation(f"Hospital {name[-1].upper()}")
            orgs.append(org["id"])
            node = admin.create_node(name, org["id"])
            spec = NodeSpec(
                name,
                org["name"],
                [DataSource(DATASET, "csv", schema(), path=str(path))],
                synthesis=rules,
                dp_epsilon_budget=5.0,
                dp_delta_budget=1e-4,
            )
            net.start_node(spec, node["api_key"], node["enrolment_token"])
        admin.create_user("rita", "rita-password", role="researcher")
        study = admin.create_study(
            "pooled", organisation_ids=orgs, datasets=[DATASET], members=["rita"]
        )
        researcher = TesseraClient(net.url)
        researcher.login("rita", "rita-password")
        deadline = time.monotonic() + 60
        while len(researcher.study_datasets(study["id"])[0]["nodes"]) < 3:
            assert time.monotonic() < deadline, "the nodes did not register"
            for proc in net.nodes.values():
                assert proc.alive(), proc.tail()
            time.sleep(0.2)
        yield World(net, researcher, study["id"])
    finally:
        net.stop()


def at_rest(world: World, request_id: int) -> dict[str, Any]:
    view = world.researcher.wait_synthesis(request_id, timeout=240)
    for proc in world.net.nodes.values():
        assert proc.alive(), proc.tail()
    return view


def by_node(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["node"]: job for job in view["jobs"]}


def test_every_hospital_approves_one_pooled_release(world: World) -> None:
    made = world.researcher.request_synthesis(world.study, SPEC)
    view = at_rest(world, made["id"])
    jobs = by_node(view)
    assert {j["status"] for j in jobs.values()} == {"awaiting_review"}, view
    assert sorted(j["party_id"] for j in jobs.values()) == [0, 1, 2]
    # every hospital holds the same candidate
    digests = {
        hashlib.sha256(world.candidate_file(n, j["id"]).read_bytes()).hexdigest()
        for n, j in jobs.items()
    }
    assert len(digests) == 1

    world.decide("node-a", jobs["node-a"]["id"], "approve")
    world.decide("node-b", jobs["node-b"]["id"], "approve")
    deadline = time.monotonic() + 30
    while True:  # two of three approved: nothing is published
        states = {
            j["node"]: j["status"] for j in world.researcher.get_synthesis(made["id"])["jobs"]
        }
        if states["node-a"] == states["node-b"] == "approved" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert states == {"node-a": "approved", "node-b": "approved", "node-c": "awaiting_review"}
    assert [r for r in world.researcher.releases(world.study) if r.get("scope") == "pooled"] == []

    world.decide("node-c", jobs["node-c"]["id"], "approve")
    view = world.researcher.wait_synthesis(made["id"], timeout=120, until="done")
    assert {j["status"] for j in view["jobs"]} == {"released"}, view
    (release,) = [r for r in world.researcher.releases(world.study) if r.get("scope") == "pooled"]
    card = release["card"]
    assert card["parties"] == list(NODES)
    assert card["scope"] == "pooled" and card["generator"] == "mst"
    assert 0 < card["epsilon"] <= 1.0 and card.get("training_rows") is None
    assert card["verdict"]["verdict"] in ("pass", "needs attention", "fail")
    assert [n["node"] for n in card["nodes"]] == list(NODES)
    for node in card["nodes"]:
        assert node["verdict"]["verdict"] in ("pass", "needs attention")
        assert all(g["passed"] for g in node["gates"])
        assert [a["steward"] for a in node["approvals"]] == [STEWARDS[node["node"]]]
        assert "sizes" not in node["metrics"]  # no hospital's row count
        report = world.researcher.release_report(release["id"], node["node"])
        assert hashlib.sha256(report).hexdigest() == node["report_sha256"]
    data = world.researcher.release_data(release["id"], "parquet")
    assert hashlib.sha256(data).hexdigest() == release["sha256"] == digests.pop()
    assert release["rows"] == SPEC["rows"]
    # epsilon charged at every hospital's ledger (each reports it to the coordinator)
    deadline = time.monotonic() + 30
    while True:
        (dataset,) = world.researcher.study_budget(world.study)["datasets"]
        spent = {n["node"]: n["epsilon_spent"] for n in dataset["nodes"]}
        if all(spent.get(n, 0) >= 0.99 for n in NODES) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert all(spent.get(n, 0) >= 0.99 for n in NODES), spent


def test_one_hospitals_rejection_publishes_nothing(world: World) -> None:
    before = {r["id"] for r in world.researcher.releases(world.study)}
    made = world.researcher.request_synthesis(world.study, SPEC)
    jobs = by_node(at_rest(world, made["id"]))
    assert {j["status"] for j in jobs.values()} == {"awaiting_review"}
    world.decide("node-a", jobs["node-a"]["id"], "approve")
    world.decide("node-b", jobs["node-b"]["id"], "reject")
    view = world.researcher.wait_synthesis(made["id"], timeout=120, until="done")
    states = {j["node"]: j["status"] for j in view["jobs"]}
    assert states["node-b"] == "rejected"
    assert states["node-a"] == states["node-c"] == "failed", states
    assert {r["id"] for r in world.researcher.releases(world.study)} == before
    deadline = time.monotonic() + 30  # the others drop their copy of the candidate
    while any(world.candidate_file(n, jobs[n]["id"]).exists() for n in ("node-a", "node-b")):
        assert time.monotonic() < deadline, "a rejected pooled candidate was kept"
        time.sleep(0.3)


def test_a_hospital_that_distrusts_a_peer_stops_the_run(world: World) -> None:
    done = tessera("node", "distrust", "--config", world.config("node-c"), "--node", "node-a")
    assert done.returncode == 0, done.stdout + done.stderr
    made = world.researcher.request_synthesis(world.study, SPEC)
    view = world.researcher.wait_synthesis(made["id"], timeout=120, until="done")
    states = by_node(view)
    assert {j["status"] for j in view["jobs"]} == {"failed"}, view
    error = states["node-c"]["error"]
    assert error["code"] == "peer_refused" and "node-a" in error["message"], error
