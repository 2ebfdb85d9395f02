"""Real node agents against the real coordinator: every piece its own OS process.

A coordinator (uvicorn, SQLite) and four node agents (`tessera node run`), each reading its own
data source (CSV, Parquet, an SQLite table): pooled results equal the `exact` mode's
perturbed answer recomputed in plaintext from every node's rows and row-key secret
(`smpc.statistics.reference_parties`), and lie within the documented perturbation of pandas on
the pooled rows; a node's policy is enforced by the node itself; a node killed after it
accepted makes the query fail with a reason within its deadline, and the restarted node serves
the next one; the agents ride out a coordinator restart. Every process is started with its
own process group and is stopped (the whole group) by the fixture.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np
import pandas as pd
import pytest
import sqlalchemy

from demo.network import Network, introduce
from node_agent.config import NodeSettings
from node_agent.datasets import DatasetCache
from smpc.statistics import reference_parties
from tessera.client import TesseraClient
from tessera.errors import PolicyDenied
from tessera.privacy import largest_epsilon, rho_budget

DATASET = "admissions"
ACCEPT_TIMEOUT_S = 8
QUERY_TIMEOUT_S = 12
COLUMNS = """columns = [
  { name = "age", type = "integer", min = 0, max = 18 },
  { name = "sex", type = "categorical", levels = ["F", "M"] },
  { name = "weight", type = "float", min = 1, max = 120 },
  { name = "icu", type = "boolean" },
]"""


def cohort(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(0, 19, rows)
    return pd.DataFrame(
        {
            "age": age,
            "sex": rng.choice(["F", "M"], rows),
            "weight": np.round(3.5 + 3.1 * age + rng.normal(0, 2, rows).clip(-2, 2), 2),
            "icu": rng.random(rows) < 0.2,
            "mrn": rng.integers(10**6, 10**7, rows),  # an identifier the schema does not declare
        }
    )


@dataclass
class Agent:
    """One `tessera node run` process (and its party processes: one process group)."""

    name: str
    config: Path
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None

    def start(self) -> None:
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "node", "run", "--config", str(self.config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=self.config.parent,
            env=env,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL the agent and its party processes: a crashed host."""
        self.signal_group(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(10)

    def stop(self) -> int | None:
        if self.popen is None:
            return None
        if self.alive():
            self.signal_group(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.signal_group(signal.SIGKILL)  # party processes left behind, if any
        if self.log is not None:
            self.log.close()
        return self.popen.returncode

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, needle: str, count: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.text().count(needle) < count:
            assert self.alive(), f"{self.name} exited:\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, (
                f"{self.name}: no {needle!r}:\n{self.text()[-3000:]}"
            )
            time.sleep(0.05)


@dataclass
class World:
    net: Network
    researcher: TesseraClient
    study: int
    restricted_study: int
    agents: dict[str, Agent]
    frames: dict[str, pd.DataFrame]
    keys: dict[str, str] = field(default_factory=dict)

    def submit(self, query: dict[str, Any], study: int | None = None) -> dict[str, Any]:
        return self.researcher.submit_query(study or self.study, {"dataset": DATASET, **query})

    def run(self, query: dict[str, Any], study: int | None = None) -> dict[str, Any]:
        submitted = self.submit(query, study)
        return self.researcher.wait_query(submitted["id"], timeout=QUERY_TIMEOUT_S + 20)

    def pooled(self, *names: str) -> pd.DataFrame:
        return pd.concat([self.frames[n] for n in names], ignore_index=True)

    def reference(self, query: dict[str, Any], *names: str) -> dict[str, Any]:
        """What the nodes `names` must answer: the perturbed result recomputed in plaintext
        from each node's rows as the node reads them, its row-key secret (made at its first
        start) and its floor."""
        frames, secrets, floors = [], [], []
        cache = DatasetCache()
        schema = None
        for name in sorted(names):
            settings = NodeSettings.load(self.agents[name].config)
            dataset = settings.dataset(DATASET)
            assert dataset is not None
            schema = dataset.schema_
            frames.append(cache.get(dataset))
            secrets.append((settings.work_dir / "row_keys.secret").read_text().strip())
            floors.append(settings.policy.min_count)
        assert schema is not None
        return reference_parties(
            {"dataset": DATASET, **query},
            frames,
            schema,
            min_count_floors=floors,
            key_secrets=secrets,
        )


def write_node(
    root: Path,
    name: str,
    url: str,
    key: str,
    frame: pd.DataFrame,
    source: str,
    policy: str,
    port: int,
    log_format: str = "text",
    enrolment_token: str = "",
) -> Path:
    """The node's folder: its data in `source` form and a node.toml with relative paths."""
    folder = root / name
    folder.mkdir()
    if source == "csv":
        frame.to_csv(folder / "admissions.csv", index=False)
        where = 'path = "admissions.csv"'
    elif source == "parquet":
        frame.to_parquet(folder / "admissions.parquet", index=False)
        where = 'path = "data.parquet"'
        (folder / "admissions.parquet").rename(folder / "data.parquet")
    else:
        engine = sqlalchemy.create_engine(f"sqlite:///{folder / 'hospital.db'}")
        with engine.begin() as conn:
            frame.to_sql("admissions", conn, index=False)
        engine.dispose()
        where = 'url = "sqlite:///hospital.db"\ntable = "admissions"'
    (folder / "node.key").write_text(key + "\n")
    config = folder / "node.toml"
    config.write_text(
        f'name = "{name}"\n'
        f'coordinator_url = "{url}"\n'
        'api_key_file = "node.key"\n'
        f'enrolment_token = "{enrolment_token}"\n'
        f'mpc_ports = "{port}-{port + 19}"\n'
        'work_dir = "state"\n'
        "poll_wait_s = 5\n"
        f'log_format = "{log_format}"\n\n'
        f"[policy]\n{policy}\n\n"
        f'[[datasets]]\nname = "{DATASET}"\nsource = "{source}"\n{where}\n{COLUMNS}\n'
    )
    return config


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("node-network")
    net = Network(root)
    agents: dict[str, Agent] = {}
    try:
        net.start_coordinator(
            accept_timeout_s=ACCEPT_TIMEOUT_S,
            query_timeout_s=QUERY_TIMEOUT_S,
            sweep_interval_s=0.2,
            long_poll_max_s=5,
        )
        admin = TesseraClient(net.url)
        admin.login("admin", net.admin_password)
        specs = [
            ("node-a", "csv", "min_count = 5\ndp_epsilon_budget = 2.0", cohort(300, 1)),
            ("node-b", "parquet", "min_count = 5", cohort(200, 2)),
            ("node-c", "sql", "min_count = 8", cohort(150, 3)),
            ("node-d", "csv", 'min_count = 5\nallowed_statistics = ["count"]', cohort(120, 4)),
        ]
        orgs, keys, frames = {}, {}, {}
        work_dirs: dict[str, Path] = {}
        for name, source, policy, frame in specs:
            org = admin.create_organisation(f"Hospital {name[-1].upper()}")
            orgs[name] = org["id"]
            node = admin.create_node(name, org["id"])
            keys[name] = node["api_key"]
            frames[name] = frame
            config = write_node(
                root,
                name,
                net.url,
                keys[name],
                frame,
                source,
                policy,
                port=free_port_block(20),
                log_format="json" if name == "node-c" else "text",
                enrolment_token=node["enrolment_token"],
            )
            work_dirs[name] = root / name / "state"
            introduce(work_dirs)  # its key, and trust with the nodes before it
            agents[name] = Agent(name, config, root / f"{name}.log")
            agents[name].start()
        for agent in agents.values():
            agent.wait_for("registered with")
        admin.create_user("rita", "rita-password", role="researcher")
        study = admin.create_study(
            "pilot",
            organisation_ids=[orgs[n] for n in ("node-a", "node-b", "node-c")],
            datasets=[DATASET],
            members=["rita"],
        )
        restricted = admin.create_study(
            "restricted",
            organisation_ids=[orgs[n] for n in ("node-a", "node-b", "node-d")],
            datasets=[DATASET],
            members=["rita"],
        )
        researcher = TesseraClient(net.url)
        researcher.login("rita", "rita-password")
        yield World(net, researcher, study["id"], restricted["id"], agents, frames, keys)
    finally:
        codes = {name: agent.stop() for name, agent in agents.items()}
        net.stop()
    assert all(code == 0 for code in codes.values()), f"agents exit codes: {codes}"


def free_port_block(size: int) -> int:
    import socket
    from contextlib import closing

    for _ in range(100):
        with closing(socket.socket()) as s:
            s.bind(("127.0.0.1", 0))
            low = s.getsockname()[1]
        if low + size <= 65535:
            return low
    raise RuntimeError("no free port block")


def test_pooled_count_and_mean_equal_pandas_on_the_pooled_rows(world: World) -> None:
    pooled = world.pooled("node-a", "node-b", "node-c")

    query: dict[str, Any] = {"statistic": "count", "where": [["sex", "==", "F"]]}
    count = world.run(query)
    assert count["status"] == "succeeded", count
    assert count["result"] == world.reference(query, "node-a", "node-b", "node-c")
    expected = int((pooled["sex"] == "F").sum())
    assert abs(count["result"]["count"] - expected) <= 3  # the cell-key perturbation
    assert count["min_count_applied"] == 8  # node-c's floor: the largest of all parties

    query = {"statistic": "mean", "column": "weight", "where": [["age", ">=", 5]]}
    mean = world.run(query)
    assert mean["status"] == "succeeded", mean
    assert mean["result"] == world.reference(query, "node-a", "node-b", "node-c")
    older = pooled.loc[pooled["age"] >= 5, "weight"]
    assert abs(mean["result"]["n"] - len(older)) <= 3
    # the sum moves by at most magnitude (0.25) * the largest weight and is rounded down to a
    # multiple of 2**-16; the count by at most 3
    low = (older.sum() - 0.25 * older.max() - 2**-16) / (len(older) + 3)
    high = (older.sum() + 0.25 * older.max()) / (len(older) - 3)
    assert low <= mean["result"]["mean"] <= high

    for name in ("node-a", "node-b", "node-c"):
        text = world.agents[name].text()
        assert "mrn" not in text and "PRIVATE KEY" not in text
        assert str(world.frames[name]["mrn"].iloc[0]) not in text
    world.agents["node-c"].wait_for('"event": "task.done"', count=2, timeout=10)
    lines = world.agents["node-c"].text().splitlines()  # log_format = "json"
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(events) >= len(lines) - 2
    done = [e for e in events if e["event"] == "task.done"]
    assert len(done) == 2 and all(e["seconds"] > 0 for e in done)


def test_a_node_enforces_its_own_policy(world: World) -> None:
    with pytest.raises(PolicyDenied, match="node node-d does not allow 'mean' queries"):
        world.submit({"statistic": "mean", "column": "weight"}, world.restricted_study)

    # The coordinator is told the node allows everything: the node still refuses.
    response = httpx.post(
        f"{world.net.url}/api/v1/nodes/me/hello",
        headers={"Authorization": f"Bearer {world.keys['node-d']}"},
        json={"agent_version": "spoofed", "policy": {"min_count": 0}},
    )
    assert response.status_code == 200, response.text
    refused = world.run({"statistic": "mean", "column": "weight"}, world.restricted_study)
    assert refused["status"] == "failed"
    assert refused["error"]["message"] == (
        "node node-d refused: policy does not allow 'mean' queries (allowed: count)"
    )

    allowed = world.run({"statistic": "count"}, world.restricted_study)
    assert allowed["status"] == "succeeded", allowed
    assert allowed["result"] == world.reference(
        {"statistic": "count"}, "node-a", "node-b", "node-d"
    )
    assert abs(allowed["result"]["count"] - len(world.pooled("node-a", "node-b", "node-d"))) <= 3


def test_each_node_reports_its_privacy_budget(world: World) -> None:
    deadline = time.monotonic() + 10
    while True:
        [admissions] = world.researcher.study_budget(world.study)["datasets"]
        nodes = {n["node"]: n for n in admissions["nodes"]}
        if all(n["reported_at"] for n in nodes.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert all(n["reported_at"] for n in nodes.values()), "each ledger is sent at registration"
    assert list(nodes) == ["node-a", "node-b", "node-c"]
    # Nothing spent: basic composition affords a query of the whole epsilon 2; zCDP's limit,
    # epsilon 2 at delta 1e-6, is rho 0.0676, which affords one of epsilon sqrt(2 rho) = 0.368.
    # What is left is the better of the two.
    a = nodes["node-a"]
    assert a["epsilon_limit"] == 2.0
    assert a["rho_limit"] == pytest.approx(float(rho_budget(2.0, None)), rel=1e-9)
    assert a["basic_epsilon_remaining"] == 2.0
    assert a["zcdp_epsilon_remaining"] == pytest.approx(
        largest_epsilon(rho_budget(2.0, None)), rel=1e-9
    )
    assert a["epsilon_remaining"] == max(2.0, a["zcdp_epsilon_remaining"]) == 2.0
    assert nodes["node-b"]["epsilon_limit"] is None and admissions["epsilon_remaining"] == 0.0
    with pytest.raises(PolicyDenied, match="nodes node-b, node-c have no differential-privacy"):
        world.submit({"statistic": "count", "dp": {"epsilon": 0.5}})


def test_a_node_killed_after_accepting_fails_the_query_and_the_restarted_node_serves(
    world: World,
) -> None:
    victim, bystander = world.agents["node-a"], world.agents["node-b"]
    bystander.signal_group(signal.SIGSTOP)  # hold the query open after the victim accepts
    try:
        query = world.submit({"statistic": "count"})
        deadline = time.monotonic() + ACCEPT_TIMEOUT_S
        while True:
            view = world.researcher.get_query(query["id"])
            status = {t["node"]: t["status"] for t in view["tasks"]}
            if status["node-a"] == "accepted" and status["node-c"] == "accepted":
                break
            assert time.monotonic() < deadline, view
            time.sleep(0.05)
        victim.kill()
    finally:
        bystander.signal_group(signal.SIGCONT)
    started = time.monotonic()
    failed = world.researcher.wait_query(query["id"], timeout=QUERY_TIMEOUT_S + 10)
    assert failed["status"] == "failed", failed
    assert failed["error"]["message"], failed
    assert time.monotonic() - started < QUERY_TIMEOUT_S + 5
    assert failed["result"] is None

    victim.log.close()  # type: ignore[union-attr]
    victim.start()
    victim.wait_for("registered with", count=2)
    again = world.run({"statistic": "count"})
    assert again["status"] == "succeeded", again
    assert again["result"] == world.reference({"statistic": "count"}, "node-a", "node-b", "node-c")
    assert abs(again["result"]["count"] - len(world.pooled("node-a", "node-b", "node-c"))) <= 3


def test_agents_ride_out_a_coordinator_restart(world: World) -> None:
    assert world.net.coordinator is not None
    world.net.coordinator.stop()
    time.sleep(1.0)
    for agent in world.agents.values():
        assert agent.alive(), agent.text()[-2000:]
    world.net.start_coordinator()
    for name in ("node-a", "node-b", "node-c"):
        world.agents[name].wait_for("coordinator reachable again", timeout=20)
    query: dict[str, Any] = {"statistic": "count", "where": [["icu", "==", True]]}
    after = world.run(query)
    assert after["status"] == "succeeded", after
    assert after["result"] == world.reference(query, "node-a", "node-b", "node-c")
    pooled = world.pooled("node-a", "node-b", "node-c")
    assert abs(after["result"]["count"] - int(pooled["icu"].sum())) <= 3


def test_each_node_keeps_a_verifiable_audit_trail(world: World) -> None:
    for name in ("node-a", "node-b", "node-c", "node-d"):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli.main",
                "node",
                "audit-verify",
                "--config",
                str(world.agents[name].config),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["ok"] is True
    entries = [
        json.loads(line)
        for line in (world.agents["node-d"].config.parent / "state" / "audit.jsonl")
        .read_text()
        .splitlines()
    ]
    refused = [e for e in entries if e["action"] == "task.refused"]
    assert len(refused) == 1 and refused[0]["statistic"] == "mean"
