"""A network for fault tests: a coordinator (SQLite or a fresh PostgreSQL database) and three
node agents with the demo cohort, each its own OS process, optionally reaching the coordinator
through a `LossyProxy`; a study of the three and a logged-in researcher and administrator."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from demo.cohort import HOSPITALS, cohort, schema
from demo.network import DataSource, Network, NodeSpec
from tessera.client import TesseraClient

from .proxy import LossyProxy

DATASET = "cohort"
NODES = ("node-a", "node-b", "node-c")
QUERY_TIMEOUT_S = 30
ACCEPT_TIMEOUT_S = 20


@dataclass
class World:
    net: Network
    admin: TesseraClient
    researcher: TesseraClient
    study: int
    organisations: dict[str, int]
    proxy: LossyProxy | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def submit(self, query: dict[str, Any], study: int | None = None) -> dict[str, Any]:
        return self.researcher.submit_query(study or self.study, {"dataset": DATASET, **query})

    def run(self, query: dict[str, Any], study: int | None = None) -> dict[str, Any]:
        submitted = self.submit(query, study)
        return self.researcher.wait_query(submitted["id"], timeout=QUERY_TIMEOUT_S + 15)

    def audit(self, action: str, subject: str) -> list[dict[str, Any]]:
        return [e for e in self.admin.audit(action) if e["subject"] == subject]

    def alive(self) -> None:
        for proc in self.net.nodes.values():
            assert proc.alive(), proc.tail(40)

    def log(self, node: str) -> str:
        return self.net.nodes[node].log_path.read_text(errors="replace")


def node_specs(root: Path, synthesis: dict[str, Any] | None = None) -> list[NodeSpec]:
    specs = []
    for name, hospital in zip(NODES, HOSPITALS, strict=False):
        path = root / f"{name}.csv"
        cohort(hospital).to_csv(path, index=False)
        rules = synthesis if name == "node-a" else None
        specs.append(
            NodeSpec(
                name,
                f"Hospital {name[-1].upper()}",
                [DataSource(DATASET, "csv", schema(), path=str(path))],
                synthesis=rules,
            )
        )
    return specs


@contextmanager
def network(
    root: Path,
    database_url: str | None = None,
    lossy: bool = False,
    specs: list[NodeSpec] | None = None,
    **settings: Any,
) -> Iterator[World]:
    """Start the network (and the proxy, with `lossy`), wait until every node registered;
    stop everything at the end."""
    net = Network(root)
    proxy: LossyProxy | None = None
    try:
        net.start_coordinator(
            database_url=database_url,
            ready_timeout_s=90,  # a loaded CI machine starts it slowly
            accept_timeout_s=ACCEPT_TIMEOUT_S,
            query_timeout_s=QUERY_TIMEOUT_S,
            sweep_interval_s=0.2,
            long_poll_max_s=5,
            **settings,
        )
        if lossy:
            proxy = LossyProxy(net.port).start()
        admin = TesseraClient(net.url)
        admin.login("admin", net.admin_password)
        organisations: dict[str, int] = {}
        for spec in specs or node_specs(root):
            org = admin.create_organisation(spec.organisation)
            organisations[spec.name] = org["id"]
            node = admin.create_node(spec.name, org["id"])
            net.start_node(
                spec,
                node["api_key"],
                node["enrolment_token"],
                coordinator_url=proxy.url if proxy else None,
            )
        admin.create_user("rita", "rita-password", role="researcher")
        study = admin.create_study(
            "faults",
            organisation_ids=[organisations[n] for n in NODES],
            datasets=[DATASET],
            members=["rita"],
        )
        researcher = TesseraClient(net.url)
        researcher.login("rita", "rita-password")
        world = World(net, admin, researcher, study["id"], organisations, proxy)
        deadline = time.monotonic() + 60
        while len(researcher.study_datasets(study["id"])[0]["nodes"]) < len(NODES):
            assert time.monotonic() < deadline, "the nodes did not register"
            world.alive()
            time.sleep(0.2)
        yield world
    finally:
        net.stop()
        if proxy is not None:
            proxy.stop()


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    """Poll `condition()` until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/v1/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
