"""Schemathesis against a real coordinator (uvicorn on PostgreSQL, else SQLite): every operation of
`/openapi.json`, with a handful of generated requests each, valid ones and invalid ones, sent
as the role the operation is for (an administrator, a researcher, a node's API key).

Checked on every answer: no 5xx; the status is one the operation documents; the content type
and the body fit what the spec documents for that status (the error envelope included). The
ids a fuzzer likes best (1, small numbers) name real resources here: an organisation, its
node, a study with the researcher in it and the node's dataset, so that generated requests
reach the services and not only the 404s.

Generation is bounded (`EXAMPLES` each way per operation, derandomized, no shrinking, no
example database) to keep this in `make test`; the counts are printed (`-s`) and docs/api.md
records the last run's.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup

from tessera.client import TesseraClient

from .conftest import DATASET, SCHEMA, Backend, Coordinator, start_coordinator

EXAMPLES = 4  # per operation and mode (valid, invalid)
NODE_PREFIXES = ("/api/v1/nodes/me", "/api/v1/tasks/", "/api/v1/synthesis-jobs/")
ADMIN_OPERATIONS = frozenset(
    {
        "createUser",
        "listUsers",
        "disableUser",
        "enableUser",
        "createOrganisation",
        "createNode",
        "listNodes",
        "rotateNodeKey",
        "resetNodeIdentity",
        "createStudy",
        "addStudyMember",
        "addStudyOrganisation",
        "addStudyDataset",
        "metrics",
        "listAuditEvents",
        "verifyAudit",
        "listNodeAuditHeads",
    }
)
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.response_headers_conformance,
]
RESEARCHER_PASSWORD = "fuzz-researcher-password"


@dataclass
class Credentials:
    """Who calls: renewed when a generated request logs one out, disables them or rotates the
    node's key (the fuzzer may well do each of these to the ids it is given)."""

    url: str
    admin_password: str
    researcher: str
    researcher_id: int
    node_key: str
    admin_token: str = ""
    researcher_token: str = ""

    def login(self, username: str, password: str) -> str:
        with TesseraClient(self.url) as client:
            client.login(username, password)
            assert client.token is not None
            return client.token

    def renew(self) -> None:
        self.admin_token = self.login("admin", self.admin_password)
        self.researcher_token = self.login(self.researcher, RESEARCHER_PASSWORD)

    def headers(self, operation: Any) -> dict[str, str]:
        path, operation_id = operation.path, operation.definition.raw.get("operationId")
        if path.startswith(NODE_PREFIXES):
            token = self.node_key
        elif operation_id in ADMIN_OPERATIONS:
            token = self.admin_token
        else:
            token = self.researcher_token
        return {"Authorization": f"Bearer {token}"}

    def after(self, operation_id: str, response: requests.Response) -> None:
        if response.status_code >= 400:
            return
        if operation_id == "rotateNodeKey":
            self.node_key = response.json()["api_key"]
        elif operation_id in ("logout", "disableUser", "changePassword"):
            with httpx.Client(base_url=f"{self.url}/api/v1") as http:
                http.post(
                    f"/users/{self.researcher_id}/enable",
                    headers={"Authorization": f"Bearer {self.login('admin', self.admin_password)}"},
                )
            self.renew()


@dataclass
class Tally:
    operations: int = 0
    cases: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def populate(coordinator: Coordinator) -> Credentials:
    """Id 1 of each kind is real: an organisation, its node (hello said, dataset registered), a
    study with the researcher, the organisation and the dataset."""
    with TesseraClient(coordinator.url) as admin:
        admin.login("admin", coordinator.admin_password)
        name = f"fuzz{secrets.token_hex(3)}"
        user = admin.create_user(name, RESEARCHER_PASSWORD, role="researcher")
        org = admin.create_organisation("Fuzzed hospital")
        node = admin.create_node("fuzzed-node", org["id"])
        key = node["api_key"]
        with httpx.Client(
            base_url=f"{coordinator.url}/api/v1", headers={"Authorization": f"Bearer {key}"}
        ) as http:
            assert http.post("/nodes/me/hello", json={"agent_version": "fuzz"}).status_code == 200
            assert http.put(f"/nodes/me/datasets/{DATASET}", json=SCHEMA).status_code == 200
        admin.create_study(
            "fuzzed study", organisation_ids=[org["id"]], datasets=[DATASET], members=[name]
        )
    made = Credentials(coordinator.url, coordinator.admin_password, name, user["id"], key)
    made.renew()
    return made


@pytest.fixture(scope="module")
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """PostgreSQL (where an id beyond its integer range or a NUL byte once answered 500), or
    SQLite where no PostgreSQL answers outside CI: one run, to keep `make test` short."""
    root = tmp_path_factory.mktemp("fuzz")
    try:
        made = Backend("postgres", root, request.getfixturevalue("pg_server"))
    except pytest.skip.Exception:
        made = Backend("sqlite", root)
    try:
        yield made
    finally:
        made.drop_all()


@pytest.fixture
def fuzzed(backend: Backend) -> Iterator[Coordinator]:
    """A coordinator of its own: the fuzzer disables, rotates and creates as it pleases."""
    made = start_coordinator(
        backend.root,
        backend.new_database(),
        login_max_failures=10_000,
        login_max_failures_per_address=10_000,
        long_poll_max_s=0.2,
    )
    try:
        yield made
    finally:
        made.stop()


def fuzz(coordinator: Coordinator, credentials: Credentials) -> Tally:
    schema = schemathesis.openapi.from_url(f"{coordinator.url}/openapi.json")
    tally = Tally()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            tally.operations += 1
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    fuzz_operation(coordinator.url, session, credentials, operation, mode, tally)
                except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                    assert mode == GenerationMode.NEGATIVE, operation.path
    return tally


def fuzz_operation(
    url: str,
    session: requests.Session,
    credentials: Credentials,
    operation: Any,
    mode: GenerationMode,
    tally: Tally,
) -> None:
    """`EXAMPLES` generated requests to one operation; each check that fails is tallied."""
    operation_id = operation.definition.raw["operationId"]
    label = f"{operation.method.upper()} {operation.path} ({mode.value})"

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(
            base_url=url, session=session, headers=credentials.headers(operation), timeout=30
        )
        tally.cases += 1
        tally.by_status[response.status_code] = tally.by_status.get(response.status_code, 0) + 1
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as exc:  # checks failed: record them, keep fuzzing
            tally.failures.extend(
                f"{label} -> {response.status_code}: {failure.title}: {failure.message[:500]}"
                for failure in exc.exceptions
            )
        credentials.after(operation_id, response)

    run()


def test_schemathesis_finds_nothing(fuzzed: Coordinator, backend: Backend) -> None:
    tally = fuzz(fuzzed, populate(fuzzed))
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(tally.by_status.items()))
    print(
        f"\nschemathesis on {backend.name}: {tally.operations} operations, {tally.cases} cases "
        f"({statuses}), {len(tally.failures)} failures"
    )
    assert tally.operations >= 60 and tally.cases >= tally.operations * EXAMPLES
    assert not tally.failures, "\n\n".join(tally.failures[:15])
    assert not any(status >= 500 for status in tally.by_status)
    assert "Traceback" not in fuzzed.log()
