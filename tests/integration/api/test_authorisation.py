"""The authorisation matrix: every operation of the coordinator's API × every kind of caller.

`MATRIX` names, for each operation of the OpenAPI document, who may call it:

- `public`: anyone, even without credentials (health, readiness, the coordinator's public
  key, logging in and refreshing);
- `user`: any logged-in user (not a node);
- `admin`: administrators only;
- `study`: the study's members and administrators; another researcher gets 404 (the study's
  existence is not revealed);
- `node`: any node agent, with its API key (not a user);
- `task`: the node whose task it is; another node gets 404.

Callers: no credentials, a researcher who is a member of the study, a researcher who is not,
an administrator, the node whose task it is, and another node of the study. Each operation is
called by each caller with a well-formed request on real objects (the study, its query, a
task of its own per task operation, a user and a node to disable and rotate), so that a denial
is the authorisation's and not a validation error. An operation that is not in the matrix, or
an entry for an operation that no longer exists, fails the test: a new route is added to the
matrix with the rule it keeps, or it does not land.

Allowed means: not 401, not 403 `forbidden`, and not 404 where the objects exist. Denied
means 401 without credentials; otherwise 403 `forbidden`, or 404 under the `study` and `task`
rules (the object's existence is not revealed). A 403 with another code (`policy_denied`, a
node's published policy) or a 409 is the route's own rule, after authorisation. Synthesis
requests, releases and jobs are named by ids that do not exist: for them the matrix checks who
gets past authentication and roles (their ownership rules are tested in
test_synthesis_flow.py and tests/adversarial/test_stewards.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

DATASET = "cohort"  # as the conftest's played nodes register it
SCHEMA: dict[str, Any] = {
    "columns": [
        {"name": "age_months", "type": "integer", "min": 0, "max": 215},
        {"name": "sex", "type": "categorical", "levels": ["F", "M"]},
        {"name": "weight_kg", "type": "float", "min": 0.5, "max": 150},
        {"name": "icu_admission", "type": "boolean"},
    ]
}

MATRIX: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "public",
    ("GET", "/readyz"): "public",
    ("GET", "/metrics"): "admin",
    ("GET", "/audit"): "admin",
    ("GET", "/audit/verify"): "admin",
    ("GET", "/audit/node-heads"): "admin",
    ("GET", "/coordinator/key"): "public",
    ("POST", "/auth/token"): "public",
    ("POST", "/auth/refresh"): "public",
    ("POST", "/auth/logout"): "user",
    ("POST", "/users/me/password"): "user",
    ("GET", "/users/me"): "user",
    ("POST", "/users"): "admin",
    ("GET", "/users"): "admin",
    ("POST", "/users/{user_id}/disable"): "admin",
    ("POST", "/users/{user_id}/enable"): "admin",
    ("POST", "/organisations"): "admin",
    ("GET", "/organisations"): "user",
    ("POST", "/nodes"): "admin",
    ("GET", "/nodes"): "admin",
    ("POST", "/nodes/{node_id}/rotate-key"): "admin",
    ("POST", "/nodes/{node_id}/reset-identity"): "admin",
    ("GET", "/nodes/me"): "node",
    ("POST", "/nodes/me/hello"): "node",
    ("PUT", "/nodes/me/datasets/{name}"): "node",
    ("PUT", "/nodes/me/budget"): "node",
    ("GET", "/nodes/me/tasks"): "node",
    ("POST", "/tasks/{task_id}/accept"): "task",
    ("GET", "/tasks/{task_id}/start"): "task",
    ("POST", "/tasks/{task_id}/reject"): "task",
    ("POST", "/tasks/{task_id}/fail"): "task",
    ("POST", "/tasks/{task_id}/progress"): "task",
    ("POST", "/tasks/{task_id}/result"): "task",
    ("POST", "/studies"): "admin",
    ("GET", "/studies"): "user",
    ("GET", "/studies/{study_id}"): "study",
    ("POST", "/studies/{study_id}/members"): "admin",
    ("POST", "/studies/{study_id}/organisations"): "admin",
    ("POST", "/studies/{study_id}/datasets"): "admin",
    ("GET", "/studies/{study_id}/datasets"): "study",
    ("GET", "/studies/{study_id}/budget"): "study",
    ("POST", "/studies/{study_id}/queries"): "study",
    ("GET", "/studies/{study_id}/queries"): "study",
    ("POST", "/studies/{study_id}/queries/dry-run"): "study",
    ("GET", "/queries/{query_id}"): "study",
    ("POST", "/studies/{study_id}/synthesis"): "study",
    ("GET", "/studies/{study_id}/synthesis"): "study",
    ("GET", "/synthesis/{request_id}"): "study",
    ("GET", "/studies/{study_id}/releases"): "study",
    ("GET", "/releases/{release_id}"): "study",
    ("GET", "/releases/{release_id}/data"): "study",
    ("GET", "/releases/{release_id}/report"): "study",
    ("GET", "/nodes/me/synthesis-jobs"): "node",
    ("POST", "/synthesis-jobs/{job_id}/accept"): "node",
    ("GET", "/synthesis-jobs/{job_id}/start"): "node",
    ("POST", "/synthesis-jobs/{job_id}/refuse"): "node",
    ("POST", "/synthesis-jobs/{job_id}/progress"): "node",
    ("POST", "/synthesis-jobs/{job_id}/candidate"): "node",
    ("POST", "/synthesis-jobs/{job_id}/reject"): "node",
    ("POST", "/synthesis-jobs/{job_id}/fail"): "node",
    ("POST", "/synthesis-jobs/{job_id}/release"): "node",
}

CALLERS = ("anonymous", "member", "outsider", "admin", "node", "stranger")
USERS = ("member", "outsider", "admin")
HIDING = ("study", "task")  # rules that answer 404 to a caller who may not see the object
NODES = ("node", "stranger")
MISSING = 999_999  # a synthesis request, release or job that does not exist

# a well-formed body per operation (so a denial cannot be a validation error)
QUERY = {"statistic": "count", "dataset": DATASET}
BODIES: dict[tuple[str, str], Any] = {
    # the public routes' own credentials are in the body: an incomplete one (422) shows the
    # route let the caller in, whoever they are (wrong credentials would be its 401)
    ("POST", "/auth/token"): None,  # no form fields
    ("POST", "/auth/refresh"): {},
    # too short a new password: a user gets 422 (after authorisation), counting no failure
    ("POST", "/users/me/password"): {"old_password": "x" * 8, "new_password": "y"},
    ("POST", "/users"): {"username": "never", "password": "p" * 12, "role": "researcher"},
    ("POST", "/organisations"): {"name": "never"},
    ("POST", "/nodes"): {"name": "never", "organisation_id": "{organisation_id}"},
    ("POST", "/nodes/me/hello"): {"agent_version": "test", "policy": {}},
    ("PUT", "/nodes/me/budget"): {"entries": []},
    ("POST", "/tasks/{task_id}/accept"): {"mpc_host": "127.0.0.1", "mpc_port": 30000},
    ("POST", "/tasks/{task_id}/reject"): {"reason": "not today"},
    ("POST", "/tasks/{task_id}/fail"): {"code": "node_error", "message": "a test"},
    ("POST", "/tasks/{task_id}/progress"): {"stage": "mpc", "message": ""},
    ("POST", "/tasks/{task_id}/result"): {"result": {}, "min_count_applied": 0, "seconds": 0.1},
    ("POST", "/studies"): {"name": "never", "organisation_ids": [], "datasets": []},
    ("POST", "/studies/{study_id}/members"): {"user": "never"},
    ("POST", "/studies/{study_id}/organisations"): {"organisation_id": "{organisation_id}"},
    ("POST", "/studies/{study_id}/datasets"): {"name": DATASET},
    ("POST", "/studies/{study_id}/queries"): QUERY,
    ("POST", "/studies/{study_id}/queries/dry-run"): QUERY,
    ("POST", "/studies/{study_id}/synthesis"): {
        "dataset": DATASET,
        "generator": "cart",
        "rows": 10,
    },
}


@dataclass
class World:
    http: httpx.Client
    url: str
    setup: Any
    tokens: dict[str, str | None]
    ids: dict[str, int]
    new_task: Callable[[], int]


def _login(http: httpx.Client, url: str, username: str, password: str) -> str:
    answer = http.post(
        f"{url}/api/v1/auth/token", data={"username": username, "password": password}
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


@pytest.fixture
def world(coordinator: Any, people: Any, setup: Any) -> World:
    http, url, admin = people.http, coordinator.url, people.admin
    outsider = f"olga{secrets.token_hex(3)}"
    admin.create_user(outsider, "olga-password", role="researcher")
    victim = admin.create_user(f"victim{secrets.token_hex(3)}", "victim-password")
    spare = admin.create_node(f"spare-{setup.n}", setup.organisation_ids[0])
    tokens: dict[str, str | None] = {
        "anonymous": None,
        # their own sessions: logging one out ends no other test's
        "member": _login(http, url, setup.researcher_name, "rita-password"),
        "outsider": _login(http, url, outsider, "olga-password"),
        "admin": _login(http, url, "admin", coordinator.admin_password),
        "node": setup.nodes[0].key,
        "stranger": setup.nodes[1].key,
    }
    query = setup.submit(QUERY)

    def new_task() -> int:
        """A fresh query, and node 0's task of it (each task operation gets its own)."""
        setup.submit(QUERY)
        return int(setup.nodes[0].take_task()["id"])

    setup.nodes[0].take_task()  # the first query's task, out of the way
    ids = {
        "study_id": setup.study_id,
        "query_id": int(query["id"]),
        "user_id": int(victim["id"]),
        "node_id": int(spare["id"]),
        "organisation_id": setup.organisation_ids[0],
        "request_id": MISSING,
        "release_id": MISSING,
        "job_id": MISSING,
    }
    return World(http, url, setup, tokens, ids, new_task)


def _operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path.removeprefix("/api/v1"))
        for path, ops in spec["paths"].items()
        for method in ops
    }


def test_every_operation_has_an_entry_and_every_entry_an_operation(coordinator: Any) -> None:
    spec = httpx.get(f"{coordinator.url}/openapi.json").json()
    found = _operations(spec)
    assert not found - set(MATRIX), (
        f"operations without an authorisation rule: {found - set(MATRIX)}"
    )
    assert not set(MATRIX) - found, f"rules for operations that do not exist: {set(MATRIX) - found}"
    assert len(MATRIX) == 61


def _expected(rule: str, caller: str) -> bool:
    return {
        "public": True,
        "user": caller in USERS,
        "admin": caller == "admin",
        "study": caller in ("member", "admin"),
        "node": caller in NODES,
        "task": caller == "node",
    }[rule]


def _call(world: World, method: str, path: str, caller: str, task_id: int) -> httpx.Response:
    ids = {**world.ids, "task_id": task_id, "name": DATASET}
    concrete = path.format(**{k: v for k, v in ids.items() if "{" + k + "}" in path})
    token = world.tokens[caller]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kwargs: dict[str, Any] = {"headers": headers}
    body = BODIES.get((method, path), {} if method in ("POST", "PUT") else None)
    if (method, path) == ("POST", "/auth/token"):
        kwargs["data"] = {}
    elif (method, path) == ("PUT", "/nodes/me/datasets/{name}"):
        kwargs["json"] = SCHEMA  # as registered: nothing changes
    elif body is not None:
        kwargs["json"] = {
            k: ids[v[1:-1]] if isinstance(v, str) and v[1:-1] in ids else v for k, v in body.items()
        }
    return world.http.request(method, f"{world.url}/api/v1{concrete}", **kwargs)


def _outcome(answer: httpx.Response) -> str:
    """401 `unauthenticated`, 403 `forbidden` (the role's refusal; a 403 with another code is
    the route's own rule, after authorisation), 404 `hidden`, anything else `passed`."""
    code = ""
    if answer.headers.get("content-type", "").startswith("application/json"):
        body = answer.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            code = str(body["error"].get("code", ""))
    if answer.status_code == 401:
        return "unauthenticated"
    if answer.status_code == 403 and code == "forbidden":
        return "forbidden"
    return "hidden" if answer.status_code == 404 else "passed"


def _as_expected(rule: str, caller: str, outcome: str, objects_exist: bool) -> bool:
    if _expected(rule, caller):
        # a 404 for an object the test did not make (or a body naming one) is no refusal
        return outcome == "passed" or (outcome == "hidden" and not objects_exist)
    if caller == "anonymous":
        return outcome == "unauthenticated"
    return outcome == "forbidden" or (outcome == "hidden" and rule in HIDING)


def test_every_operation_allows_exactly_the_callers_its_rule_names(world: World) -> None:
    wrong: list[str] = []
    # logging out ends the caller's session: last
    order = sorted(MATRIX, key=lambda op: op == ("POST", "/auth/logout"))
    for method, path in order:
        rule = MATRIX[(method, path)]
        real = not any(k in path for k in ("{request_id}", "{release_id}", "{job_id}"))
        for caller in CALLERS:
            task_id = world.new_task() if rule == "task" else MISSING
            answer = _call(world, method, path, caller, task_id)
            said = f"{method} {path} as {caller}: {answer.status_code} {answer.text[:120]}"
            if answer.status_code >= 500 or not _as_expected(rule, caller, _outcome(answer), real):
                wrong.append(said)
    assert not wrong, "\n".join(wrong)
