"""Shared fixtures: databases (SQLite and the real PostgreSQL), a running coordinator."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

# One BLAS thread per process: the suite runs many processes (MPC parties, agents) on few cores,
# and spinning BLAS thread pools then starve each other.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

PG_ADMIN_URL = os.environ.get("TESSERA_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_available() -> str | None:
    """None if PostgreSQL answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def pg_server() -> str:
    problem = _pg_available()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"PostgreSQL is required in CI but not reachable at {PG_ADMIN_URL}: {problem}"
            )
        pytest.skip(f"PostgreSQL not reachable: {problem}")
    return PG_ADMIN_URL


def fresh_pg_database(admin_url: str) -> tuple[str, str]:
    """Create an empty database; returns (its SQLAlchemy URL, its name)."""
    import psycopg

    name = f"tessera_test_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{base}/{name}", name


def drop_pg_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Each module that uses this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'coordinator.db'}"
        return
    admin_url = request.getfixturevalue("pg_server")
    url, name = fresh_pg_database(admin_url)
    try:
        yield url
    finally:
        drop_pg_database(admin_url, name)
