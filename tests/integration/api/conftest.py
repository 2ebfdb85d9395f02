"""Real coordinator processes (`tessera coordinator serve`, uvicorn) on SQLite and PostgreSQL,
and node agents played over HTTP with their API keys.

Every test runs once per backend. One coordinator per backend serves most tests (names are
unique per test, so tests share it); a pair of replicas on another database, with short
deadlines, serves the timeout and multi-replica tests.
"""

from __future__ import annotations

import itertools
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tessera.client import TesseraClient

DATASET = "cohort"
SCHEMA: dict[str, Any] = {
    "columns": [
        {"name": "age_months", "type": "integer", "min": 0, "max": 215},
        {"name": "sex", "type": "categorical", "levels": ["F", "M"]},
        {"name": "weight_kg", "type": "float", "min": 0.5, "max": 150},
        {"name": "icu_admission", "type": "boolean"},
    ]
}
RESEARCHER_PASSWORD = "rita-password"
# the tests share one researcher and leave queries pending: the limits are the limits tests'
LIMITS_OFF = {
    "max_concurrent_queries_per_researcher": 10_000,
    "max_queries_per_minute": 100_000,
    "max_concurrent_queries_per_study": 10_000,
    "max_concurrent_synthesis_per_researcher": 10_000,
}
MAIN_SETTINGS = {
    **LIMITS_OFF,
    "accept_timeout_s": 20,
    "query_timeout_s": 40,
    "sweep_interval_s": 1.0,  # its deadlines are long: the replicas test expiry
    "release_max_bytes": 200_000,
}
SHORT_SETTINGS = {
    **LIMITS_OFF,
    "accept_timeout_s": 2,
    "query_timeout_s": 4,
    "sweep_interval_s": 0.2,
    "synthesis_timeout_s": 2,
}


SERVE = [sys.executable, "-m", "cli.main", "coordinator", "serve"]


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- databases ---------------------------------------------------------------------------


@dataclass
class Backend:
    """Makes empty databases of one kind; drops them at the end of the session."""

    name: str
    root: Path
    pg_admin_url: str | None = None
    made: list[str] = field(default_factory=list)

    def new_database(self) -> str:
        label = f"tessera_api_{secrets.token_hex(4)}"
        self.made.append(label)
        if self.pg_admin_url is None:
            return f"sqlite:///{self.root / label}.db"
        import psycopg

        with psycopg.connect(self.pg_admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{label}"')
        host = self.pg_admin_url.split("://", 1)[1].rsplit("/", 1)[0]
        return f"postgresql+psycopg://{host}/{label}"

    def drop_all(self) -> None:
        if self.pg_admin_url is None:
            return
        import psycopg

        with psycopg.connect(self.pg_admin_url, autocommit=True) as conn:
            for label in self.made:
                conn.execute(f'DROP DATABASE IF EXISTS "{label}" WITH (FORCE)')


@pytest.fixture(
    scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    root = tmp_path_factory.mktemp(f"api-{request.param}")
    pg = request.getfixturevalue("pg_server") if request.param == "postgres" else None
    made = Backend(request.param, root, pg)
    try:
        yield made
    finally:
        made.drop_all()


@pytest.fixture(scope="session")
def pg_backend(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """PostgreSQL databases only, for the tests about PostgreSQL itself."""
    made = Backend("postgres", tmp_path_factory.mktemp("api-pg-only"), pg_server)
    try:
        yield made
    finally:
        made.drop_all()


# ---- coordinator processes --------------------------------------------------------------


@dataclass
class Coordinator:
    """One `tessera coordinator serve` process."""

    url: str
    database_url: str
    jwt_secret: str
    admin_password: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_coordinator(
    root: Path,
    database_url: str,
    *,
    jwt_secret: str | None = None,
    admin_password: str | None = None,
    **settings: Any,
) -> Coordinator:
    """Start a coordinator and wait until it is ready (migrated, bootstrap admin created)."""
    port = free_port()
    jwt_secret = jwt_secret or secrets.token_urlsafe(32)
    admin_password = admin_password or secrets.token_urlsafe(12)
    env = {
        **os.environ,
        "TESSERA_DATABASE_URL": database_url,
        "TESSERA_JWT_SECRET": jwt_secret,
        "TESSERA_BOOTSTRAP_ADMIN_USERNAME": "admin",
        "TESSERA_BOOTSTRAP_ADMIN_PASSWORD": admin_password,
        **{f"TESSERA_{k.upper()}": str(v) for k, v in settings.items()},
    }
    log_path = root / f"coordinator-{port}.log"
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            [*SERVE, "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
        )
    made = Coordinator(
        f"http://127.0.0.1:{port}", database_url, jwt_secret, admin_password, popen, log_path
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"the coordinator exited:\n{made.log()[-3000:]}")
        try:
            if httpx.get(f"{made.url}/api/v1/readyz", timeout=1).status_code == 200:
                return made
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    made.stop()
    raise RuntimeError(f"the coordinator did not get ready:\n{made.log()[-3000:]}")


@pytest.fixture(scope="session")
def coordinator(backend: Backend) -> Iterator[Coordinator]:
    """The coordinator most tests share, with comfortable deadlines."""
    made = start_coordinator(backend.root, backend.new_database(), **MAIN_SETTINGS)
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture(scope="session")
def replicas(backend: Backend) -> Iterator[tuple[Coordinator, Coordinator]]:
    """Two replicas of one coordinator (same database, same signing key), short deadlines. On
    SQLite a replica learns of the other's changes only by re-checking, so the re-check is
    short too (the deadlines leave no room for the default 2 s)."""
    url = backend.new_database()
    settings = {**SHORT_SETTINGS, "long_poll_recheck_s": 0.25}
    first = start_coordinator(backend.root, url, **settings)
    try:
        second = start_coordinator(
            backend.root,
            url,
            jwt_secret=first.jwt_secret,
            admin_password=first.admin_password,
            **settings,
        )
    except BaseException:
        first.stop()
        raise
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


# ---- the people and the nodes -----------------------------------------------------------


@dataclass
class FakeNode:
    """Plays a node agent over HTTP (the real agent is tested in tests/integration/node_agent)."""

    name: str
    key: str
    url: str
    http: httpx.Client

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}", **kwargs.pop("headers", {})}
        return self.http.request(method, f"{self.url}/api/v1{path}", headers=headers, **kwargs)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.call(method, path, **kwargs)
        assert response.status_code < 400, response.text
        return response.json()

    def register(self, dataset: str = DATASET, body: dict[str, Any] | None = None) -> None:
        self.ok("PUT", f"/nodes/me/datasets/{dataset}", json=body or SCHEMA)

    def take_task(self, wait: float = 5) -> dict[str, Any]:
        tasks = self.ok("GET", "/nodes/me/tasks", params={"wait": wait})
        assert len(tasks) == 1, tasks
        return tasks[0]  # type: ignore[no-any-return]

    def accept(self, task: dict[str, Any], port: int = 30000) -> Any:
        return self.ok(
            "POST", f"/tasks/{task['id']}/accept", json={"mpc_host": "127.0.0.1", "mpc_port": port}
        )

    def post_result(self, task: dict[str, Any], result: dict[str, Any], min_count: int = 0) -> Any:
        return self.call(
            "POST",
            f"/tasks/{task['id']}/result",
            json={"result": result, "min_count_applied": min_count, "seconds": 0.1},
        )


@dataclass
class Setup:
    """Three hospitals with a node each (dataset registered), a study with the researcher."""

    url: str
    http: httpx.Client
    admin: TesseraClient
    researcher: TesseraClient
    researcher_name: str
    nodes: list[FakeNode]
    organisation_ids: list[int]
    study_id: int
    n: int

    def submit(self, query: dict[str, Any], via: TesseraClient | None = None) -> dict[str, Any]:
        return (via or self.researcher).submit_query(self.study_id, {"dataset": DATASET, **query})

    def accept_all(self) -> list[dict[str, Any]]:
        tasks = [node.take_task() for node in self.nodes]
        for i, (node, task) in enumerate(zip(self.nodes, tasks, strict=True)):
            node.accept(task, 30000 + i)
        return tasks


_counter = itertools.count()


def logged_in(url: str, username: str, password: str) -> TesseraClient:
    client = TesseraClient(url)
    client.login(username, password)
    return client


def build(url: str, people: People) -> Setup:
    """Three organisations with a node each, a study of them with the researcher in it; names
    are unique per test, so that tests can share a coordinator."""
    admin, http = people.admin, people.http
    n = next(_counter)
    nodes, org_ids = [], []
    for i in range(3):
        org = admin.create_organisation(f"Hospital {n}-{i}")
        org_ids.append(org["id"])
        created = admin.create_node(f"node-{n}-{i}", org["id"])
        node = FakeNode(created["name"], created["api_key"], url, http)
        node.ok("POST", "/nodes/me/hello", json={"agent_version": "test", "policy": {}})
        node.register()
        nodes.append(node)
    name = people.researcher_name
    study = admin.create_study(
        f"pilot {n}", organisation_ids=org_ids, datasets=[DATASET], members=[name]
    )
    return Setup(url, http, admin, people.researcher, name, nodes, org_ids, study["id"], n)


@dataclass
class People:
    admin: TesseraClient
    researcher: TesseraClient
    researcher_name: str
    http: httpx.Client  # one connection pool for the played nodes (a new one costs ~50 ms)


@contextmanager
def _people(url: str, admin_password: str) -> Iterator[People]:
    admin = logged_in(url, "admin", admin_password)
    name = f"rita{secrets.token_hex(3)}"
    admin.create_user(name, RESEARCHER_PASSWORD, role="researcher")
    researcher = logged_in(url, name, RESEARCHER_PASSWORD)
    with httpx.Client(timeout=40) as http:
        try:
            yield People(admin, researcher, name, http)
        finally:
            admin.close()
            researcher.close()


@pytest.fixture(scope="session")
def people(coordinator: Coordinator) -> Iterator[People]:
    """The administrator and a researcher, logged in once (argon2 is slow on purpose)."""
    with _people(coordinator.url, coordinator.admin_password) as made:
        yield made


@pytest.fixture
def setup(coordinator: Coordinator, people: People) -> Setup:
    return build(coordinator.url, people)


@pytest.fixture(scope="session")
def replica_people(replicas: tuple[Coordinator, Coordinator]) -> Iterator[People]:
    with _people(replicas[0].url, replicas[0].admin_password) as made:
        yield made


@pytest.fixture
def replica_setup(replicas: tuple[Coordinator, Coordinator], replica_people: People) -> Setup:
    return build(replicas[0].url, replica_people)
