"""The SQLite files a node keeps in its work_dir (the privacy ledger, the candidate store):
each opened with its schema, then used one write transaction per call.

Every transaction takes SQLite's write lock from its first statement (`BEGIN IMMEDIATE`) and
syncs fully, so threads of the agent and other processes on the same file (`tessera steward`,
`tessera node budget`) see one order of changes, and a crash leaves a change whole or absent.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from tessera.errors import ConfigInvalid

BUSY_TIMEOUT_S = 30.0


def open_schema(
    path: Path, schema: str, version: int, what: str, advice: str = "", wal: bool = False
) -> None:
    """Create the file's tables (`schema`: statements separated by `;`) where absent and mark
    it `version`. `ConfigInvalid` if the file was written by a newer agent or cannot be used
    (`what` names it in the message, `advice` follows the reason). `wal`: write-ahead logging,
    so that readers never wait for a writer (a property of the file, kept once set)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if wal:
            with closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)) as conn:
                conn.execute("PRAGMA journal_mode = WAL")
        with transaction(path) as conn:
            found = conn.execute("PRAGMA user_version").fetchone()[0]
            if found > version:
                raise ConfigInvalid(
                    f"{what} {path} was written by a newer node agent (schema {found}); run "
                    "that version",
                    {"path": str(path)},
                )
            for statement in filter(str.strip, schema.split(";")):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
    except (sqlite3.DatabaseError, OSError) as exc:
        raise ConfigInvalid(
            f"{what} {path} cannot be used: {exc}{advice}", {"path": str(path)}
        ) from None


@contextmanager
def transaction(path: Path, rows: bool = False) -> Iterator[sqlite3.Connection]:
    """One write transaction, holding SQLite's write lock from its first statement; `rows`:
    results as `sqlite3.Row` (by column name) instead of tuples."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    if rows:
        conn.row_factory = sqlite3.Row
    with closing(conn):
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
