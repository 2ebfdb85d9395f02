"""The coordinator when its database goes away, and after an unexpected error: a JSON 503 with
`Retry-After` (not a 500), a JSON 500 for a bug, and in both cases the client's keep-alive
connection stays usable: the next request on the very same socket is answered.

PostgreSQL: the coordinator's own database stops taking connections and its connections are
terminated (`pg_terminate_backend`), as in a failover. SQLite: another process holds the write
lock beyond the coordinator's busy timeout (SQLite's own outage: "database is locked").
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from api import CoordinatorSettings, create_app
from tessera.client import TesseraClient

from .conftest import Backend, Coordinator, free_port, start_coordinator
from .keepalive import Answer, Connection


def unavailable(answer: Answer) -> None:
    assert answer.status == 503, answer.body
    assert answer.headers["retry-after"] == "5"
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert error["code"] == "unavailable" and error["details"]["retry_after_s"] == 5
    assert "Traceback" not in answer.body.decode()
    assert "connection" not in answer.headers or answer.headers["connection"] != "close"


@pytest.fixture
def own_coordinator(backend: Backend) -> Iterator[Coordinator]:
    """A coordinator on a database of its own (the outage must not touch the others')."""
    made = start_coordinator(backend.root, backend.new_database(), sqlite_busy_timeout_s=0.5)
    try:
        yield made
    finally:
        made.stop()


class PostgresOutage:
    def __init__(self, admin_url: str, database_url: str) -> None:
        self.admin_url = admin_url
        self.name = database_url.rsplit("/", 1)[1]

    def _run(self, *statements: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    def begin(self) -> None:
        self._run(
            f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false',
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{self.name}' AND pid <> pg_backend_pid()",
        )

    def end(self) -> None:
        self._run(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')


class SqliteOutage:
    """Another process holds SQLite's write lock: writers wait the busy timeout, then fail."""

    def __init__(self, database_url: str) -> None:
        self.path = database_url.split(":///", 1)[1]
        self.holder: sqlite3.Connection | None = None

    def begin(self) -> None:
        self.holder = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        self.holder.execute("BEGIN IMMEDIATE")

    def end(self) -> None:
        assert self.holder is not None
        self.holder.execute("ROLLBACK")
        self.holder.close()


def test_a_database_outage_answers_503_and_the_connection_survives(
    backend: Backend, own_coordinator: Coordinator
) -> None:
    coordinator = own_coordinator
    with TesseraClient(coordinator.url) as admin:
        admin.login("admin", coordinator.admin_password)
        token = admin.token
    outage: PostgresOutage | SqliteOutage
    if backend.pg_admin_url is not None:
        outage = PostgresOutage(backend.pg_admin_url, coordinator.database_url)
    else:
        outage = SqliteOutage(coordinator.database_url)
    before = "Hospital before the outage"
    with Connection(coordinator.url) as conn:
        created = conn.request("POST", "/api/v1/organisations", token, {"name": before})
        assert created.status == 201, created.body
        outage.begin()
        try:
            during = conn.request("POST", "/api/v1/organisations", token, {"name": "during"})
            unavailable(during)
            if backend.pg_admin_url is not None:  # SQLite still reads in WAL mode
                unavailable(conn.request("GET", "/api/v1/users/me", token))
                ready = conn.request("GET", "/api/v1/readyz")
                assert ready.status == 503 and ready.headers["retry-after"] == "5"
                assert ready.json()["error"]["code"] == "not_ready"
        finally:
            outage.end()
        # the same connection, once the database is back
        after = conn.request("GET", "/api/v1/organisations?limit=1000", token)
        assert after.status == 200, after.body
        names = [o["name"] for o in after.json()["items"]]
        assert before in names and "during" not in names
    assert "Traceback" not in coordinator.log()


# ---- an unexpected error -----------------------------------------------------------------


@pytest.fixture
def failing_server(tmp_path: Path) -> Iterator[str]:
    """A real uvicorn server (in a thread) of a coordinator with one route that fails."""
    settings = CoordinatorSettings(database_url=f"sqlite:///{tmp_path / 'c.db'}")
    app: FastAPI = create_app(settings)

    @app.get("/api/v1/boom")
    def boom() -> None:
        raise RuntimeError("a bug; this text quotes patient data")

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def test_an_unexpected_error_is_a_json_500_and_the_connection_stays_open(
    failing_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR), Connection(failing_server) as conn:
        for _ in range(3):
            failed = conn.request("GET", "/api/v1/boom")
            assert failed.status == 500
            assert failed.json() == {
                "error": {
                    "code": "internal_error",
                    "message": "internal error; see the coordinator log",
                    "details": {"errors": []},
                }
            }
            assert "patient" not in failed.body.decode()
            assert failed.headers.get("connection") != "close"
            assert failed.headers["x-content-type-options"] == "nosniff"
            # the next request on the very same connection
            assert conn.request("GET", "/api/v1/healthz").json() == {"status": "ok"}
    assert "unhandled RuntimeError on GET /api/v1/boom" in caplog.text
    assert "Traceback" in caplog.text  # the server log keeps the traceback
