"""Apply the Alembic migrations to a database (on coordinator start, and from tests).

Several replicas may start at once: on PostgreSQL the upgrade holds an advisory lock, so one
migrates and the others then find the schema current.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from tessera.errors import ConfigInvalid

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK = 0x7E55E7B  # advisory lock key (PostgreSQL)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (default: the newest; idempotent)."""
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        if sqlite:
            # SQLite rebuilds a table to alter it; the rebuild must not trip foreign keys
            # (the pragma only takes effect outside a transaction).
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        try:
            with connection.begin():
                if engine.dialect.name == "postgresql":
                    connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK)))
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()


def check_and_upgrade(database_url: str) -> None:
    """Reach the database and migrate it, or raise `ConfigInvalid` in one line (the URL shown
    without its password)."""
    from api.db import make_engine

    engine = make_engine(database_url)
    try:
        upgrade(engine)
    except (OperationalError, InterfaceError) as exc:
        where = engine.url.render_as_string(hide_password=True)
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise ConfigInvalid(f"cannot use the database {where}: {reason}") from None
    finally:
        engine.dispose()
