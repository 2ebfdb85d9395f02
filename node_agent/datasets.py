"""Data sources: CSV and Parquet files, SQL tables (any SQLAlchemy URL).

A dataset is read once per file version (modification time and size; an SQL table is re-read
after `reload_after_s`), checked against its declared schema by the kernel's one conformer
(`tessera.columns.conform`, declared bounds included), and kept in memory with only the
declared columns, typed: categoricals as strings (levels), booleans as pandas ``boolean``,
integers as nullable ``Int64``, floats as ``float64``; missing values stay missing.

Error messages name the dataset, the column, the problem, how many rows and the first row
number, never a value: they end up in logs and, for a task, at the coordinator.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from node_agent.config import DatasetConfig
from smpc.cellkey import unchanging
from tessera.columns import conform
from tessera.errors import ConfigInvalid, DataInvalid


def _fail(ds: DatasetConfig, message: str, details: dict[str, Any] | None = None) -> DataInvalid:
    """The error about dataset `ds`, said as the node says it: "dataset 'x': ...", or "dataset
    'x', column 'c': ..." for one column (`conform` begins such a message with "column 'c': "
    and puts the column in `details`)."""
    details = {"dataset": ds.name, **(details or {})}
    joint = ", " if "column" in details else ": "
    return DataInvalid(f"dataset {ds.name!r}{joint}{message}", details)


# ---- reading --------------------------------------------------------------------------------


def read_source(ds: DatasetConfig) -> pd.DataFrame:
    """The declared columns that the source has (untyped); `check_frame` does the rest."""
    declared = [c.name for c in ds.columns]
    try:
        if ds.source == "csv":
            assert ds.path is not None
            categorical = {c.name: "string" for c in ds.columns if c.type == "categorical"}
            return pd.read_csv(
                ds.path,
                sep=ds.delimiter,
                usecols=lambda c: c in declared,
                dtype=categorical,  # "01" stays "01", not 1
            )
        if ds.source == "parquet":
            import pyarrow.parquet as pq

            assert ds.path is not None
            present = set(pq.read_schema(ds.path).names)
            return pd.read_parquet(ds.path, columns=[c for c in declared if c in present])
        return _read_table(ds, declared)
    except ConfigInvalid:
        raise
    except FileNotFoundError:
        raise _fail(ds, f"file not found: {ds.path}") from None
    except Exception as exc:
        # The exception text of a driver can quote a URL: keep only its kind.
        raise _fail(
            ds, f"cannot read its {ds.source} source ({ds.describe()}): {type(exc).__name__}"
        ) from None


def _read_table(ds: DatasetConfig, declared: list[str]) -> pd.DataFrame:
    import sqlalchemy

    assert ds.url is not None and ds.table is not None
    engine = sqlalchemy.create_engine(ds.url.get_secret_value())
    try:
        schema, _, name = ds.table.rpartition(".")
        try:
            table = sqlalchemy.Table(
                name, sqlalchemy.MetaData(), schema=schema or None, autoload_with=engine
            )
        except sqlalchemy.exc.NoSuchTableError:
            raise _fail(ds, f"no table {ds.table!r} ({ds.describe()})") from None
        columns = [table.c[c] for c in declared if c in table.c]
        if not columns:
            return pd.DataFrame()
        with engine.connect() as conn:
            return pd.read_sql(sqlalchemy.select(*columns), conn)
    finally:
        engine.dispose()


# ---- checking -------------------------------------------------------------------------------


def check_frame(ds: DatasetConfig, frame: pd.DataFrame) -> pd.DataFrame:
    """The declared columns, typed (`tessera.columns.conform`, bounds checked); `DataInvalid`
    naming the dataset and the first column that breaks the declared schema (missing, wrong
    type, unknown level, outside the declared bounds) or holding more rows than it declares."""
    if ds.rows is not None and len(frame) > ds.rows:
        raise _fail(ds, f"{len(frame)} rows, more than the {ds.rows} the node declares ('rows')")
    try:
        return conform(frame.reset_index(drop=True), ds.schema_, error=DataInvalid)
    except DataInvalid as exc:
        raise _fail(ds, exc.message, exc.details) from None


def load(ds: DatasetConfig) -> pd.DataFrame:
    """Read and check a dataset (no cache)."""
    return check_frame(ds, read_source(ds))


# ---- the cache ------------------------------------------------------------------------------


@dataclass
class _Entry:
    version: Any
    loaded_at: float
    frame: pd.DataFrame


def file_version(ds: DatasetConfig) -> tuple[str, int, int]:
    """What identifies a file's content cheaply: its path, modification time (ns) and size."""
    assert ds.path is not None
    try:
        stat = Path(ds.path).stat()
    except FileNotFoundError:
        raise _fail(ds, f"file not found: {ds.path}") from None
    return str(ds.path), stat.st_mtime_ns, stat.st_size


class DatasetCache:
    """Checked frames by dataset, re-read only when the file changes (an SQL table: when older
    than its `reload_after_s`). Tasks on one dataset wait for one read; datasets read in
    parallel. `reads` counts actual reads of a source."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.reads = 0

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def get(self, ds: DatasetConfig) -> pd.DataFrame:
        with self._lock(ds.name):
            version = file_version(ds) if ds.source != "sql" else None
            entry = self._entries.get(ds.name)
            now = self._clock()
            fresh = entry is not None and (
                ds.source != "sql" or now - entry.loaded_at < ds.reload_after_s
            )
            if entry is not None and fresh and entry.version == version:
                return entry.frame
            frame = unchanging(load(ds))  # never written to: its row keys are kept
            with self._guard:
                self.reads += 1
            self._entries[ds.name] = _Entry(version, now, frame)
            return frame

    def forget(self, name: str) -> None:
        with self._lock(name):
            self._entries.pop(name, None)
