"""A real coordinator process (uvicorn) per test, and nodes played over HTTP."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tessera.client import TesseraClient
from tessera.demo.cohort import schema
from tessera.demo.network import Network

DATASET = "cohort"


@dataclass
class FakeNode:
    """Plays a node agent over HTTP (the real agent is tested in tests/integration/node_agent)."""

    name: str
    key: str
    url: str

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx.request(
            method, f"{self.url}/api/v1{path}", headers=headers, timeout=40, **kwargs
        )

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.call(method, path, **kwargs)
        assert response.status_code < 400, response.text
        return response.json()

    def register(self, dataset: str = DATASET, body: dict[str, Any] | None = None) -> None:
        body = body or schema().model_dump(mode="json", exclude_none=True)
        self.ok("PUT", f"/nodes/me/datasets/{dataset}", json=body)


@dataclass
class Setup:
    net: Network
    admin: TesseraClient
    researcher: TesseraClient
    nodes: list[FakeNode]
    study_id: int
    n: int

    @property
    def url(self) -> str:
        return self.net.url

    def submit(self, query: dict[str, Any]) -> dict[str, Any]:
        return self.researcher.submit_query(self.study_id, {"dataset": DATASET, **query})


@pytest.fixture(scope="module")
def coordinator(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """One coordinator process per module and database; each test builds its own study."""
    net = Network(tmp_path_factory.mktemp("coordinator"))
    net.start_coordinator(database_url, accept_timeout_s=3, query_timeout_s=6, sweep_interval_s=0.2)
    try:
        yield net
    finally:
        net.stop()


_counter = itertools.count()


@pytest.fixture
def setup(coordinator: Network) -> Setup:
    """Three organisations with a node each (registered), a researcher member of a study; names
    are unique per test so that tests share one coordinator."""
    n = next(_counter)
    admin = TesseraClient(coordinator.url)
    admin.login("admin", coordinator.admin_password)
    nodes, org_ids = [], []
    for i in range(3):
        org = admin.create_organisation(f"Hospital {n}-{i}")
        org_ids.append(org["id"])
        created = admin.create_node(f"node-{n}-{i}", org["id"])
        node = FakeNode(created["name"], created["api_key"], coordinator.url)
        node.ok(
            "POST", "/nodes/me/hello", json={"agent_version": "test", "policy": {"min_count": 0}}
        )
        node.register()
        nodes.append(node)
    admin.create_user(f"rita{n}", "rita-password", role="researcher")
    study = admin.create_study(
        f"pilot {n}", organisation_ids=org_ids, datasets=[DATASET], members=[f"rita{n}"]
    )
    researcher = TesseraClient(coordinator.url)
    researcher.login(f"rita{n}", "rita-password")
    return Setup(coordinator, admin, researcher, nodes, study["id"], n)
