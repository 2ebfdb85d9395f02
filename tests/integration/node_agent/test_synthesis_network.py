"""The synthetic-data release workflow end to end: a coordinator and three node agents, each
its own OS process, on SQLite and on PostgreSQL; the stewards decide with `tessera steward`.

One request goes to all three hospitals. Hospital A needs two stewards: one approval is not
enough, two publish its release, downloadable as CSV and Parquet with the card's hash. Hospital
B's gate demands a fidelity no generator reaches: its candidate is gated, never offered,
nothing of it is uploaded. Hospital C's steward rejects: nothing is uploaded, the coordinator
keeps the record. Every decision is in the node's audit log, whose chain verifies. On SQLite a
differentially private request (mst, epsilon 1) is released too, its card stating the epsilon
and withholding the exact row counts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from demo.cohort import HOSPITALS, cohort, schema
from demo.network import DataSource, Network, NodeSpec
from tessera.client import TesseraClient

DATASET = "cohort"
# The whole network again on PostgreSQL is the slow tier: the coordinator's synthesis storage on
# both backends is in tests/integration/api/test_synthesis_flow.py.
SLOW_BACKENDS = ("postgres",)
ROWS = 300
SPEC = {
    "dataset": DATASET,
    "generator": "cart",
    "rows": ROWS,
    "target": "icu_admission",
    "seed": 11,
}
# each node's stewards get their key pairs from `tessera steward keygen` (in keys/, outside
# every work_dir), and the policies list their public keys
POLICIES: dict[str, dict[str, Any]] = {
    "node-a": {
        "generators": ["cart", "mst"],
        "stewards": ["ada", "bob"],
        "approvals_required": 2,
        "max_epsilon": 2.0,
    },
    "node-b": {"generators": ["cart"], "stewards": ["cy"], "gates": {"min_fidelity": 0.999}},
    "node-c": {"generators": ["cart"], "stewards": ["dee"]},
}
PEOPLE = ("ada", "bob", "cy", "dee", "mallory")  # mallory: listed by no node


def tessera(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@dataclass
class World:
    net: Network
    researcher: TesseraClient
    study: int
    backend: str

    def config(self, node: str) -> Path:
        return self.net.root / node / "node.toml"

    def steward(
        self, node: str, *args: str, key: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`tessera steward ARGS` at `node`, signing with `key`'s key file where given."""
        signing = ("--key", str(self.key(key))) if key else ()
        return tessera("steward", *args, *signing, "--config", self.config(node))

    def key(self, person: str) -> Path:
        return self.net.root / "keys" / f"{person}.key"

    def store(self, node: str) -> Path:
        return self.net.root / node / "synthesis" / "candidates.sqlite3"

    def audit(self, node: str) -> list[dict[str, Any]]:
        path = self.net.root / node / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def world(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("synthesis-network")
    net = Network(root)
    try:
        net.start_coordinator(database_url=database_url, sweep_interval_s=0.2)
        admin = TesseraClient(net.url)
        admin.login("admin", net.admin_password)
        public = {}
        for person in PEOPLE:
            made = tessera(
                "steward", "keygen", "--out", root / "keys", "--name", person, "--no-passphrase"
            )
            assert made.returncode == 0, made.stderr
            public[person] = made.stdout.splitlines()[0]
        orgs = []
        for (name, listed), hospital in zip(POLICIES.items(), HOSPITALS, strict=True):
            rules = listed | {"stewards": {p: public[p] for p in listed["stewards"]}}
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
                # node-a trains mst: its charges go to the dataset's ledger (total on by default)
                dp_epsilon_budget=1.5 if "mst" in rules["generators"] else None,
            )
            net.start_node(spec, node["api_key"], node["enrolment_token"])
        admin.create_user("rita", "rita-password", role="researcher")
        study = admin.create_study(
            "synth", organisation_ids=orgs, datasets=[DATASET], members=["rita"]
        )
        researcher = TesseraClient(net.url)
        researcher.login("rita", "rita-password")
        deadline = time.monotonic() + 60
        while len(researcher.study_datasets(study["id"])[0]["nodes"]) < 3:
            assert time.monotonic() < deadline, "the nodes did not register"
            for proc in net.nodes.values():
                assert proc.alive(), proc.tail()
            time.sleep(0.2)
        backend = "sqlite" if database_url.startswith("sqlite") else "postgres"
        yield World(net, researcher, study["id"], backend)
    finally:
        net.stop()


def forge_approval(world: World, node: str, job_id: int, as_steward: str, signer: str) -> None:
    """What one person with write access to the node's work_dir can do: write an approval as
    another steward into the candidate store, signed with their own key but naming the
    steward's public key."""
    import sqlite3
    from datetime import UTC, datetime

    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from node_agent.config import NodeSettings
    from tessera.stewards import sign

    rules = NodeSettings.load(world.config(node)).policy.synthesis
    assert rules is not None
    with sqlite3.connect(world.store(node)) as conn:
        row = conn.execute(
            "SELECT data_sha256, card_sha256, report_sha256 FROM steward_decisions "
            "WHERE job_id = ?",
            (job_id,),
        ).fetchone()
        private = load_pem_private_key(world.key(signer).read_bytes(), None)
        conn.execute(
            "INSERT INTO steward_decisions (job_id, steward, decision, reason, at, key, "
            "data_sha256, card_sha256, report_sha256, signature) VALUES (?, ?, 'approve', '', "
            "?, ?, ?, ?, ?, ?)",
            (
                job_id,
                as_steward,
                datetime.now(UTC).isoformat(),
                rules.stewards[as_steward],
                *row,
                sign(private, b"anything"),  # type: ignore[arg-type]
            ),
        )


def unforge(world: World, node: str, job_id: int, steward: str) -> None:
    import sqlite3

    with sqlite3.connect(world.store(node)) as conn:
        conn.execute(
            "DELETE FROM steward_decisions WHERE job_id = ? AND steward = ?", (job_id, steward)
        )


def wait_at_rest(world: World, request_id: int, timeout: float = 240) -> dict[str, Any]:
    view = world.researcher.wait_synthesis(request_id, timeout=timeout)
    for proc in world.net.nodes.values():
        assert proc.alive(), proc.tail()
    assert view["at_rest"], view
    return view


def jobs_by_node(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {j["node"]: j for j in view["jobs"]}


def wait_job_ended(world: World, request_id: int, node: str, timeout: float) -> dict[str, Any]:
    """`node`'s job of the request once it ended (released, rejected or failed), whatever the
    other nodes' jobs do; the job as it is after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        view = world.researcher.get_synthesis(request_id, wait=max(0.0, min(5.0, left)))
        job = jobs_by_node(view)[node]
        if job["status"] in ("released", "rejected", "failed", "refused", "gated") or left <= 0:
            return job


def test_approved_gated_and_rejected_candidates(world: World) -> None:
    made = world.researcher.request_synthesis(world.study, SPEC)
    assert sorted(j["node"] for j in made["jobs"]) == ["node-a", "node-b", "node-c"]
    jobs = jobs_by_node(wait_at_rest(world, made["id"]))
    assert jobs["node-a"]["status"] == "awaiting_review"
    assert jobs["node-a"]["approvals_required"] == 2
    assert jobs["node-b"]["status"] == "gated"
    assert jobs["node-b"]["error"]["code"] == "release_gate_failed"
    failed = [g for g in jobs["node-b"]["gates"] if not g["passed"]]
    assert [g["name"] for g in failed] == ["min_fidelity"] and failed[0]["threshold"] == 0.999
    assert jobs["node-c"]["status"] == "awaiting_review"
    for name in ("node-a", "node-c"):
        assert {g["name"] for g in jobs[name]["gates"]} >= {
            "min_fidelity",
            "exact_match_margin",
            "dcr_not_below_holdout",
        }
        assert all(g["passed"] for g in jobs[name]["gates"])

    # The gated candidate never had data written; its report stays at the node for review.
    folder_b = world.net.root / "node-b" / "synthesis" / f"job-{jobs['node-b']['id']}"
    assert (folder_b / "report.html").exists() and not (folder_b / "synthetic.parquet").exists()

    # Hospital C: its steward reads the candidate and rejects it.
    job_c = str(jobs["node-c"]["id"])
    listed = world.steward("node-c", "list")
    assert listed.returncode == 0 and job_c in listed.stdout and "awaiting_review" in listed.stdout
    shown = world.steward("node-c", "show", job_c)
    assert "fidelity" in shown.stdout and "report: " in shown.stdout
    report = Path(shown.stdout.rsplit("report: ", 1)[1].strip())
    assert report.read_text().startswith("<!doctype html>")
    intruder = world.steward("node-c", "approve", job_c, key="mallory")
    assert intruder.returncode == 2 and "is no steward's of node node-c" in intruder.stderr
    rejected = world.steward("node-c", "reject", job_c, "--reason", "too small", key="dee")
    assert rejected.returncode == 0, rejected.stderr

    # Hospital A: one approval of the two it needs; one forged in the store (as bob, signed by
    # mallory's key) does not count; then bob's own.
    job_a = str(jobs["node-a"]["id"])
    first = world.steward("node-a", "approve", job_a, key="ada")
    assert first.returncode == 0 and "1 more approval(s) needed" in first.stdout
    twice = world.steward("node-a", "approve", job_a, key="ada")
    assert twice.returncode == 2 and "ada already decided" in twice.stderr
    forge_approval(world, "node-a", int(job_a), as_steward="bob", signer="mallory")
    time.sleep(2)  # the agent sees one approval and a forgery: nothing is uploaded yet
    assert world.researcher.releases(world.study) == []
    refused = [e for e in world.audit("node-a") if e["action"] == "steward.refused"]
    assert refused and "'bob''s signature does not verify" in json.dumps(refused[-1])
    unforge(world, "node-a", int(job_a), "bob")
    second = world.steward("node-a", "approve", job_a, "--reason", "report read", key="bob")
    assert second.returncode == 0 and "the node agent uploads it now" in second.stdout

    view = world.researcher.wait_synthesis(made["id"], timeout=60, until="done")
    jobs = jobs_by_node(view)
    assert jobs["node-a"]["status"] == "released"
    assert jobs["node-c"]["status"] == "rejected"
    assert jobs["node-c"]["error"]["message"] == "rejected by dee"
    assert jobs["node-c"]["decisions"][0]["reason"] == "too small"

    [release] = world.researcher.releases(world.study)
    assert release["node"] == "node-a" and release["id"] == jobs["node-a"]["release_id"]
    card = release["card"]
    assert card["generator"] == "cart" and card["rows"] == ROWS and card["epsilon"] is None
    assert [a["steward"] for a in card["approvals"]] == ["ada", "bob"]
    assert [s["steward"] for s in release["signed_by"]] == ["ada", "bob"]
    assert all(s["fingerprint"].startswith("sha256:") for s in release["signed_by"])
    assert card["training_rows"] == 960 and card["holdout_rows"] == 240
    assert card["metrics"]["utility"]["target"] == "icu_admission"
    parquet = world.researcher.release_data(release["id"], "parquet")
    assert hashlib.sha256(parquet).hexdigest() == card["sha256"] == release["sha256"]
    frame = pd.read_parquet(io.BytesIO(parquet))
    assert len(frame) == ROWS and list(frame.columns) == schema().names
    csv = pd.read_csv(io.BytesIO(world.researcher.release_data(release["id"], "csv")))
    assert len(csv) == ROWS
    assert world.researcher.release_report(release["id"]).startswith(b"<!doctype html>")

    # The researcher's shell: the request's state, the releases, a verified download.
    env = {
        "TESSERA_COORDINATOR_URL": world.net.url,
        "TESSERA_USER": "rita",
        "TESSERA_PASSWORD": "rita-password",
    }
    status = tessera("synth", "status", str(made["id"]), env=env)
    assert status.returncode == 0, status.stderr
    assert f"node-a released — release {release['id']}" in status.stdout
    assert "node-b gated: release gate(s) failed: min_fidelity" in status.stdout
    assert "node-c rejected: rejected by dee" in status.stdout
    listed = tessera("synth", "releases", "--study", "synth", env=env)
    assert listed.returncode == 0 and "node-a" in listed.stdout
    assert "ada (sha256:" in listed.stdout and "bob (sha256:" in listed.stdout
    out = world.net.root / "download.parquet"
    fetched = tessera(
        "synth",
        "download",
        str(release["id"]),
        "--out",
        str(out),
        "--report",
        str(world.net.root / "report.html"),
        env=env,
    )
    assert fetched.returncode == 0 and "hash verified" in fetched.stdout
    assert hashlib.sha256(out.read_bytes()).hexdigest() == card["sha256"]
    refused = tessera(
        "synth",
        "request",
        "--study",
        "synth",
        "--dataset",
        DATASET,
        "--rows",
        "10",
        "--generator",
        "tvae",
        env=env,
    )
    assert refused.returncode == 2 and "no node of the study may take this request" in (
        refused.stderr
    )

    # Rejected: nothing uploaded, and its data removed at the node.
    folder_c = world.net.root / "node-c" / "synthesis" / f"job-{job_c}"
    assert not (folder_c / "synthetic.parquet").exists()

    actions_a = [e["action"] for e in world.audit("node-a")]
    for action in (
        "synthesis.received",
        "synthesis.accepted",
        "synthesis.candidate",
        "steward.approved",
        "release.uploaded",
    ):
        assert action in actions_a
    assert actions_a.count("steward.approved") == 2
    assert "steward.rejected" in [e["action"] for e in world.audit("node-c")]
    for node in POLICIES:
        verified = tessera("node", "audit-verify", "--config", world.config(node))
        assert verified.returncode == 0 and json.loads(verified.stdout)["ok"]


def test_data_swapped_after_an_approval_is_never_uploaded(world: World) -> None:
    """Someone with write access to node-a's work_dir replaces the candidate's data after ada
    approved it, and rewrites the card's hash in the store to match; bob then approves what he
    sees. ada signed other bytes: the node refuses to upload, and nothing is published."""
    import sqlite3

    made = world.researcher.request_synthesis(world.study, SPEC | {"seed": 12})
    job = jobs_by_node(wait_at_rest(world, made["id"]))["node-a"]
    assert job["status"] == "awaiting_review", job
    first = world.steward("node-a", "approve", str(job["id"]), key="ada")
    assert first.returncode == 0, first.stderr
    folder = world.net.root / "node-a" / "synthesis" / f"job-{job['id']}"
    frame = pd.read_parquet(folder / "synthetic.parquet")
    frame.iloc[0, 0] = frame.iloc[1, 0]  # one value changed
    frame.to_parquet(folder / "synthetic.parquet", index=False)
    swapped = hashlib.sha256((folder / "synthetic.parquet").read_bytes()).hexdigest()
    with sqlite3.connect(world.store("node-a")) as conn:
        [(raw,)] = conn.execute("SELECT card FROM candidates WHERE job_id = ?", (job["id"],))
        conn.execute(
            "UPDATE candidates SET card = ? WHERE job_id = ?",
            (json.dumps(json.loads(raw) | {"sha256": swapped}), job["id"]),
        )
    second = world.steward("node-a", "approve", str(job["id"]), key="bob")
    assert second.returncode == 0, second.stderr
    # node-a's job ends; the others' stay awaiting review (nobody decides them here)
    failed = wait_job_ended(world, made["id"], "node-a", timeout=60)
    assert failed["status"] == "failed" and failed["release_id"] is None
    assert failed["error"]["code"] == "data_changed"
    assert "'ada' signed other data than this candidate's" in failed["error"]["message"]
    assert all(r["request_id"] != made["id"] for r in world.researcher.releases(world.study))


@pytest.mark.slow  # trains mst at every node
def test_a_differentially_private_release(world: World) -> None:
    if world.backend != "sqlite":
        pytest.skip("the DP release runs once (on SQLite): the workflow is the same")
    spec = {
        "dataset": DATASET,
        "generator": "mst",
        "epsilon": 1.0,
        "rows": 200,
        "params": {"iters": 200},
    }
    made = world.researcher.request_synthesis(world.study, spec)
    assert [j["node"] for j in made["jobs"]] == ["node-a"]
    assert {s["node"] for s in made["skipped"]} == {"node-b", "node-c"}
    job = jobs_by_node(wait_at_rest(world, made["id"]))["node-a"]
    assert job["status"] == "awaiting_review", job
    for steward in ("ada", "bob"):
        done = world.steward("node-a", "approve", str(job["id"]), key=steward)
        assert done.returncode == 0, done.stderr
    view = world.researcher.wait_synthesis(made["id"], timeout=60, until="done")
    release = world.researcher.release(jobs_by_node(view)["node-a"]["release_id"])
    card = release["card"]
    assert card["epsilon"] == pytest.approx(1.0) and card["delta"] == 1e-6
    assert card["training_rows"] is None and card["holdout_rows"] is None
    assert "sizes" not in card["metrics"]
    assert release["rows"] == 200

    # The job was charged its rho (synth's accounting of epsilon 1 at delta 1e-6) before
    # training, to the dataset's ledger at node-a; a second one beyond the total is refused.
    from synth.accounting import rho_for

    shown = tessera("node", "budget", "--config", world.config("node-a"))
    assert shown.returncode == 0, shown.stderr
    [entry] = json.loads(shown.stdout)["entries"]
    assert entry["study_id"] == world.study and entry["charges"] == 1
    assert entry["rho_spent"] == pytest.approx(rho_for(1.0, 1e-6))
    again = world.researcher.request_synthesis(world.study, spec)
    refused = jobs_by_node(wait_at_rest(world, again["id"]))["node-a"]
    assert refused["status"] == "refused", refused
    assert "would exceed the privacy" in refused["error"]["message"], refused
    assert (
        json.loads(tessera("node", "budget", "--config", world.config("node-a")).stdout)["entries"]
        == json.loads(shown.stdout)["entries"]
    ), "a refused job charges nothing"


def test_a_node_refuses_what_its_own_policy_forbids(world: World) -> None:
    """The coordinator plans with published policies; a node that published none for a
    generator still refuses it itself (here: asked directly, as a misled coordinator would)."""
    from node_agent.config import NodeSettings
    from node_agent.policy import Policy
    from tessera.schemas import SynthesisJobOut, SynthesisSpec

    settings = NodeSettings.load(world.config("node-c"))
    policy = Policy(settings.policy, settings.datasets)

    def job(**spec: Any) -> SynthesisJobOut:
        return SynthesisJobOut(
            id=1,
            request_id=1,
            study_id=1,
            requested_by="rita",
            spec=SynthesisSpec(dataset=DATASET, rows=10, **spec),
            deadline="2030-01-01T00:00:00Z",
        )

    assert policy.decide_synthesis(job()) is None
    assert "does not allow generator 'mst'" in str(
        policy.decide_synthesis(job(generator="mst", epsilon=1.0))
    )
    assert "holds out at least 10%" in str(policy.decide_synthesis(job(holdout=0.05)))
    assert "takes no parameter(s) epochs" in str(policy.decide_synthesis(job(params={"epochs": 3})))
    assert "target 'nope'" in str(policy.decide_synthesis(job(target="nope")))
