"""The REST contract at every boundary: auth, validation, errors, storage, audit."""

from __future__ import annotations

import re

import httpx
import pytest
import sqlalchemy

from tessera.client import TesseraClient
from tessera.errors import Conflict, Forbidden, NotFound, PolicyDenied, QueryInvalid, Unauthorized

from .conftest import FakeNode, Setup


def api(
    setup: Setup, method: str, path: str, token: str | None = None, **kw: object
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, f"{setup.url}/api/v1{path}", headers=headers, timeout=20, **kw)  # type: ignore[arg-type]


def test_health_is_open_everything_else_needs_auth(setup: Setup) -> None:
    assert api(setup, "GET", "/healthz").json() == {"status": "ok"}
    assert api(setup, "GET", "/readyz").status_code == 200
    for method, path in [
        ("GET", "/users/me"),
        ("GET", "/studies"),
        ("GET", "/metrics"),
        ("GET", "/audit"),
        ("GET", "/nodes/me/tasks"),
        ("GET", "/queries/1"),
        ("POST", f"/studies/{setup.study_id}/queries"),
    ]:
        response = api(setup, method, path)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    bad = api(setup, "GET", "/users/me", token="not-a-jwt")
    assert bad.status_code == 401 and bad.json()["error"]["message"] == "invalid access token"


def test_login(setup: Setup) -> None:
    wrong = api(
        setup, "POST", "/auth/token", data={"username": f"rita{setup.n}", "password": "nope-nope"}
    )
    assert wrong.status_code == 401
    assert wrong.json()["error"]["message"] == "wrong username or password"
    assert setup.researcher.me()["username"] == f"rita{setup.n}"


def test_roles_and_credentials_are_kept_apart(setup: Setup) -> None:
    with pytest.raises(Forbidden, match="admin role"):
        setup.researcher.create_organisation("Rogue")
    node = setup.nodes[0]
    assert node.call("GET", "/users/me").status_code == 403
    assert api(setup, "GET", "/nodes/me/tasks", token=setup.researcher.token).status_code == 403
    forged = FakeNode("x", node.key[:-4] + "AAAA", setup.url)
    assert forged.call("GET", "/nodes/me").status_code == 401


def test_duplicates_conflict_and_unknowns_are_404(setup: Setup) -> None:
    with pytest.raises(Conflict, match="exists already"):
        setup.admin.create_user(f"rita{setup.n}", "another-password")
    with pytest.raises(Conflict):
        setup.admin.create_organisation(f"Hospital {setup.n}-0")
    with pytest.raises(NotFound, match="no organisation 999"):
        setup.admin.create_node("node-x", 999)
    with pytest.raises(NotFound):
        setup.researcher.get_query(424242)
    with pytest.raises(NotFound):
        setup.researcher.submit_query(999, {"statistic": "count", "dataset": "cohort"})
    response = api(
        setup,
        "POST",
        "/users",
        token=setup.admin.token,
        json={"username": "short", "password": "123"},
    )
    assert response.status_code == 422 and "password" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        ("{not json", 422, "invalid_request", "not valid JSON"),
        ('{"statistic": "mode", "dataset": "cohort"}', 422, "query_invalid", "unknown statistic"),
        (
            '{"statistic": "mean", "dataset": "cohort", "column": "bmi"}',
            422,
            "query_invalid",
            "unknown column 'bmi'",
        ),
        (
            '{"statistic": "mean", "dataset": "cohort", "column": "sex"}',
            422,
            "query_invalid",
            "not numeric",
        ),
        (
            '{"statistic": "count", "dataset": "cohort", "where": [["age_months", ">", "x"]]}',
            422,
            "query_invalid",
            "compares with numbers",
        ),
        ('{"statistic": "count", "dataset": "elsewhere"}', 404, "not_found", "not part of study"),
        (
            '{"statistic": "quantile", "dataset": "cohort", "column": "age_months", "q": [0.5]}',
            422,
            "query_invalid",
            "not supported yet",
        ),
        ("[1, 2]", 422, "query_invalid", "JSON object"),
    ],
)
def test_bad_queries_are_refused_with_json_errors(
    setup: Setup, body: str, status: int, code: str, message: str
) -> None:
    response = httpx.post(
        f"{setup.url}/api/v1/studies/{setup.study_id}/queries",
        content=body,
        timeout=20,
        headers={
            "Authorization": f"Bearer {setup.researcher.token}",
            "Content-Type": "application/json",
        },
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and message in error["message"]


def test_wrong_types_in_node_messages_are_422(setup: Setup) -> None:
    node = setup.nodes[0]
    response = node.call("PUT", "/nodes/me/datasets/cohort", json={"columns": [{"name": "a"}]})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"
    response = node.call("POST", "/tasks/1/accept", json={"mpc_host": "h", "mpc_port": "many"})
    assert response.status_code == 422 and "mpc_port" in response.json()["error"]["message"]


def test_queries_need_three_agreeing_nodes_and_their_policies(setup: Setup) -> None:
    nodes = setup.nodes
    nodes[2].register(body={"columns": [{"name": "age_months", "type": "float"}]})
    with pytest.raises(Conflict, match=r"declare column 'age_months'.*differently"):
        setup.submit({"statistic": "mean", "column": "age_months"})
    with pytest.raises(Conflict, match="not declared by node"):
        setup.submit({"statistic": "count", "where": [["sex", "==", "F"]]})
    nodes[2].register()
    nodes[1].ok(
        "POST",
        "/nodes/me/hello",
        json={"agent_version": "t", "policy": {"allowed_statistics": ["count"]}},
    )
    with pytest.raises(PolicyDenied, match=f"{nodes[1].name} does not allow 'mean'"):
        setup.submit({"statistic": "mean", "column": "age_months"})
    setup.admin.create_organisation(f"Lonely {setup.n}")
    org_ids = [o["id"] for o in setup.admin._call("GET", "/organisations")][-1:]
    small = setup.admin.create_study(
        f"small {setup.n}",
        organisation_ids=org_ids,
        datasets=["cohort"],
        members=[f"rita{setup.n}"],
    )
    with pytest.raises(Conflict, match="at least 3 parties; 0 node"):
        setup.researcher.submit_query(small["id"], {"statistic": "count", "dataset": "cohort"})
    with pytest.raises(QueryInvalid):
        setup.submit({"statistic": "count", "min_count": -3})


def test_study_datasets_show_schemas_never_rows(setup: Setup) -> None:
    listing = setup.researcher.study_datasets(setup.study_id)
    assert listing[0]["name"] == "cohort" and listing[0]["schemas_agree"] is True
    assert [n["node"] for n in listing[0]["nodes"]] == [n.name for n in setup.nodes]
    assert "columns" in listing[0]["nodes"][0]["schema"]


def test_secrets_are_stored_hashed(setup: Setup, database_url: str) -> None:
    engine = sqlalchemy.create_engine(database_url)
    with engine.connect() as conn:
        hashes = dict(
            conn.execute(sqlalchemy.text("SELECT username, password_hash FROM users")).all()
        )
        keys = conn.execute(sqlalchemy.text("SELECT api_key_id, api_key_hash FROM nodes")).all()
        audit = conn.execute(sqlalchemy.text("SELECT details FROM audit_events")).all()
    engine.dispose()
    stored = hashes[f"rita{setup.n}"]
    assert stored.startswith("$argon2id$") and "rita-password" not in stored
    for node in setup.nodes:
        secret = node.key.split(".", 1)[1]
        assert all(secret not in h and secret != h for _, h in keys)
        assert all(secret not in str(row) for row in audit)
    assert all("rita-password" not in str(row) for row in audit)


def test_the_audit_chain_verifies_and_detects_tampering(setup: Setup, database_url: str) -> None:
    setup.submit({"statistic": "count"})
    report = setup.admin.audit_verify()
    assert report["ok"] is True and report["entries"] >= 10
    events = setup.admin._call("GET", "/audit", params={"limit": 1000})
    actions = {e["action"] for e in events}
    expected = {"user.created", "node.created", "dataset.registered", "study.created"}
    assert expected | {"query.submitted", "login", "node.hello"} <= actions
    victim = events[2]
    engine = sqlalchemy.create_engine(database_url)
    update = sqlalchemy.text("UPDATE audit_events SET subject = :subject WHERE id = :id")
    with engine.begin() as conn:
        conn.execute(update, {"subject": "user:mallory", "id": victim["id"]})
    try:
        report = setup.admin.audit_verify()
        assert report == {"ok": False, "entries": victim["id"] - 1, "first_bad_id": victim["id"]}
    finally:
        with engine.begin() as conn:
            conn.execute(update, {"subject": victim["subject"], "id": victim["id"]})
        engine.dispose()
    assert setup.admin.audit_verify()["ok"] is True


def test_unauthorised_clients_cannot_reach_metrics_or_audit(setup: Setup) -> None:
    with pytest.raises(Forbidden):
        setup.researcher.audit_verify()
    metrics = api(setup, "GET", "/metrics", token=setup.admin.token)
    assert metrics.status_code == 200
    assert re.search(r"^tessera_nodes \d+$", metrics.text, re.M)
    assert re.search(r'^tessera_queries\{status="pending"\} \d+$', metrics.text, re.M)


def test_unknown_routes_answer_json(setup: Setup) -> None:
    response = api(setup, "GET", "/nowhere", token=setup.admin.token)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    with pytest.raises(Unauthorized):
        TesseraClient(setup.url).login(f"rita{setup.n}", "wrong-password")
