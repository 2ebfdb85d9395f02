"""Table metadata: what a generator must keep of each column.

`TableMetadata` is detected from a frame (`from_frame`) or built from the dataset schema a node
registered (`from_schema`, the declared types, categorical levels and bounds win over what the
rows happen to show). It checks a training frame (`check`), and turns what a generator produced
back into the real table's shape (`restore`): the same columns in the same order, integers
rounded, values clipped to the declared bounds, categoricals as pandas categoricals with the
declared levels, booleans as booleans, and missing values where the column allows them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from tessera.errors import InvalidRequest
from tessera.schemas import DatasetSchema

Kind = Literal["float", "integer", "boolean", "categorical"]
KINDS: tuple[str, ...] = ("float", "integer", "boolean", "categorical")
MAX_LEVELS = 1000  # a text column with more distinct values is an identifier, not a category


@dataclass(frozen=True)
class Column:
    """One column: its kind, its levels (categorical) or bounds (numeric), whether it may be
    missing (and how often it was in training: `missing_rate`), and whether its domain was
    declared (`declared`) or read off the rows."""

    name: str
    kind: Kind
    levels: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    nullable: bool = False
    missing_rate: float = 0.0
    # True when min/max (and levels) come from a declared schema, not from the rows: only
    # then is the domain public, as a differentially private generator needs it to be.
    declared: bool = False

    @property
    def is_numeric(self) -> bool:
        return self.kind in ("float", "integer")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["levels"] = list(self.levels) if self.levels is not None else None
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Column:
        levels = raw.get("levels")
        return cls(**{**raw, "levels": tuple(levels) if levels is not None else None})


@dataclass(frozen=True)
class TableMetadata:
    columns: tuple[Column, ...] = field(default_factory=tuple)

    # ---- building ---------------------------------------------------------------------

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> TableMetadata:
        """Detect each column's kind from its dtype: bool → boolean, integer → integer,
        float → float (a float column holding only whole numbers stays float), text or
        pandas categorical → categorical with its levels sorted (a categorical's own order is
        kept). Bounds are the observed min and max. Datetimes and identifiers are refused."""
        if frame.shape[1] == 0:
            raise InvalidRequest("the table has no columns")
        columns = []
        for name in frame.columns:
            series = frame[name]
            columns.append(_detect(str(name), series))
        return cls(tuple(columns))

    @classmethod
    def from_schema(cls, schema: DatasetSchema, frame: pd.DataFrame | None = None) -> TableMetadata:
        """The declared schema of a node's dataset; `frame` (the training rows) adds which
        columns have missing values and, for numeric columns without declared bounds, the
        observed ones."""
        columns = []
        for spec in schema.columns:
            levels = tuple(spec.levels) if spec.levels is not None else None
            bounded = spec.type not in ("float", "integer") or (
                spec.min is not None and spec.max is not None
            )
            column = Column(spec.name, spec.type, levels, spec.min, spec.max, declared=bounded)
            if frame is not None and spec.name in frame.columns:
                series = frame[spec.name]
                missing = float(series.isna().mean()) if len(series) else 0.0
                column = replace(column, nullable=missing > 0, missing_rate=missing)
                if column.is_numeric and series.notna().any():
                    values = pd.to_numeric(series, errors="coerce")
                    if column.min is None:
                        column = replace(column, min=float(values.min()))
                    if column.max is None:
                        column = replace(column, max=float(values.max()))
            columns.append(column)
        return cls(tuple(columns))

    def with_missing_rates(self, frame: pd.DataFrame) -> TableMetadata:
        """The same columns, marked nullable where `frame` has missing values."""
        columns = []
        for c in self.columns:
            missing = float(frame[c.name].isna().mean()) if len(frame) else 0.0
            columns.append(replace(c, nullable=c.nullable or missing > 0, missing_rate=missing))
        return TableMetadata(tuple(columns))

    # ---- reading ------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise InvalidRequest(f"no column {name!r}", {"column": name, "columns": self.names})

    def to_json(self) -> dict[str, Any]:
        return {"columns": [c.to_json() for c in self.columns]}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TableMetadata:
        return cls(tuple(Column.from_json(c) for c in raw["columns"]))

    # ---- checking and shaping ---------------------------------------------------------

    def check(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The frame's declared columns, in order, with canonical dtypes (numbers as float,
        categoricals as text, booleans as object of bool/None); raises `InvalidRequest`
        naming the column for a missing column, a level not declared, a value outside the
        bounds or a non-number in a numeric column. Never quotes a value."""
        missing = [n for n in self.names if n not in frame.columns]
        if missing:
            raise InvalidRequest(
                f"the table lacks column(s) {', '.join(missing)}", {"columns": missing}
            )
        if len(frame) == 0:
            raise InvalidRequest("the table has no rows")
        out = {}
        for c in self.columns:
            out[c.name] = _canonical(c, frame[c.name])
        return pd.DataFrame(out, index=frame.index)

    def restore(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A generator's output in the real table's shape and dtypes (see the module doc)."""
        out = {}
        for c in self.columns:
            out[c.name] = _restored(c, frame[c.name]) if c.name in frame else _empty(c, len(frame))
        return pd.DataFrame(out).reset_index(drop=True)


def _detect(name: str, series: pd.Series) -> Column:
    missing = float(series.isna().mean()) if len(series) else 0.0
    nullable = missing > 0
    dtype = series.dtype
    if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        raise InvalidRequest(
            f"column {name!r} holds dates or times: convert it to a number (e.g. days since an "
            "origin) before synthesis",
            {"column": name},
        )
    if pd.api.types.is_bool_dtype(dtype):
        return Column(name, "boolean", nullable=nullable, missing_rate=missing)
    if isinstance(dtype, pd.CategoricalDtype):
        levels = tuple(str(v) for v in dtype.categories)
        return Column(name, "categorical", levels, nullable=nullable, missing_rate=missing)
    if pd.api.types.is_numeric_dtype(dtype):
        values = pd.to_numeric(series, errors="coerce").dropna()
        kind: Kind = "integer" if pd.api.types.is_integer_dtype(dtype) else "float"
        lo = float(values.min()) if len(values) else None
        hi = float(values.max()) if len(values) else None
        return Column(name, kind, None, lo, hi, nullable, missing)
    present = series.dropna()
    if len(present) and present.map(lambda v: isinstance(v, bool)).all():
        return Column(name, "boolean", nullable=nullable, missing_rate=missing)
    levels = tuple(sorted({str(v) for v in present}))
    if len(levels) > MAX_LEVELS:
        raise InvalidRequest(
            f"column {name!r} has {len(levels)} distinct values: an identifier or free text, "
            "which a generator must not learn; drop it before synthesis",
            {"column": name, "levels": len(levels)},
        )
    if not levels:
        raise InvalidRequest(f"column {name!r} has no values", {"column": name})
    return Column(name, "categorical", levels, nullable=nullable, missing_rate=missing)


def _canonical(c: Column, series: pd.Series) -> pd.Series:
    present = series.notna()
    if c.kind == "categorical":
        text = series.map(lambda v: None if pd.isna(v) else str(v)).astype(object)
        assert c.levels is not None
        unknown = ~text[present].isin(c.levels)
        if unknown.any():
            raise InvalidRequest(
                f"column {c.name!r} holds a value that is not one of its {len(c.levels)} "
                "declared levels",
                {"column": c.name},
            )
        return text
    if c.kind == "boolean":
        mapped = series.map(_as_bool).astype(object)
        if mapped[present].isna().any():
            raise InvalidRequest(f"column {c.name!r} holds a non-boolean value", {"column": c.name})
        return mapped
    values = pd.to_numeric(series, errors="coerce").astype(float)
    if values[present].isna().any():
        raise InvalidRequest(f"column {c.name!r} holds a non-number", {"column": c.name})
    finite = values.dropna()
    if (c.min is not None and (finite < c.min).any()) or (
        c.max is not None and (finite > c.max).any()
    ):
        raise InvalidRequest(
            f"column {c.name!r} holds a value outside its declared bounds [{c.min}, {c.max}]",
            {"column": c.name},
        )
    return values


def _as_bool(value: Any) -> bool | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "1.0", "yes"):
        return True
    if text in ("false", "0", "0.0", "no"):
        return False
    return None


def _restored(c: Column, series: pd.Series) -> pd.Series:
    series = series.reset_index(drop=True)
    if c.kind == "categorical":
        assert c.levels is not None
        text = series.map(lambda v: None if pd.isna(v) else str(v))
        text = text.where(text.isin(c.levels))
        return pd.Series(pd.Categorical(text, categories=list(c.levels)), name=c.name)
    if c.kind == "boolean":
        mapped = series.map(_as_bool)
        if c.nullable:
            return mapped.astype("boolean")
        return mapped.fillna(False).astype(bool)
    values = pd.to_numeric(series, errors="coerce").astype(float)
    if c.min is not None or c.max is not None:
        values = values.clip(lower=c.min, upper=c.max)
    if c.kind == "integer":
        values = values.round()
        if c.nullable:
            return values.astype("Int64")
        return values.fillna(c.min if c.min is not None else 0).astype("int64")
    return values


def _empty(c: Column, n: int) -> pd.Series:
    return _restored(c, pd.Series([None] * n, dtype=object))
