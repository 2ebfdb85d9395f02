"""The typed REST contract: the spec itself (ids, tags, typed answers, the error envelope, the
query language from the registry), the offline docs, lists in pages, unknown parameters, and
`Idempotency-Key` on the POSTs that create work or spend budget.

Every answer any integration test receives is also checked against the spec (tests/conftest.py).
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from api.openapi import TAGS, readable
from smpc import DP_STATISTICS, STATISTICS
from tessera.errors import Conflict, QueryInvalid

from .conftest import DATASET, Setup

PUBLIC = {"issueToken", "health", "readiness", "coordinatorKey"}  # no bearer token needed
# a release upload publishes a local release (200); a pooled job's approves (202) or, with the
# data, publishes the request's one release (201)
SUCCESSES = {"uploadRelease": ["200", "201", "202"]}
COUNT = {"statistic": "count", "dataset": DATASET}


def operations(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [op for methods in spec["paths"].values() for op in methods.values()]


def api(setup: Setup, method: str, path: str, **kw: Any) -> httpx.Response:
    token = kw.pop("token", setup.researcher.token)
    headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
    return setup.http.request(method, f"{setup.url}/api/v1{path}", headers=headers, **kw)


def test_every_operation_is_named_tagged_typed_and_documents_its_errors(
    contract: Any,
) -> None:
    spec = contract.spec
    found = operations(spec)
    ids = [op["operationId"] for op in found]
    assert len(found) == 61 and len(set(ids)) == len(ids)
    assert all(readable(i) for i in ids), [i for i in ids if not readable(i)]
    tags = {t["name"] for t in TAGS}
    for op in found:
        name = op["operationId"]
        assert op["tags"] and set(op["tags"]) <= tags, name
        success = {s: r for s, r in op["responses"].items() if s.startswith("2")}
        assert sorted(success) == SUCCESSES.get(name, sorted(success)) and (
            len(success) == 1 or name in SUCCESSES
        ), name
        for answer in success.values():
            for media, body in answer["content"].items():
                schema = body["schema"]
                assert schema not in ({}, {"type": "object"}), (name, media)
                assert schema.get("additionalProperties") is not True, (name, media)
        errors = {s: r for s, r in op["responses"].items() if s >= "400"}
        assert "422" in errors, f"{name}: every route answers 422 to an unknown parameter"
        if name not in PUBLIC:
            assert "401" in errors, f"{name} needs a token: it documents 401"
        for status, response in errors.items():
            assert response["content"] == {
                "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
            }, (name, status)
    schemas = spec["components"]["schemas"]
    assert not {"HTTPValidationError", "ValidationError"} & set(schemas)
    details = schemas["ErrorDetails"]
    loc = schemas["FieldError"]["properties"]["loc"]
    assert "errors" in details["properties"] and loc["type"] == "array"


def test_the_query_language_and_results_come_from_the_registry(contract: Any) -> None:
    schemas = contract.spec["components"]["schemas"]
    query = schemas["Query"]
    assert sorted(query["discriminator"]["mapping"]) == sorted(STATISTICS)
    assert len(query["oneOf"]) == len(STATISTICS)
    results = {r["$ref"].rsplit("/", 1)[1] for r in schemas["QueryResult"]["anyOf"]}
    assert {"CountResult", "CountGroupedResult", "KaplanMeierResult", "TTestResult"} <= results
    where = schemas["CountQuery"]["properties"]["where"]["items"]
    assert where["minItems"] == where["maxItems"] == 3, "a condition is a triple"
    for name in DP_STATISTICS:
        prefix = query["discriminator"]["mapping"][name].rsplit("/", 1)[1]
        assert "dp" in schemas[prefix]["properties"]
    submit = contract.operation("POST", "/api/v1/studies/1/queries")
    assert submit is not None and submit["operationId"] == "submitQuery"
    body = submit["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/Query"}
    assert {p["name"] for p in submit["parameters"]} >= {"study_id", "Idempotency-Key"}


def test_the_served_spec_is_the_contract_and_the_docs_need_no_cdn(
    setup: Setup, contract: Any
) -> None:
    served = setup.http.get(f"{setup.url}/openapi.json").json()
    assert served["paths"].keys() == contract.spec["paths"].keys()
    assert served["components"]["schemas"].keys() == contract.spec["components"]["schemas"].keys()
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = setup.http.get(f"{setup.url}{page}")
        assert html.status_code == 200 and f"/docs-assets/{asset}" in html.text
        assert (
            "cdn." not in html.text and "unpkg" not in html.text and "googleapis" not in html.text
        )
        script = setup.http.get(f"{setup.url}/docs-assets/{asset}")
        assert script.status_code == 200 and len(script.content) > 100_000


def test_unknown_query_parameters_are_an_error(setup: Setup) -> None:
    response = api(setup, "GET", "/studies", params={"colour": "blue"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and "colour" in error["message"]
    assert error["details"]["errors"] == [{"loc": ["query", "colour"], "msg": "unknown parameter"}]
    typo = api(setup, "GET", f"/studies/{setup.study_id}/queries", params={"statistc": "count"})
    assert typo.status_code == 422 and "known: cursor, limit, statistic, status" in typo.text
    assert api(setup, "GET", "/healthz", params={"x": 1}).status_code == 422
    assert api(setup, "GET", f"/studies/{setup.study_id}/queries", params={"limit": 1}).is_success


def test_lists_come_in_pages_with_a_cursor_and_filter_by_status(setup: Setup) -> None:
    made = [setup.submit({"statistic": "count"}) for _ in range(3)]
    path = f"/studies/{setup.study_id}/queries"
    first = api(setup, "GET", path, params={"limit": 2}).json()
    assert [q["id"] for q in first["items"]] == [q["id"] for q in made[:2]]
    assert first["next_cursor"]
    rest = api(setup, "GET", path, params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [q["id"] for q in rest["items"]] == [made[2]["id"]] and rest["next_cursor"] is None
    pending = api(setup, "GET", path, params={"status": "pending"}).json()["items"]
    assert {q["id"] for q in pending} == {q["id"] for q in made}
    assert api(setup, "GET", path, params={"status": "succeeded"}).json()["items"] == []
    assert setup.researcher.study_queries(setup.study_id, status="pending") == pending
    for bad in ({"cursor": "not-a-cursor"}, {"limit": 0}, {"limit": 5000}, {"status": "odd"}):
        answer = api(setup, "GET", path, params=bad)
        assert answer.status_code == 422, bad
        assert answer.json()["error"]["details"]["errors"][0]["loc"][0] == "query", bad


def tasks_of(setup: Setup) -> list[list[dict[str, Any]]]:
    return [node.ok("GET", "/nodes/me/tasks", params={"wait": 0.2}) for node in setup.nodes]


def test_a_retried_query_with_its_idempotency_key_is_created_once(setup: Setup) -> None:
    first = setup.researcher.submit_query(setup.study_id, COUNT, idempotency_key="retry-1")
    again = api(
        setup,
        "POST",
        f"/studies/{setup.study_id}/queries",
        json=COUNT,
        headers={"Idempotency-Key": "retry-1"},
    )
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first
    assert [len(t) for t in tasks_of(setup)] == [1, 1, 1], "one query, one task per node"
    assert [q["id"] for q in setup.researcher.study_queries(setup.study_id)] == [first["id"]]

    with pytest.raises(Conflict, match="was used for another request"):
        setup.researcher.submit_query(
            setup.study_id, {**COUNT, "min_count": 7}, idempotency_key="retry-1"
        )
    other = setup.admin.submit_query(setup.study_id, COUNT, idempotency_key="retry-1")
    assert other["id"] != first["id"], "a key is its user's own"
    plain = setup.researcher.submit_query(setup.study_id, COUNT)
    assert plain["id"] not in (first["id"], other["id"]), "without a key, every POST creates"


def test_concurrent_retries_create_one_query(setup: Setup) -> None:
    answers: list[httpx.Response] = []

    def post() -> None:
        answers.append(
            api(
                setup,
                "POST",
                f"/studies/{setup.study_id}/queries",
                json=COUNT,
                headers={"Idempotency-Key": "race"},
            )
        )

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [a.status_code for a in answers] == [201] * 4
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 3
    assert [len(t) for t in tasks_of(setup)] == [1, 1, 1]


def test_a_failed_request_is_not_remembered_and_a_bad_key_is_refused(setup: Setup) -> None:
    with pytest.raises(QueryInvalid):
        setup.researcher.submit_query(
            setup.study_id, {"statistic": "mean", "dataset": DATASET}, idempotency_key="fix-me"
        )
    fixed = setup.researcher.submit_query(
        setup.study_id, {"statistic": "mean", "dataset": DATASET, "column": "weight_kg"}
    )
    assert fixed["status"] == "pending"
    retried = setup.researcher.submit_query(setup.study_id, COUNT, idempotency_key="fix-me")
    assert retried["statistic"] == "count", "the failed first attempt did not claim the key"
    too_long = api(
        setup,
        "POST",
        f"/studies/{setup.study_id}/queries",
        json=COUNT,
        headers={"Idempotency-Key": "k" * 256},
    )
    assert too_long.status_code == 422


def test_a_retried_synthesis_request_is_made_once(setup: Setup) -> None:
    policy = {
        "synthesis": {
            "generators": ["cart"],
            "approvals_required": 1,
            "stewards": {"sam": "ed25519:82Kfgyj9sP6AzunyERvWyt/BiU8K/XxhwDF31RaAzEc="},
        },
    }
    for node in setup.nodes:
        node.ok("POST", "/nodes/me/hello", json={"agent_version": "t", "policy": policy})
    spec = {"dataset": DATASET, "rows": 100}
    first = setup.researcher.request_synthesis(setup.study_id, spec, idempotency_key="s-1")
    again = setup.researcher.request_synthesis(setup.study_id, spec, idempotency_key="s-1")
    assert again == first and len(first["jobs"]) == 3
    assert [r["id"] for r in setup.researcher.study_synthesis(setup.study_id)] == [first["id"]]
    jobs = [node.ok("GET", "/nodes/me/synthesis-jobs") for node in setup.nodes]
    assert [len(j) for j in jobs] == [1, 1, 1]
