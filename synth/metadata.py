"""Table metadata: what a generator must keep of each column.

A `Column` is a column's schema (`tessera.schemas.ColumnSpec`, the one column model) plus what
training adds: whether it may be missing, how often it was, and whether its domain was declared.

`TableMetadata` is detected from a frame (`from_frame`: the kernel's inference,
`tessera.columns.infer_schema`, with observed bounds) or built from the dataset schema a node
registered (`from_schema`, the declared types, categorical levels and bounds win over what the
rows happen to show); `schema` gives its columns back as a `DatasetSchema`. It checks a training
frame (`check`: the kernel's conformer, `tessera.columns.conform`), and turns what a generator
produced back into the real table's shape (`restore`): the same columns in the same order,
integers rounded, floats rounded to the decimals their training values carry (`decimals`,
learned by `with_decimals`), values clipped to the declared bounds, categoricals as pandas
categoricals with the declared levels, booleans as booleans, and missing values where the
column allows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from tessera.columns import conform, infer_schema
from tessera.errors import InvalidRequest
from tessera.schemas import ColumnSpec, ColumnType, DatasetSchema


@dataclass(frozen=True)
class Column:
    """One column: its schema (`spec`: kind, levels or bounds, as a node declares a column),
    whether it may be missing (and how often it was in training: `missing_rate`), and whether
    its domain was declared (`declared`) or read off the rows."""

    spec: ColumnSpec
    nullable: bool = False
    missing_rate: float = 0.0
    # True when min/max (and levels) come from a declared schema, not from the rows: only
    # then is the domain public, as a differentially private generator needs it to be.
    declared: bool = False
    # The decimals a float column's values carry (`decimals_of`): synthetic values are rounded
    # to them. None: not known, or more than `MAX_DECIMALS` (a continuous column), not rounded.
    decimals: int | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> ColumnType:
        return self.spec.type

    @property
    def levels(self) -> tuple[str, ...] | None:
        return tuple(self.spec.levels) if self.spec.levels is not None else None

    @property
    def min(self) -> float | None:
        return self.spec.min

    @property
    def max(self) -> float | None:
        return self.spec.max

    @property
    def is_numeric(self) -> bool:
        """Float or integer (a generator models a boolean as a category, not a number)."""
        return self.kind in ("float", "integer")

    def to_json(self) -> dict[str, Any]:
        """The keys saved model files have always had (a flat column, `kind` for the type)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "levels": list(self.levels) if self.levels is not None else None,
            "min": self.min,
            "max": self.max,
            "nullable": self.nullable,
            "missing_rate": self.missing_rate,
            "declared": self.declared,
            "decimals": self.decimals,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Column:
        try:
            spec = ColumnSpec(
                name=raw["name"],
                type=raw["kind"],
                levels=raw.get("levels"),
                min=raw.get("min"),
                max=raw.get("max"),
            )
        except (KeyError, ValueError) as exc:
            raise InvalidRequest(f"a saved column cannot be read: {exc}") from None
        return cls(
            spec,
            nullable=bool(raw.get("nullable", False)),
            missing_rate=float(raw.get("missing_rate", 0.0)),
            declared=bool(raw.get("declared", False)),
            decimals=_decimals_field(raw.get("decimals")),
        )


@dataclass(frozen=True)
class TableMetadata:
    columns: tuple[Column, ...] = field(default_factory=tuple)

    # ---- building ---------------------------------------------------------------------

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> TableMetadata:
        """The kernel's inference (`tessera.columns.infer_schema`, see there: bool → boolean,
        integer → integer, float → float, text or pandas categorical → categorical, a
        categorical's own order kept; datetimes and identifiers refused), with the observed
        min and max as bounds (so not `declared`) and each column's missing rate."""
        schema = infer_schema([frame], observed_bounds=True, error=InvalidRequest)
        return cls(tuple(_with_missing(Column(spec), frame[spec.name]) for spec in schema.columns))

    @classmethod
    def from_schema(cls, schema: DatasetSchema, frame: pd.DataFrame | None = None) -> TableMetadata:
        """The declared schema of a node's dataset; `frame` (the training rows) adds which
        columns have missing values and, for numeric columns without declared bounds, the
        observed ones."""
        columns = []
        for spec in schema.columns:
            bounded = spec.type not in ("float", "integer") or (
                spec.min is not None and spec.max is not None
            )
            column = Column(spec.model_copy(deep=True), declared=bounded)
            if frame is not None and spec.name in frame.columns:
                series = frame[spec.name]
                column = _with_missing(column, series)
                if column.is_numeric and series.notna().any():
                    values = pd.to_numeric(series, errors="coerce")
                    observed = {"min": float(values.min()), "max": float(values.max())}
                    unset = {k: v for k, v in observed.items() if getattr(spec, k) is None}
                    # Not validated again: rows beyond a declared bound are `check`'s to refuse.
                    column = replace(column, spec=spec.model_copy(update=unset))
            columns.append(column)
        return cls(tuple(columns))

    def with_missing_rates(self, frame: pd.DataFrame) -> TableMetadata:
        """The same columns, marked nullable where `frame` has missing values."""
        columns = []
        for c in self.columns:
            missing = float(frame[c.name].isna().mean()) if len(frame) else 0.0
            columns.append(replace(c, nullable=c.nullable or missing > 0, missing_rate=missing))
        return TableMetadata(tuple(columns))

    def with_decimals(self, frame: pd.DataFrame) -> TableMetadata:
        """The same columns, each float column with the decimals its values in `frame` carry
        (`decimals_of`); integers have none by their type. What this learns from the rows is a
        fact of the schema (a weight recorded to 0.1 kg), not of a patient, but it is read
        off the rows: a differentially private generator does not call it (its ε does not
        cover it), so its float output is not rounded."""
        columns = []
        for c in self.columns:
            if c.kind == "float" and c.name in frame.columns:
                c = replace(c, decimals=decimals_of(frame[c.name]))
            columns.append(c)
        return TableMetadata(tuple(columns))

    # ---- reading ------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def schema(self) -> DatasetSchema:
        """The columns' schema, as a node declares one (bounds read off the rows included, on
        columns not `declared`): what `check` checks a frame against."""
        return DatasetSchema(columns=[c.spec for c in self.columns])

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
        """The frame's declared columns, in order, checked by the kernel's one conformer
        (`tessera.columns.conform`: levels, booleans, numbers, whole integers, bounds; its
        messages name the column and rows, never a value) and in the form the generators read:
        numbers as float, categoricals as text or None, booleans as object of bool/None.
        Raises `InvalidRequest`, also for a table without rows."""
        typed = conform(frame, self.schema, error=InvalidRequest)
        if len(frame) == 0:
            raise InvalidRequest("the table has no rows")
        out = {}
        for c in self.columns:
            series = typed[c.name]
            if c.kind == "boolean":
                out[c.name] = series.astype(object).where(series.notna(), None)
            elif c.is_numeric:
                out[c.name] = series.astype("float64")
            else:
                out[c.name] = series
        return pd.DataFrame(out, index=frame.index)

    def restore(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A generator's output in the real table's shape and dtypes (see the module doc)."""
        out = {}
        for c in self.columns:
            out[c.name] = _restored(c, frame[c.name]) if c.name in frame else _empty(c, len(frame))
        return pd.DataFrame(out).reset_index(drop=True)


MAX_DECIMALS = 6  # a column with more decimals than this is continuous: not rounded


def decimals_of(series: pd.Series) -> int | None:
    """The fewest decimals (0 to `MAX_DECIMALS`) that every value of a numeric column is
    written with (12.5 and 3.25: 2); None when there is no value or more decimals."""
    values = pd.to_numeric(series, errors="coerce").dropna().to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tolerance = 1e-9 * np.maximum(1.0, np.abs(values))
    for digits in range(MAX_DECIMALS + 1):
        if np.all(np.abs(np.round(values, digits) - values) <= tolerance):
            return digits
    return None


def _decimals_field(raw: Any) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_DECIMALS:
        raise InvalidRequest(f"a saved column's decimals must be 0 to {MAX_DECIMALS}, not {raw!r}")
    return raw


def _with_missing(column: Column, series: pd.Series) -> Column:
    missing = float(series.isna().mean()) if len(series) else 0.0
    return replace(column, nullable=missing > 0, missing_rate=missing)


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
    if c.kind == "float" and c.decimals is not None:
        values = values.round(c.decimals)
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
