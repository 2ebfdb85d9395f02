"""The REST contract at every boundary: auth, roles, validation, errors, storage, audit."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
import sqlalchemy

from tessera.client import TesseraClient
from tessera.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PolicyDenied,
    QueryInvalid,
    Unauthorized,
)
from tessera.schemas import DatasetSchema

from .conftest import DATASET, SCHEMA, Coordinator, FakeNode, Setup, logged_in


def api(
    setup: Setup, method: str, path: str, token: str | None = None, **kw: object
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return setup.http.request(method, f"{setup.url}/api/v1{path}", headers=headers, **kw)  # type: ignore[arg-type]


def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    return body["error"]  # type: ignore[no-any-return]


# ---- authentication ---------------------------------------------------------------------


def test_health_is_open_everything_else_needs_auth(setup: Setup) -> None:
    assert api(setup, "GET", "/healthz").json() == {"status": "ok"}
    assert api(setup, "GET", "/readyz").json() == {"status": "ready"}
    for method, path in [
        ("GET", "/users/me"),
        ("GET", "/users"),
        ("GET", "/organisations"),
        ("GET", "/studies"),
        ("GET", "/metrics"),
        ("GET", "/audit"),
        ("GET", "/audit/verify"),
        ("GET", "/audit/node-heads"),
        ("GET", "/nodes/me/tasks"),
        ("GET", "/queries/1"),
        ("POST", f"/studies/{setup.study_id}/queries"),
        ("POST", "/tasks/1/result"),
    ]:
        response = api(setup, method, path)
        assert response.status_code == 401, path
        assert error_of(response)["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    bad = api(setup, "GET", "/users/me", token="not-a-jwt")
    assert bad.status_code == 401 and error_of(bad)["message"] == "invalid access token"


def test_tokens_are_signed_and_expire(setup: Setup, coordinator: Coordinator) -> None:
    me = setup.researcher.me()
    assert setup.researcher.token is not None
    live = jwt.decode(setup.researcher.token, options={"verify_signature": False})
    now = datetime.now(UTC)
    claims = {**live, "iat": now - timedelta(hours=2)}
    expired = jwt.encode(
        {**claims, "exp": now - timedelta(hours=1)}, coordinator.jwt_secret, algorithm="HS256"
    )
    response = api(setup, "GET", "/users/me", token=expired)
    assert response.status_code == 401 and "expired" in error_of(response)["message"]
    forged = jwt.encode(
        {**claims, "exp": now + timedelta(hours=1)}, "x" * 32 + "another-key", algorithm="HS256"
    )
    assert api(setup, "GET", "/users/me", token=forged).status_code == 401
    valid = jwt.encode(
        {**claims, "exp": now + timedelta(hours=1)}, coordinator.jwt_secret, algorithm="HS256"
    )
    assert api(setup, "GET", "/users/me", token=valid).json()["username"] == me["username"]
    without = {k: v for k, v in claims.items() if k != "exp"}
    no_exp = jwt.encode(without, coordinator.jwt_secret, algorithm="HS256")
    assert api(setup, "GET", "/users/me", token=no_exp).status_code == 401, "exp is required"


def test_login(setup: Setup) -> None:
    response = api(
        setup, "POST", "/auth/token", data={"username": setup.researcher_name, "password": "nope"}
    )
    assert response.status_code == 401
    assert error_of(response)["message"] == "wrong username or password"
    unknown = api(setup, "POST", "/auth/token", data={"username": "nobody", "password": "x"})
    assert unknown.status_code == 401
    assert error_of(unknown)["message"] == "wrong username or password"
    missing = api(setup, "POST", "/auth/token", data={"username": "nobody"})
    assert missing.status_code == 422 and "password" in error_of(missing)["message"]
    good = api(
        setup,
        "POST",
        "/auth/token",
        data={"username": setup.researcher_name, "password": "rita-password"},
    ).json()
    assert good["token_type"] == "bearer" and good["expires_in"] == 900
    assert good["refresh_token"].startswith("tr_") and good["refresh_expires_in"] > 3600
    assert jwt.decode(good["access_token"], options={"verify_signature": False})["sub"] == str(
        setup.researcher.me()["id"]
    )
    with pytest.raises(Unauthorized):
        TesseraClient(setup.url).login(setup.researcher_name, "wrong-password")


# ---- roles ------------------------------------------------------------------------------


def test_roles_and_credentials_are_kept_apart(setup: Setup) -> None:
    with pytest.raises(Forbidden, match="admin role"):
        setup.researcher.create_organisation("Rogue")
    for method, path in [("GET", "/users"), ("GET", "/nodes"), ("GET", "/metrics")]:
        response = api(setup, method, path, token=setup.researcher.token)
        assert response.status_code == 403 and error_of(response)["code"] == "forbidden", path
    node = setup.nodes[0]
    for path in ("/users/me", "/studies", f"/studies/{setup.study_id}/datasets"):
        response = node.call("GET", path)
        assert response.status_code == 403 and "node API keys" in str(error_of(response)["message"])
    assert api(setup, "GET", "/nodes/me/tasks", token=setup.researcher.token).status_code == 403
    assert api(setup, "GET", "/nodes/me", token=setup.admin.token).status_code == 403
    forged = FakeNode("x", node.key[:-4] + "AAAA", setup.url, setup.http)
    assert forged.call("GET", "/nodes/me").status_code == 401
    nokey = FakeNode("x", "tn_nokey", setup.url, setup.http)
    assert nokey.call("GET", "/nodes/me").status_code == 401


def test_admin_manages_users_organisations_and_nodes(setup: Setup) -> None:
    org_id = setup.organisation_ids[0]
    steward = setup.admin.create_user(
        f"sam{setup.n}", "steward-password", role="steward", organisation_id=org_id
    )
    assert steward["role"] == "steward" and steward["organisation_id"] == setup.organisation_ids[0]
    users = {u["username"]: u for u in setup.admin.users()}
    assert (
        users[f"sam{setup.n}"]["role"] == "steward"
        and "password_hash" not in users[f"sam{setup.n}"]
    )
    orgs = setup.researcher.organisations()
    assert {f"Hospital {setup.n}-{i}" for i in range(3)} <= {o["name"] for o in orgs}
    nodes = {n["name"]: n for n in setup.admin.nodes()}
    mine = nodes[setup.nodes[0].name]
    assert mine["agent_version"] == "test" and mine["last_seen_at"] is not None
    assert "api_key" not in mine and "api_key_hash" not in mine
    with pytest.raises(InvalidRequest, match="role"):
        setup.admin.create_user(f"eve{setup.n}", "long-enough-pw", role="superuser")


def test_a_rotated_key_replaces_the_old_one(setup: Setup) -> None:
    node = setup.nodes[0]
    node_id = node.ok("GET", "/nodes/me")["id"]
    rotated = setup.admin.rotate_node_key(node_id)
    assert rotated["api_key"].startswith("tn_") and rotated["api_key"] != node.key
    assert node.call("GET", "/nodes/me").status_code == 401
    node.key = rotated["api_key"]
    assert node.ok("GET", "/nodes/me")["name"] == node.name
    with pytest.raises(NotFound):
        setup.admin.rotate_node_key(987654)


def test_duplicates_conflict_and_unknowns_are_404(setup: Setup) -> None:
    with pytest.raises(Conflict, match="exists already"):
        setup.admin.create_user(setup.researcher_name, "another-password")
    with pytest.raises(Conflict, match="exists already"):
        setup.admin.create_organisation(f"Hospital {setup.n}-0")
    with pytest.raises(Conflict, match="exists already"):
        setup.admin.create_node(setup.nodes[0].name, setup.organisation_ids[0])
    with pytest.raises(Conflict, match="exists already"):
        setup.admin.create_study(f"pilot {setup.n}")
    with pytest.raises(NotFound, match="no organisation 999"):
        setup.admin.create_node("node-x", 999)
    with pytest.raises(NotFound, match="no user 'ghost'"):
        setup.admin.create_study(f"ghostly {setup.n}", members=["ghost"])
    with pytest.raises(NotFound):
        setup.researcher.get_query(424242)
    with pytest.raises(NotFound):
        setup.researcher.submit_query(999, {"statistic": "count", "dataset": DATASET})
    response = api(
        setup,
        "POST",
        "/users",
        token=setup.admin.token,
        json={"username": f"short{setup.n}", "password": "123"},
    )
    assert response.status_code == 422 and "password" in str(error_of(response)["message"])
    assert "123" not in response.text, "a rejected password is not echoed"


# ---- studies ----------------------------------------------------------------------------


def test_studies_are_visible_to_their_members_only(setup: Setup) -> None:
    outsider_name = f"otto{setup.n}"
    setup.admin.create_user(outsider_name, "outsider-pw", role="researcher")
    outsider = logged_in(setup.url, outsider_name, "outsider-pw")
    assert setup.study_id not in {s["id"] for s in outsider.studies()}
    assert setup.study_id in {s["id"] for s in setup.researcher.studies()}
    for path in ("", "/datasets", "/queries"):
        with pytest.raises(NotFound, match=f"no study {setup.study_id}"):
            outsider._call("GET", f"/studies/{setup.study_id}{path}")
    with pytest.raises(NotFound):
        outsider.submit_query(setup.study_id, {"statistic": "count", "dataset": DATASET})
    query = setup.submit({"statistic": "count"})
    with pytest.raises(NotFound):
        outsider.get_query(query["id"])
    assert setup.admin.get_query(query["id"])["id"] == query["id"]

    added = setup.admin.add_study_member(setup.study_id, outsider_name)
    assert outsider_name in added["members"]
    assert outsider.get_query(query["id"])["id"] == query["id"]
    with pytest.raises(Forbidden):
        outsider._call("POST", f"/studies/{setup.study_id}/datasets", json={"name": "other"})


def test_admin_extends_a_study(setup: Setup) -> None:
    org = setup.admin.create_organisation(f"Hospital {setup.n}-extra")
    study = setup.admin._call(
        "POST", f"/studies/{setup.study_id}/organisations", json={"organisation_id": org["id"]}
    )
    assert org["id"] in study["organisation_ids"]
    study = setup.admin._call("POST", f"/studies/{setup.study_id}/datasets", json={"name": "labs"})
    assert study["datasets"] == ["cohort", "labs"]
    response = api(
        setup,
        "POST",
        f"/studies/{setup.study_id}/datasets",
        token=setup.admin.token,
        json={"name": "no spaces"},
    )
    assert response.status_code == 422 and "name" in str(error_of(response)["message"])
    with pytest.raises(NotFound, match="no organisation 4242"):
        setup.admin._call(
            "POST", f"/studies/{setup.study_id}/organisations", json={"organisation_id": 4242}
        )
    with pytest.raises(InvalidRequest, match="user_id or username"):
        setup.admin._call("POST", f"/studies/{setup.study_id}/members", json={})


def test_study_datasets_show_schemas_and_whether_they_agree(setup: Setup) -> None:
    listing = setup.researcher.study_datasets(setup.study_id)
    assert listing[0]["name"] == DATASET and listing[0]["schemas_agree"] is True
    assert [n["node"] for n in listing[0]["nodes"]] == [n.name for n in setup.nodes]
    declared = DatasetSchema.model_validate(SCHEMA)
    assert DatasetSchema.model_validate(listing[0]["nodes"][0]["schema"]) == declared
    other = {"columns": [*SCHEMA["columns"][:-1], {"name": "icu_admission", "type": "integer"}]}
    setup.nodes[2].register(body=other)
    listing = setup.researcher.study_datasets(setup.study_id)
    assert listing[0]["schemas_agree"] is False
    assert listing[0]["nodes"][2]["schema"]["columns"][3]["type"] == "integer"


# ---- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        ("{not json", 422, "invalid_request", "not valid JSON"),
        ("", 422, "invalid_request", "body"),
        ('{"dataset": "cohort"}', 422, "query_invalid", "names no 'statistic'"),
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
        (
            '{"statistic": "count", "dataset": "cohort", "group_by": ["weight_kg"]}',
            422,
            "query_invalid",
            "only categorical or boolean",
        ),
        ('{"statistic": "count", "dataset": "cohort", "min_count": "x"}', 422, "query_invalid", ""),
        ('{"statistic": "count", "dataset": "elsewhere"}', 404, "not_found", "not part of study"),
        (
            '{"statistic": "kaplan_meier", "dataset": "cohort", "time": "weight_kg", '
            '"event": "icu_admission"}',
            422,
            "query_invalid",
            "must be an integer column",
        ),
        ("[1, 2]", 422, "query_invalid", "JSON object"),
    ],
)
def test_bad_queries_are_refused_with_json_errors(
    setup: Setup, body: str, status: int, code: str, message: str
) -> None:
    response = setup.http.post(
        f"{setup.url}/api/v1/studies/{setup.study_id}/queries",
        content=body,
        headers={
            "Authorization": f"Bearer {setup.researcher.token}",
            "Content-Type": "application/json",
        },
    )
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["code"] == code and message in str(error["message"])


def test_wrong_types_and_malformed_json_in_node_messages_are_422(setup: Setup) -> None:
    node = setup.nodes[0]
    response = node.call("PUT", "/nodes/me/datasets/cohort", json={"columns": [{"name": "a"}]})
    assert response.status_code == 422 and error_of(response)["code"] == "invalid_request"
    assert "columns.0.type" in str(error_of(response)["message"])
    response = node.call(
        "PUT",
        "/nodes/me/datasets/cohort",
        json={"columns": [{"name": "s", "type": "categorical"}]},
    )
    assert response.status_code == 422 and "needs its levels" in str(error_of(response)["message"])
    response = node.call("POST", "/tasks/1/accept", json={"mpc_host": "h", "mpc_port": "many"})
    assert response.status_code == 422 and "mpc_port" in str(error_of(response)["message"])
    response = node.call(
        "POST",
        "/nodes/me/hello",
        content=b'{"agent_version": ',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422 and "not valid JSON" in str(error_of(response)["message"])
    response = node.call("GET", "/nodes/me/tasks", params={"wait": "soon"})
    assert response.status_code == 422 and "wait" in str(error_of(response)["message"])
    response = node.call("GET", "/nodes/me/tasks", params={"wait": -1})
    assert response.status_code == 422


def test_unknown_routes_and_methods_answer_json(setup: Setup) -> None:
    response = api(setup, "GET", "/nowhere", token=setup.admin.token)
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    response = api(setup, "DELETE", "/studies", token=setup.admin.token)
    assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"


def test_queries_need_three_agreeing_nodes_and_their_policies(setup: Setup) -> None:
    nodes = setup.nodes
    nodes[2].register(body={"columns": [{"name": "age_months", "type": "float"}]})
    with pytest.raises(Conflict, match=r"declare column 'age_months'.*differently") as split:
        setup.submit({"statistic": "mean", "column": "age_months"})
    assert f"node {nodes[2].name}: float" in split.value.message
    with pytest.raises(Conflict, match=f"not declared by node {nodes[2].name}"):
        setup.submit({"statistic": "count", "where": [["sex", "==", "F"]]})
    nodes[2].register()
    nodes[1].ok(
        "POST",
        "/nodes/me/hello",
        json={"agent_version": "t", "policy": {"allowed_statistics": ["count"]}},
    )
    with pytest.raises(PolicyDenied, match=f"{nodes[1].name} does not allow 'mean'"):
        setup.submit({"statistic": "mean", "column": "age_months"})
    assert setup.submit({"statistic": "count"})["status"] == "pending"

    lonely = setup.admin.create_organisation(f"Lonely {setup.n}")
    small = setup.admin.create_study(
        f"small {setup.n}",
        organisation_ids=[lonely["id"], setup.organisation_ids[0]],
        datasets=[DATASET],
        members=[setup.researcher_name],
    )
    with pytest.raises(Conflict, match="at least 3 parties; 1 node"):
        setup.researcher.submit_query(small["id"], {"statistic": "count", "dataset": DATASET})
    with pytest.raises(QueryInvalid):
        setup.submit({"statistic": "count", "min_count": -3})


# ---- what is stored ----------------------------------------------------------------------


def test_secrets_are_stored_hashed_and_never_audited(
    setup: Setup, coordinator: Coordinator
) -> None:
    engine = sqlalchemy.create_engine(coordinator.database_url)
    with engine.connect() as conn:
        hashes = dict(
            conn.execute(sqlalchemy.text("SELECT username, password_hash FROM users")).all()
        )
        keys = conn.execute(sqlalchemy.text("SELECT api_key_id, api_key_hash FROM nodes")).all()
        audit = conn.execute(sqlalchemy.text("SELECT details, subject FROM audit_events")).all()
    engine.dispose()
    stored = hashes[setup.researcher_name]
    assert stored.startswith("$argon2id$") and "rita-password" not in stored
    for node in setup.nodes:
        secret = node.key.split(".", 1)[1]
        assert all(secret not in h for _, h in keys)
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for _, h in keys)
        assert all(secret not in str(row) for row in audit)
    assert all("rita-password" not in str(row) for row in audit)
    assert all(coordinator.admin_password not in str(row) for row in audit)
    assert coordinator.admin_password not in coordinator.log()
    assert setup.nodes[0].key.split(".", 1)[1] not in coordinator.log()


def test_the_audit_chain_verifies_and_detects_tampering(
    setup: Setup, coordinator: Coordinator
) -> None:
    setup.submit({"statistic": "count"})
    with pytest.raises(Unauthorized):
        TesseraClient(setup.url).login(setup.researcher_name, "not-the-password")
    report = setup.admin.audit_verify()
    assert report["ok"] is True and report["entries"] >= 10 and report["first_bad_id"] is None
    events = setup.admin.audit()
    actions = {e["action"] for e in events}
    expected = {"user.created", "node.created", "dataset.registered", "study.created"}
    assert expected | {"query.submitted", "login", "login.failed", "node.hello"} <= actions
    failed = [e for e in events if e["action"] == "login.failed"][-1]
    assert failed["subject"] == f"user:{setup.researcher_name}" and failed["details"] == {
        "address": "127.0.0.1"
    }
    assert "not-the-password" not in str(events)
    first = setup.admin.audit_page(limit=1)
    assert [e["id"] for e in first["items"]] == [events[0]["id"]] and first["next_cursor"]
    page = setup.admin.audit_page(limit=2, cursor=first["next_cursor"])
    assert [e["id"] for e in page["items"]] == [events[1]["id"], events[2]["id"]]
    logins = setup.admin.audit_page(limit=1000, action="login.failed")["items"]
    assert logins and {e["action"] for e in logins} == {"login.failed"}
    victim = events[2]
    engine = sqlalchemy.create_engine(coordinator.database_url)
    update = sqlalchemy.text("UPDATE audit_events SET subject = :subject WHERE id = :id")
    with engine.begin() as conn:
        conn.execute(update, {"subject": "user:mallory", "id": victim["id"]})
    try:
        report = setup.admin.audit_verify()
        assert (report["ok"], report["entries"], report["first_bad_id"]) == (False, 2, victim["id"])
        assert report["problem"] == "its hash does not match its content (edited)"
    finally:
        with engine.begin() as conn:
            conn.execute(update, {"subject": victim["subject"], "id": victim["id"]})
        engine.dispose()
    assert setup.admin.audit_verify()["ok"] is True


def test_metrics_count_queries_tasks_and_nodes(setup: Setup) -> None:
    setup.submit({"statistic": "count"})
    metrics = api(setup, "GET", "/metrics", token=setup.admin.token)
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    seen = re.search(r"^tessera_nodes_seen_last_minute (\d+)$", metrics.text, re.M)
    assert seen and int(seen.group(1)) >= 3
    assert re.search(r'^tessera_queries\{status="pending"\} [1-9]\d*$', metrics.text, re.M)
    assert re.search(r'^tessera_tasks\{status="pending"\} [1-9]\d*$', metrics.text, re.M)
    for status in ("pending", "running", "succeeded", "failed"):
        assert re.search(rf'^tessera_queries\{{status="{status}"\}} \d+$', metrics.text, re.M)
