"""The application in process: settings, the error handler's last resort, migrations."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api import CoordinatorSettings, audit, create_app
from api.audit import verify
from api.db import Database
from api.migrate import upgrade
from api.models import Base, utcnow
from api.pagination import PageRequest
from api.security import hash_password
from api.services import accounts, network
from tessera.errors import ConfigInvalid

from .conftest import Backend

SECRET = "s" * 40


# ---- settings ---------------------------------------------------------------------------


def test_settings_come_from_a_toml_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text('database_url = "sqlite:///x.db"\nport = 9000\naccept_timeout_s = 5\n')
    monkeypatch.setenv("TESSERA_PORT", "9100")
    settings = CoordinatorSettings.from_toml(config)
    assert settings.database_url == "sqlite:///x.db" and settings.accept_timeout_s == 5
    assert settings.port == 9100, "the environment overrides the file"
    assert CoordinatorSettings.load(config, port=9200).port == 9200, "options override both"
    with pytest.raises(ConfigInvalid, match="not found"):
        CoordinatorSettings.from_toml(tmp_path / "missing.toml")
    monkeypatch.delenv("TESSERA_PORT")
    config.write_text("port = 'many'\n")
    with pytest.raises(ConfigInvalid, match="port: Input should be a valid integer"):
        CoordinatorSettings.from_toml(config)


def test_production_refuses_default_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_ENVIRONMENT", "production")
    with pytest.raises(ConfigInvalid, match="TESSERA_JWT_SECRET"):
        CoordinatorSettings.load()
    with pytest.raises(ConfigInvalid, match="at least 32 characters"):
        CoordinatorSettings.load(jwt_secret="short")
    for weak in ("changethis", "admin-password"[:11], "Password"):
        with pytest.raises(ConfigInvalid, match="BOOTSTRAP_ADMIN_PASSWORD"):
            CoordinatorSettings.load(
                jwt_secret=SECRET, bootstrap_admin_username="admin", bootstrap_admin_password=weak
            )
    fine = CoordinatorSettings.load(
        jwt_secret=SECRET,
        bootstrap_admin_username="admin",
        bootstrap_admin_password="a long and real password",
        signing_key_file="/run/secrets/tessera/signing_key.pem",
    )
    assert fine.environment == "production"
    assert SECRET not in repr(fine) and "a long and real password" not in repr(fine)
    keys = {"signing_key_file": "/run/secrets/tessera/signing_key.pem"}
    assert CoordinatorSettings.load(jwt_secret_file="/run/secrets/jwt", **keys).jwt_secret is None
    monkeypatch.setenv("TESSERA_ENVIRONMENT", "local")
    assert CoordinatorSettings.load().jwt_secret is None  # no key in the source: one is made
    with pytest.raises(ConfigInvalid, match="at least 32 characters"):
        CoordinatorSettings.load(jwt_secret="short")
    with pytest.raises(ConfigInvalid, match="query_timeout_s"):
        CoordinatorSettings.load(accept_timeout_s=60, query_timeout_s=30)


# ---- errors -----------------------------------------------------------------------------


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = CoordinatorSettings(
        database_url=f"sqlite:///{tmp_path / 'c.db'}",
        jwt_secret=SECRET,
        bootstrap_admin_username="admin",
        bootstrap_admin_password="admin-password",
    )
    app = create_app(settings)

    @app.get("/api/v1/boom")
    def boom() -> None:
        raise RuntimeError("patient 123 weighs 42 kg")  # what a bug might quote

    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def test_a_bug_is_500_without_its_details(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        response = client.get("/api/v1/boom")
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "code": "internal_error",
            "message": "internal error; see the coordinator log",
            "details": {"errors": []},
        }
    }
    assert "patient" not in response.text and "Traceback" not in response.text
    assert "unhandled RuntimeError on GET /api/v1/boom" in caplog.text


def test_not_ready_without_a_database(client: TestClient) -> None:
    assert client.get("/api/v1/readyz").json() == {"status": "ready"}
    working = client.app.state.db  # type: ignore[attr-defined]
    client.app.state.db = Database("postgresql+psycopg://nobody@127.0.0.1:1/none")  # type: ignore[attr-defined]
    try:
        response = client.get("/api/v1/readyz")
    finally:
        client.app.state.db.dispose()  # type: ignore[attr-defined]
        client.app.state.db = working  # type: ignore[attr-defined]
    assert response.status_code == 503 and response.json()["error"]["code"] == "not_ready"
    assert client.get("/api/v1/healthz").json() == {"status": "ok"}


def test_the_bootstrap_admin_exists_once(client: TestClient) -> None:
    token = client.post(
        "/api/v1/auth/token", data={"username": "admin", "password": "admin-password"}
    ).json()["access_token"]
    me = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["role"] == "admin" and me["username"] == "admin"


# ---- migrations -------------------------------------------------------------------------


@pytest.fixture
def database_url(backend: Backend) -> str:
    return backend.new_database()


def test_the_coordinator_keeps_its_database_connections(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection given back to the pool stays open up to `database_pool_size` (beyond it,
    the pool closes it: on PostgreSQL a new server process for every request past the fifth,
    with SQLAlchemy's default size, under load)."""
    monkeypatch.chdir(tmp_path)  # where it keeps its keys by default on PostgreSQL
    settings = CoordinatorSettings(
        database_url=database_url,
        database_pool_size=8,
        database_max_overflow=2,
    )
    with TestClient(create_app(settings)) as client:
        engine = client.app.state.db.engine  # type: ignore[attr-defined]
        at_once = [engine.connect() for _ in range(10)]  # the pool and its overflow
        for connection in at_once:
            connection.close()
        # the eight kept open (the deadline sweeper, running meanwhile, may hold one more)
        assert engine.pool.checkedin() + engine.pool.checkedout() >= 8


def test_the_migrations_build_exactly_the_models(database_url: str) -> None:
    engine = sqlalchemy.create_engine(database_url)
    try:
        upgrade(engine)
        upgrade(engine)  # idempotent
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert differences == []


def add_node_as_of_0003(db: Session, name: str, organisation_id: int) -> None:
    """Enrol a node in a database of revision 0003 (the model has columns added since)."""
    db.execute(
        sqlalchemy.text(
            "INSERT INTO nodes (name, organisation_id, api_key_id, api_key_hash, created_at) "
            "VALUES (:name, :org, :key_id, :key_hash, :at)"
        ),
        {"name": name, "org": organisation_id, "key_id": name, "key_hash": "x", "at": utcnow()},
    )
    audit.record(db, "test", "node.created", f"node:{name}", organisation_id=organisation_id)


def add_user_as_of_0002(db: Session, username: str, password: str) -> None:
    """A user as the schema of 0002 held it (no `disabled_at` yet)."""
    db.execute(
        sqlalchemy.text(
            "INSERT INTO users (username, password_hash, role, created_at) "
            "VALUES (:name, :hash, 'researcher', :at)"
        ),
        {"name": username, "hash": hash_password(password), "at": utcnow()},
    )
    audit.record(db, "test", "user.created", f"user:{username}", role="researcher")


def record_before_signing(
    db: Session, actor: str, action: str, subject: str, **details: Any
) -> None:
    """`audit.record` as it was before revision 0011: the hash chain, no signature column."""
    prev = db.scalar(sqlalchemy.text("SELECT hash FROM audit_events ORDER BY id DESC LIMIT 1"))
    prev = prev or audit.GENESIS
    at = utcnow()
    clean = json.loads(audit.canonical(details))
    db.execute(
        sqlalchemy.text(
            "INSERT INTO audit_events (at, actor, action, subject, details, prev_hash, hash) "
            "VALUES (:at, :actor, :action, :subject, :details, :prev, :hash)"
        ),
        {
            "at": at,
            "actor": actor,
            "action": action,
            "subject": subject,
            "details": json.dumps(clean),
            "prev": prev,
            "hash": audit._digest(prev, at, actor, action, subject, clean),
        },
    )


def test_upgrading_keeps_the_data_and_the_audit_chain(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events written before signing stay verifiable: the first start after the upgrade seals
    them under a signed event, and verify counts them as legacy (not as signed)."""
    database = Database(database_url)
    try:
        upgrade(database.engine, "0002")
        with monkeypatch.context() as patched, database.session() as db:
            patched.setattr(audit, "record", record_before_signing)
            org = network.create_organisation(db, "Hospital A", "test")
            add_node_as_of_0003(db, "node-a", org.id)
            add_user_as_of_0002(db, "alice", "alice-password")
        upgrade(database.engine)
        with database.session() as db:
            unsealed = verify(db)
            assert (unsealed["ok"], unsealed["first_bad_id"]) == (False, 3)
            assert "ends with unsigned events" in unsealed["problem"]
            sealed = audit.seal_legacy(db)
            assert sealed is not None and sealed.details["legacy_events"] == 3
            assert audit.seal_legacy(db) is None  # once
        with database.session() as db:
            answer = verify(db)
            assert (answer["ok"], answer["entries"], answer["first_bad_id"]) == (True, 4, None)
            assert (answer["legacy_unsigned"], answer["signed"]) == (3, 1)
            nodes, _ = network.list_nodes(db, PageRequest())
            assert [n.name for n in nodes] == ["node-a"]
            assert accounts.authenticate(db, "alice", "alice-password").username == "alice"
        with pytest.raises(sqlalchemy.exc.IntegrityError), database.session() as db:
            db.execute(sqlalchemy.text("UPDATE users SET role = 'superuser'"))
    finally:
        database.dispose()


def test_upgrading_from_0014_keeps_synthesis_requests_jobs_and_releases(database_url: str) -> None:
    """0015 (pooled synthesis) adds columns and widens constraints: what 0014 held stays, local
    by default, and the statuses and file kinds it adds are taken."""
    engine = sqlalchemy.create_engine(database_url)
    at = utcnow()
    rows = [
        "INSERT INTO organisations (id, name, created_at) VALUES (1, 'org', :at)",
        "INSERT INTO nodes (id, name, organisation_id, api_key_id, api_key_hash, created_at) "
        "VALUES (1, 'h1', 1, 'k1', 'x', :at)",
        "INSERT INTO users (id, username, password_hash, role, created_at) "
        "VALUES (1, 'rita', '!', 'researcher', :at)",
        "INSERT INTO studies (id, name, description, created_at) VALUES (1, 's', '', :at)",
        "INSERT INTO synthesis_requests (id, study_id, requested_by, dataset, generator, spec, "
        "skipped, created_at) VALUES (1, 1, 1, 'cohort', 'cart', '{}', '[]', :at)",
        "INSERT INTO synthesis_jobs (id, request_id, node_id, status, deadline, created_at, "
        "updated_at) VALUES (1, 1, 1, 'released', :at, :at, :at)",
        "INSERT INTO releases (id, job_id, request_id, study_id, node_id, dataset, card, sha256, "
        "csv_sha256, parquet_bytes, report_sha256, rows, created_at) VALUES "
        "(1, 1, 1, 1, 1, 'cohort', '{}', 'a', 'b', 3, 'c', 3, :at)",
        "INSERT INTO release_files (release_id, kind, content) VALUES (1, 'report', :blob)",
    ]
    try:
        upgrade(engine, "0014")
        with engine.begin() as conn:
            for sql in rows:
                conn.execute(sqlalchemy.text(sql), {"at": at, "blob": b"<!doctype html>"})
        upgrade(engine)
        with engine.begin() as conn:
            scope = conn.execute(sqlalchemy.text("SELECT scope FROM synthesis_requests")).all()
            job = conn.execute(sqlalchemy.text("SELECT status, party_id FROM synthesis_jobs"))
            release = conn.execute(sqlalchemy.text("SELECT scope, rows FROM releases")).all()
            kinds = conn.execute(sqlalchemy.text("SELECT kind FROM release_files")).all()
            assert (scope, job.all(), release, kinds) == (
                [("local",)],
                [("released", None)],
                [("local", 3)],
                [("report",)],
            )
            conn.execute(sqlalchemy.text("UPDATE synthesis_jobs SET status = 'approved'"))
            conn.execute(
                sqlalchemy.text(
                    "INSERT INTO release_files (release_id, kind, content) "
                    "VALUES (1, 'report:h1', :blob)"
                ),
                {"blob": b"<!doctype html>"},
            )
        with pytest.raises(sqlalchemy.exc.IntegrityError), engine.begin() as conn:
            conn.execute(sqlalchemy.text("UPDATE release_files SET kind = 'model'"))
    finally:
        engine.dispose()
