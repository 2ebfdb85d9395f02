"""Engine and sessions, built per app from settings (nothing at import time).

Concurrency: every change to a query takes its row lock (`api.services.queries.lock_query`),
and every audit append takes the chain lock (`api.audit`). On PostgreSQL those are a row lock
and an advisory lock; on SQLite, which locks the whole database, both become "take the write
lock now" (`write_lock`), so that what is read next is the latest committed state and no other
writer runs until commit.

Time: a `Database` carries a clock (`api.clock`; the system clock by default) in its sessions'
`info`, and the services read the time through `api.clock.now(db)`. Tests build
`Database("sqlite://", clock=FakeClock())`: an in-memory SQLite database (one connection that
every session shares) whose time they move by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from api.clock import INFO_KEY, SYSTEM, Clock
from api.settings import POOL_OVERFLOW, POOL_SIZE

SQLITE_BUSY_TIMEOUT_MS = 30_000


def is_in_memory(url: str) -> bool:
    """An in-memory SQLite URL (`sqlite://`, `sqlite:///:memory:`)."""
    return url.startswith("sqlite") and url.split("?")[0].split("://", 1)[1] in ("", "/:memory:")


def make_engine(
    url: str,
    busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_MS / 1000,
    pool_size: int = POOL_SIZE,
    max_overflow: int = POOL_OVERFLOW,
) -> Engine:
    """The engine for `url`. Its pool keeps `pool_size` connections: a connection opened
    beyond them is closed again when given back, and on PostgreSQL every new connection is a
    new server process (SQLAlchemy's default of 5 kept, at 20 concurrent researchers, opened
    about six connections per query: a fifth of the machine's CPU)."""
    # hide_parameters: a database error in the log never quotes a bound value
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True}
    sqlite = url.startswith("sqlite")
    if sqlite:
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": busy_timeout_s}
    if is_in_memory(url):
        kwargs["poolclass"] = StaticPool  # one connection, or each would see its own database
    else:
        kwargs["pool_size"], kwargs["max_overflow"] = pool_size, max_overflow
    engine = create_engine(url, **kwargs)
    if sqlite:

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable at each WAL checkpoint
            cursor.execute(f"PRAGMA busy_timeout={round(busy_timeout_s * 1000)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


def is_sqlite(db: Session) -> bool:
    return db.get_bind().dialect.name == "sqlite"


def write_lock(db: Session) -> None:
    """SQLite only: hold the database's write lock from now until the transaction ends.

    The driver opens a transaction lazily, before the first write; an UPDATE that matches no
    row is such a write. Reads before it may be stale, reads after it are not.
    """
    if is_sqlite(db):
        db.execute(text("UPDATE audit_events SET id = id WHERE 0 = 1"))


SIGNER_KEY = "tessera.signer"


class Database:
    """Sessions carry the clock and the coordinator's signing key (`api.signing`; a key of
    this process's own when none is given, as for an in-memory test database)."""

    def __init__(
        self,
        url: str,
        clock: Clock | None = None,
        signer: Any = None,
        busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_MS / 1000,
        pool_size: int = POOL_SIZE,
        max_overflow: int = POOL_OVERFLOW,
    ) -> None:
        from api.signing import CoordinatorKey

        self.engine = make_engine(url, busy_timeout_s, pool_size, max_overflow)
        self.clock: Clock = clock or SYSTEM
        self.signer: CoordinatorKey = signer or CoordinatorKey.generate()
        self.sessions = sessionmaker(
            self.engine,
            expire_on_commit=False,
            info={INFO_KEY: self.clock, SIGNER_KEY: self.signer},
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back on error."""
        db = self.sessions()
        try:
            yield db
            db.commit()
        except BaseException:
            db.rollback()
            raise
        finally:
            db.close()

    def dispose(self) -> None:
        self.engine.dispose()
