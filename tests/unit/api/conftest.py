"""The coordinator's service rules, tested directly: no process, no HTTP.

Each test gets its own in-memory SQLite database holding the schema the migrations build (they
run once per session; each test starts from a copy), a `FakeClock` that the services read
through the session (`api.clock`), and `make`, a factory of the rows a rule needs:
organisations, nodes with their published policies and registered datasets, a study, users.
Helpers come as fixtures: tests import no conftest.

Users are inserted as rows with an unusable password hash: argon2 is slow on purpose.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.clock import FakeClock
from api.db import Database
from api.migrate import upgrade
from api.models import AuditEvent, Node, Query, Study, Task, User
from api.services import network, queries, studies
from api.settings import CoordinatorSettings
from tessera.schemas import DatasetSchema, NodeHello, NodePolicySummary, TaskAccept

DATASET = "cohort"
SCHEMA: dict[str, Any] = {
    "columns": [
        {"name": "age", "type": "integer", "min": 0, "max": 120},
        {"name": "sex", "type": "categorical", "levels": ["F", "M"]},
        {"name": "weight", "type": "float", "min": 0.5, "max": 200},
        {"name": "icu", "type": "boolean"},
    ]
}
ACCEPT_TIMEOUT_S = 30
QUERY_TIMEOUT_S = 120
SYNTHESIS_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def migrated() -> Iterator[sqlite3.Connection]:
    """An in-memory database brought to the newest schema by the migrations (the template)."""
    database = Database("sqlite://")
    upgrade(database.engine)
    raw = database.engine.raw_connection()
    try:
        yield raw.driver_connection  # type: ignore[misc]
    finally:
        raw.close()
        database.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def database(migrated: sqlite3.Connection, clock: FakeClock) -> Iterator[Database]:
    """A fresh in-memory database (a copy of the migrated template) on the fake clock."""
    database = Database("sqlite://", clock=clock)
    raw = database.engine.raw_connection()
    migrated.backup(raw.driver_connection)  # type: ignore[arg-type]
    raw.close()  # back to the pool: the one connection every session shares
    yield database
    database.dispose()


@pytest.fixture
def db(database: Database) -> Iterator[Session]:
    """One session for the whole test (the services flush; nothing needs a commit)."""
    session = database.sessions()
    try:
        yield session
    finally:
        session.close()


@pytest.fixture
def settings() -> CoordinatorSettings:
    return CoordinatorSettings(
        accept_timeout_s=ACCEPT_TIMEOUT_S,
        query_timeout_s=QUERY_TIMEOUT_S,
        synthesis_timeout_s=SYNTHESIS_TIMEOUT_S,
    )


@dataclass
class Network:
    """A study whose organisations each run one node that registered `cohort`."""

    study: Study
    researcher: User
    nodes: list[Node]


class Factory:
    """Rows for the rules to act on, made through the services where they are audited."""

    schema = SCHEMA
    dataset = DATASET

    def __init__(self, db: Session, settings: CoordinatorSettings) -> None:
        self.db = db
        self.settings = settings

    # ---- network and accounts ----

    def organisation(self, name: str) -> int:
        return network.create_organisation(self.db, name, "user:admin").id

    def node(
        self,
        name: str,
        organisation_id: int | None = None,
        policy: dict[str, Any] | None = None,
        datasets: dict[str, dict[str, Any]] | None = None,
    ) -> Node:
        """A node of its own organisation (unless given) that said hello with `policy` and
        registered `datasets` (default: `cohort` with `SCHEMA`)."""
        org_id = organisation_id or self.organisation(f"org-{name}")
        node, _key = network.create_node(self.db, name, org_id, "user:admin")
        hello = NodeHello(agent_version="test", policy=NodePolicySummary(**(policy or {})))
        network.hello(self.db, node, hello)
        for dataset, schema in (datasets if datasets is not None else {DATASET: SCHEMA}).items():
            network.register_dataset(self.db, node, dataset, DatasetSchema.model_validate(schema))
        self.db.flush()
        return node

    def user(self, username: str, role: str = "researcher") -> User:
        user = User(username=username, password_hash="!unusable", role=role)
        self.db.add(user)
        self.db.flush()
        return user

    def study(
        self, name: str, nodes: list[Node], members: list[User], datasets: tuple[str, ...] = ()
    ) -> Study:
        orgs = list(dict.fromkeys(n.organisation_id for n in nodes))
        return studies.create_study(
            self.db,
            name,
            "",
            orgs,
            list(datasets or (DATASET,)),
            [m.id for m in members],
            "user:admin",
        )

    def network(
        self, policies: list[dict[str, Any] | None] | None = None, schemas: list[Any] | None = None
    ) -> Network:
        """Nodes h1, h2, ... (one per policy; three by default), each registering `cohort`
        (with its own schema where `schemas` gives one), in study `s` with researcher `rita`."""
        policies = policies if policies is not None else [None, None, None]
        schemas = schemas or [SCHEMA] * len(policies)
        nodes = [
            self.node(f"h{i + 1}", policy=policy, datasets={DATASET: schema})
            for i, (policy, schema) in enumerate(zip(policies, schemas, strict=True))
        ]
        researcher = self.user("rita")
        return Network(self.study("s", nodes, [researcher]), researcher, nodes)

    # ---- queries ----

    def submit(self, net: Network, raw: dict[str, Any] | None = None) -> Query:
        body = {"statistic": "count", "dataset": DATASET, **(raw or {})}
        return queries.submit(self.db, net.study, net.researcher, body, self.settings)

    def task(self, query: Query, node: Node) -> Task:
        return next(t for t in query.tasks if t.node_id == node.id)

    def accept(self, query: Query, node: Node) -> None:
        port = 21000 + node.id
        body = TaskAccept(mpc_host=f"{node.name}.example", mpc_port=port)
        queries.accept(self.db, node, self.task(query, node).id, body)

    def running(self, net: Network, raw: dict[str, Any] | None = None) -> Query:
        """A submitted query that every node accepted."""
        query = self.submit(net, raw)
        for node in net.nodes:
            self.accept(query, node)
        assert query.status == "running"
        return query

    # ---- the audit log ----

    def events(self, action: str | None = None) -> list[AuditEvent]:
        stmt = select(AuditEvent).order_by(AuditEvent.id)
        if action is not None:
            stmt = stmt.where(AuditEvent.action == action)
        return list(self.db.scalars(stmt))

    def actions(self, subject: str) -> list[str]:
        """The actions recorded about `subject` (e.g. 'query:1'), oldest first."""
        stmt = select(AuditEvent.action).where(AuditEvent.subject == subject)
        return list(self.db.scalars(stmt.order_by(AuditEvent.id)))


@pytest.fixture
def make(db: Session, settings: CoordinatorSettings) -> Factory:
    return Factory(db, settings)


@pytest.fixture
def net(make: Factory) -> Network:
    """Three nodes that allow everything (no DP, no synthesis), a study, a researcher."""
    return make.network()
