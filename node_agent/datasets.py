"""Data sources: CSV, Parquet, SQL tables. Loaded once per file version, checked against the
declared schema, and kept in memory (only the declared columns)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pandas as pd

from node_agent.config import DatasetConfig
from tessera.errors import ConfigInvalid


def _version(ds: DatasetConfig) -> Any:
    if ds.source == "sql":
        return None  # databases change without a file stamp; see DatasetCache.get(refresh=...)
    assert ds.path is not None
    try:
        stat = Path(ds.path).stat()
    except FileNotFoundError:
        raise ConfigInvalid(f"dataset {ds.name!r}: file not found: {ds.path}") from None
    return (stat.st_mtime_ns, stat.st_size)


def read_source(ds: DatasetConfig) -> pd.DataFrame:
    columns = [c.name for c in ds.columns]
    try:
        if ds.source == "csv":
            frame = pd.read_csv(ds.path, usecols=lambda c: c in columns)
        elif ds.source == "parquet":
            frame = pd.read_parquet(ds.path)
        else:
            import sqlalchemy

            assert ds.url is not None and ds.table is not None
            engine = sqlalchemy.create_engine(ds.url.get_secret_value())
            try:
                table = sqlalchemy.Table(ds.table, sqlalchemy.MetaData(), autoload_with=engine)
                with engine.connect() as conn:
                    frame = pd.read_sql(sqlalchemy.select(table), conn)
            finally:
                engine.dispose()
    except ConfigInvalid:
        raise
    except Exception as exc:
        raise ConfigInvalid(
            f"dataset {ds.name!r}: cannot read its {ds.source} source: {type(exc).__name__}: {exc}"
        ) from None
    return check_frame(ds, frame)


def check_frame(ds: DatasetConfig, frame: pd.DataFrame) -> pd.DataFrame:
    """The declared columns, typed; a clear error naming the first column that breaks the schema."""
    missing = [c.name for c in ds.columns if c.name not in frame.columns]
    if missing:
        raise ConfigInvalid(
            f"dataset {ds.name!r}: declared column(s) missing from the data: {', '.join(missing)}"
        )
    out = {}
    for col in ds.columns:
        series = frame[col.name]
        where = f"dataset {ds.name!r}, column {col.name!r}"
        if col.type == "categorical":
            text = series.astype("object").where(series.notna(), None)
            text = text.map(
                lambda v: (
                    v
                    if v is None
                    else (str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
                )
            )
            unknown = sorted(set(text.dropna()) - set(col.levels or []))
            if unknown:
                raise ConfigInvalid(f"{where}: value(s) {unknown[:5]} are not declared levels")
            out[col.name] = text
        elif col.type == "boolean":
            mapped = series.map(_boolean)
            if (mapped.isna() & series.notna()).any():
                raise ConfigInvalid(f"{where}: values must be true/false (or 1/0)")
            out[col.name] = mapped.map({True: 1.0, False: 0.0}).astype("float64")
        else:
            numeric = pd.to_numeric(series, errors="coerce")
            if (numeric.isna() & series.notna()).any():
                raise ConfigInvalid(f"{where}: non-numeric values in a {col.type} column")
            if col.type == "integer" and ((numeric.dropna() % 1) != 0).any():
                raise ConfigInvalid(f"{where}: non-integer values in an integer column")
            if col.min is not None and (numeric < col.min).any():
                raise ConfigInvalid(f"{where}: values below the declared minimum {col.min}")
            if col.max is not None and (numeric > col.max).any():
                raise ConfigInvalid(f"{where}: values above the declared maximum {col.max}")
            out[col.name] = numeric.astype("float64")
    return pd.DataFrame(out)


def _boolean(value: Any) -> Any:
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, str):
        return {"true": True, "1": True, "false": False, "0": False}.get(value.strip().lower())
    if value in (0, 1, True, False):
        return bool(value)
    return None


class DatasetCache:
    """Frames by dataset name, re-read only when the file changes (SQL: on `refresh`)."""

    def __init__(self) -> None:
        self._frames: dict[str, tuple[Any, pd.DataFrame]] = {}
        self._lock = threading.Lock()
        self.reads = 0

    def get(self, ds: DatasetConfig, refresh: bool = False) -> pd.DataFrame:
        version = _version(ds)
        with self._lock:
            cached = self._frames.get(ds.name)
            if cached is not None and cached[0] == version and not refresh:
                return cached[1]
            frame = read_source(ds)
            self.reads += 1
            self._frames[ds.name] = (version, frame)
            return frame
