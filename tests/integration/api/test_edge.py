"""Bad input at the coordinator's edge, over real coordinators on SQLite and PostgreSQL: each
is a 4xx with the JSON error body, nothing is stored, and the server answers the next request
on the same connection as if nothing had happened.

The attacks are the operator's of issue 14: ids beyond the database's integer range (2^31 and
2^63) in paths, query strings and bodies; NUL bytes in names; a generator's `params` nested
hundreds of levels deep; `group_by` naming one column four times; a 10 MB study description;
`where` lists far beyond the query language's limit.
"""

from __future__ import annotations

import json
import select
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from tessera.limits import MAX_CONDITIONS, MAX_ID, MAX_JSON_DEPTH

from .conftest import DATASET, Coordinator, Setup

BEYOND = [MAX_ID + 1, 2**63, 2**64 + 1]


def api(setup: Setup, method: str, path: str, token: str | None, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kw.pop("headers", {}))
    return setup.http.request(method, f"{setup.url}/api/v1{path}", headers=headers, **kw)


def refused(response: httpx.Response, status: int = 422, code: str = "invalid_request") -> str:
    """The answer is `status` with the error envelope and `code`; its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code, body
    assert "Traceback" not in response.text
    return str(body["error"]["message"])


def unharmed(setup: Setup, token: str) -> None:
    """The next request, on the same connection pool, is answered as usual."""
    answer = api(setup, "GET", f"/studies/{setup.study_id}", token)
    assert answer.status_code == 200, answer.text
    assert api(setup, "GET", "/healthz", None).json() == {"status": "ok"}


def study_names(setup: Setup) -> list[str]:
    return [s["name"] for s in setup.admin.studies()]


def test_ids_beyond_the_integer_range_are_422_in_paths_queries_and_bodies(setup: Setup) -> None:
    admin, researcher = setup.admin.token, setup.researcher.token
    for big in BEYOND:
        for method, path, token in (
            ("GET", f"/studies/{big}", researcher),
            ("GET", f"/queries/{big}", researcher),
            ("GET", f"/releases/{big}/data", researcher),
            ("POST", f"/users/{big}/disable", admin),
            ("POST", f"/nodes/{big}/rotate-key", admin),
        ):
            message = refused(api(setup, method, path, token))
            assert "2147483647" in message, message
        refused(api(setup, "GET", "/nodes", admin, params={"organisation_id": big}))
        before = study_names(setup)
        for body in (
            {"name": f"big {big}", "organisation_ids": [big]},
            {"name": f"big {big}", "members": [big]},
        ):
            refused(api(setup, "POST", "/studies", admin, json=body))
        assert study_names(setup) == before  # nothing stored
        refused(
            api(setup, "POST", f"/studies/{setup.study_id}/members", admin, json={"user_id": big})
        )
        refused(api(setup, "POST", "/users", admin, json=_user(big)))
        node = setup.nodes[0]
        refused(node.call("POST", f"/tasks/{big}/accept", json={"mpc_host": "h", "mpc_port": 1}))
        refused(
            node.call(
                "PUT",
                "/nodes/me/budget",
                json={
                    "entries": [
                        {
                            "study_id": big,
                            "dataset": DATASET,
                            "epsilon_spent": 0,
                            "delta_spent": 0,
                            "charges": 0,
                        }
                    ]
                },
            )
        )
    cursor = "YWZ0ZXI6OTIyMzM3MjAzNjg1NDc3NTgwOA"  # after:9223372036854775808
    refused(api(setup, "GET", "/studies", researcher, params={"cursor": cursor}))
    unharmed(setup, researcher)


def _user(organisation_id: int) -> dict[str, Any]:
    return {"username": "nobody_big", "password": "long enough", "organisation_id": organisation_id}


def test_nul_bytes_are_refused_in_every_string(setup: Setup) -> None:
    admin, researcher = setup.admin.token, setup.researcher.token
    name = f"Hospital\x00{setup.n}"
    message = refused(api(setup, "POST", "/organisations", admin, json={"name": name}))
    assert "NUL" in message
    refused(api(setup, "POST", "/studies", admin, json={"name": "s", "description": "a\x00b"}))
    refused(
        api(
            setup,
            "GET",
            f"/studies/{setup.study_id}/queries",
            researcher,
            params={"statistic": "count\x00"},
        )
    )
    refused(
        api(
            setup, "GET", f"/studies/{setup.study_id}/releases", researcher, params={"node": "\x00"}
        )
    )
    refused(api(setup, "GET", "/audit", admin, params={"action": "a\x00"}))
    refused(
        api(setup, "POST", "/auth/token", None, data={"username": "ad\x00min", "password": "x"})
    )
    refused(
        api(
            setup,
            "POST",
            f"/studies/{setup.study_id}/queries/dry-run",
            researcher,
            json={"statistic": "count", "dataset": DATASET, "where": [["sex", "==", "F\x00"]]},
        ),
        code="query_invalid",
    )
    node = setup.nodes[0]
    refused(node.call("POST", "/nodes/me/hello", json={"agent_version": "1\x00", "policy": {}}))
    refused(node.call("POST", "/tasks/1/reject", json={"reason": "no\x00"}))
    orgs = setup.admin.organisations()
    assert not any("\x00" in o["name"] for o in orgs)  # nothing stored
    unharmed(setup, researcher)


def nested(depth: int) -> dict[str, Any]:
    top: dict[str, Any] = {}
    level = top
    for _ in range(depth):
        level["a"] = {}
        level = level["a"]
    return top


def test_deeply_nested_json_is_refused(setup: Setup) -> None:
    researcher = setup.researcher.token
    path = f"/studies/{setup.study_id}/synthesis"
    for depth in (MAX_JSON_DEPTH + 1, 300):
        spec = {"dataset": DATASET, "rows": 10, "params": nested(depth)}
        message = refused(api(setup, "POST", path, researcher, json=spec))
        assert "nested more than" in message
    # deeper than the JSON parser goes: a 400 for a typed body, a 422 for a query
    deep = "[" * 100_000 + "]" * 100_000
    headers = {"Content-Type": "application/json"}
    refused(api(setup, "POST", path, researcher, content=deep, headers=headers), 400, "bad_request")
    refused(
        api(
            setup,
            "POST",
            f"/studies/{setup.study_id}/queries/dry-run",
            researcher,
            content=deep,
            headers=headers,
        )
    )
    node = setup.nodes[0]
    refused(
        node.call(
            "POST",
            "/tasks/1/result",
            json={"result": nested(100), "min_count_applied": 0, "seconds": 1},
        )
    )
    listed = api(setup, "GET", path, researcher).json()["items"]
    assert listed == []  # nothing stored
    unharmed(setup, researcher)


def test_group_by_names_each_column_once(setup: Setup) -> None:
    query = {"statistic": "count", "dataset": DATASET, "group_by": ["sex"] * 4}
    path = f"/studies/{setup.study_id}/queries"
    for route in (f"{path}/dry-run", path):
        message = refused(
            api(setup, "POST", route, setup.researcher.token, json=query), 422, "query_invalid"
        )
        assert "more than once: sex" in message
    assert api(setup, "GET", path, setup.researcher.token).json()["items"] == []
    query["group_by"] = ["sex", "icu_admission"]
    dry = api(setup, "POST", f"{path}/dry-run", setup.researcher.token, json=query)
    assert dry.status_code == 200, dry.text
    unharmed(setup, setup.researcher.token)


def test_a_long_description_is_refused_and_a_10_mb_one_never_read(setup: Setup) -> None:
    admin = setup.admin.token
    before = study_names(setup)
    long = {"name": f"long {setup.n}", "description": "x" * 10_001}
    message = refused(api(setup, "POST", "/studies", admin, json=long))
    assert "10000" in message
    huge = {"name": f"huge {setup.n}", "description": "x" * 10_000_000}
    refused(api(setup, "POST", "/studies", admin, json=huge), 413, "too_large")
    assert study_names(setup) == before
    fits = api(setup, "POST", "/studies", admin, json={**long, "description": "x" * 10_000})
    assert fits.status_code == 201, fits.text
    unharmed(setup, admin)


def test_where_beyond_the_limit_is_refused_before_it_is_parsed(setup: Setup) -> None:
    researcher = setup.researcher.token
    path = f"/studies/{setup.study_id}/queries/dry-run"
    query: dict[str, Any] = {"statistic": "count", "dataset": DATASET}
    within = [["age_months", ">=", i] for i in range(MAX_CONDITIONS)]
    assert api(setup, "POST", path, researcher, json={**query, "where": within}).status_code == 200
    over = [*within, ["age_months", ">=", 0]]
    message = refused(
        api(setup, "POST", path, researcher, json={**query, "where": over}), 422, "query_invalid"
    )
    assert f"at most {MAX_CONDITIONS} conditions" in message
    # as many as 1 MiB holds: refused without a condition parsed
    many = json.dumps({**query, "where": [["a", "==", 1]] * 80_000}, separators=(",", ":"))
    headers = {"Content-Type": "application/json"}
    refused(
        api(setup, "POST", path, researcher, content=many, headers=headers), 422, "query_invalid"
    )
    # two million: 28 MB, refused by its Content-Length, before it is read
    two_million = b'{"statistic": "count", "where": [' + b'["a", "==", 1], ' * 2_000_000 + b"]}"
    refused(
        api(setup, "POST", path, researcher, content=two_million, headers=headers),
        413,
        "too_large",
    )
    too_many_values = [["age_months", "in", list(range(1001))]]
    refused(
        api(setup, "POST", path, researcher, json={**query, "where": too_many_values}),
        422,
        "query_invalid",
    )
    unharmed(setup, researcher)


# ---- bodies: refused before authentication, before they are read --------------------------


def peak_memory_mb(coordinator: Coordinator) -> float:
    """The coordinator process's peak resident memory (VmHWM), in MB."""
    status = Path(f"/proc/{coordinator.popen.pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def send_huge(url: str, path: str, size: int, chunked: bool) -> str:
    """POST a body of `size` bytes without credentials over a raw socket, sending until the
    server answers; the answer's status line and body. With `Content-Length` the server answers
    (and closes) after the headers: 64 KiB are sent, no more."""
    parts = urlparse(url)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    piece = b" " * 65536
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as conn:
        conn.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {parts.hostname}\r\n".encode()
            + f"Content-Type: application/json\r\n{framing}\r\n\r\n".encode()
        )
        if not chunked:
            conn.sendall(piece)
        sent = 0
        while chunked and sent < size and not select.select([conn], [], [], 0)[0]:
            conn.sendall(b"10000\r\n" + piece + b"\r\n")
            sent += len(piece)
        answer = b""
        while b"}}" not in answer:
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert sent <= 32 * 2**20, "the server read on past the limit (and the socket buffers)"
    head, _, body = answer.decode(errors="replace").partition("\r\n\r\n")
    return head.split("\r\n", 1)[0] + " " + body


def test_four_100_mb_bodies_at_once_cost_the_coordinator_nothing(
    coordinator: Coordinator, setup: Setup
) -> None:
    before = peak_memory_mb(coordinator)
    answers: list[str] = []
    sends = [
        threading.Thread(
            target=lambda chunked=chunked, path=path: answers.append(
                send_huge(coordinator.url, path, 100 * 10**6, chunked)
            )
        )
        for chunked in (False, True)
        for path in (f"/api/v1/studies/{setup.study_id}/queries", "/api/v1/tasks/1/result")
    ]
    for thread in sends:
        thread.start()
    for thread in sends:
        thread.join(60)
    assert len(answers) == 4
    for answer in answers:
        error = json.loads(answer[answer.index("{") :])["error"]
        if answer.split()[1] == "401":  # a query's body is read after its credentials
            assert error["code"] == "unauthorized", answer
            continue
        assert answer.split()[1] == "413" and error["code"] == "too_large", answer[:300]
        # the general limit, or a node report's (a node's route; 100 MB is beyond both)
        assert error["details"]["limit"] in (2**20, 16 * 2**20), answer
    assert peak_memory_mb(coordinator) - before < 50  # nothing was read or parsed
    unharmed(setup, setup.researcher.token)


def test_a_node_report_beyond_1_mib_needs_a_valid_node_key(setup: Setup) -> None:
    entries = [
        {
            "study_id": 10**9 + i,  # studies this coordinator does not know: kept aside
            "dataset": DATASET,
            "epsilon_spent": 0.5,
            "delta_spent": 0,
            "charges": 1,
        }
        for i in range(12_000)
    ]
    report = json.dumps({"entries": entries, "dataset_totals": []}).encode()
    assert len(report) > 2**20
    headers = {"Content-Type": "application/json"}
    node = setup.nodes[0]
    for token in (None, setup.researcher.token, "tn_abc.forged", node.key[:-2] + "xx"):
        answer = api(setup, "PUT", "/nodes/me/budget", token, content=report, headers=headers)
        message = refused(answer, 413, "too_large")
        assert str(2**20) in message
    accepted = node.call("PUT", "/nodes/me/budget", content=report, headers=headers)
    assert accepted.status_code == 200, accepted.text
    assert len(accepted.json()["ignored_study_ids"]) == 12_000
    # chunked (no Content-Length): the key is checked when the body passes 1 MiB
    chunks = [report[i : i + 65536] for i in range(0, len(report), 65536)]
    streamed = node.call("PUT", "/nodes/me/budget", content=iter(chunks), headers=headers)
    assert streamed.status_code == 200, streamed.text
    unauthenticated = api(
        setup, "PUT", "/nodes/me/budget", None, content=iter(chunks), headers=headers
    )
    refused(unauthenticated, 413, "too_large")
    unharmed(setup, setup.researcher.token)
