"""Plain data handling at a party: conform a frame to its schema, filter rows, infer schemas.

All of this runs locally, on one party's rows, before anything is secret-shared.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from smpc.query import Condition
from tessera.errors import QueryInvalid
from tessera.schemas import ColumnSpec, DatasetSchema


def _categorical_text(series: pd.Series) -> pd.Series:
    """Categorical values as strings (the form levels take), missing values kept missing."""
    out = series.astype("object").where(series.notna(), None)
    return out.map(lambda v: v if v is None else _level_text(v))


def _level_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def conform(frame: pd.DataFrame, schema: DatasetSchema, columns: Sequence[str]) -> pd.DataFrame:
    """The named columns of `frame`, typed as the schema declares (categoricals as strings).

    Raises `QueryInvalid` when a column is missing or cannot hold its declared type.
    """
    out: dict[str, pd.Series] = {}
    for name in columns:
        spec = schema.column(name)
        if spec is None or name not in frame.columns:
            raise QueryInvalid(f"unknown column {name!r}", {"column": name})
        series = frame[name]
        if spec.type == "categorical":
            out[name] = _categorical_text(series)
        elif spec.type == "boolean":
            if pd.api.types.is_bool_dtype(series.dtype):
                out[name] = series.astype("float64")
            else:
                numeric = pd.to_numeric(series.map(_boolean_number), errors="coerce")
                out[name] = numeric.astype("float64")
        else:
            numeric = pd.to_numeric(series, errors="coerce")
            bad = numeric.isna() & series.notna()
            if bad.any():
                raise QueryInvalid(
                    f"column {name!r} is declared {spec.type} but holds non-numeric values",
                    {"column": name},
                )
            out[name] = numeric.astype("float64")
    return pd.DataFrame(out, index=frame.index)


def _boolean_number(value: object) -> float:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.nan
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "1", "yes"):
            return 1.0
        if low in ("false", "0", "no"):
            return 0.0
        return np.nan
    return 1.0 if bool(value) else 0.0


def _comparable(spec: ColumnSpec, value: object) -> Any:
    if spec.type == "categorical":
        return _level_text(value)
    if spec.type == "boolean":
        return 1.0 if value in (True, 1) else 0.0
    return float(value)  # type: ignore[arg-type]


_COMPARE = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def select(frame: pd.DataFrame, where: Sequence[Condition], schema: DatasetSchema) -> pd.Series:
    """Boolean mask of the rows meeting every condition (missing values never match)."""
    mask = pd.Series(True, index=frame.index)
    for cond in where:
        spec = schema.column(cond.column)
        assert spec is not None
        col = frame[cond.column]
        present = col.notna()
        if cond.op == "in":
            values = [_comparable(spec, v) for v in cond.value]  # type: ignore[union-attr]
            hit = col.isin(values)
        else:
            hit = _COMPARE[cond.op](col, _comparable(spec, cond.value))
        mask &= hit.fillna(False).astype(bool) & present
    return mask


def infer_schema(frames: Sequence[pd.DataFrame]) -> DatasetSchema:
    """A schema for `simulate`: numeric dtypes stay numeric, anything else is categorical with
    the sorted union of the values seen in all frames as its levels."""
    if not frames:
        raise QueryInvalid("no data frames given")
    names = list(frames[0].columns)
    for i, f in enumerate(frames[1:], start=1):
        if list(f.columns) != names:
            missing = sorted(set(names) ^ set(f.columns))
            raise QueryInvalid(
                f"frame {i} does not have the same columns as frame 0 (differs in: "
                f"{', '.join(map(str, missing)) or 'column order'})",
                {"frame": i},
            )
    columns = []
    for name in names:
        dtypes = {f[name].dtype for f in frames}
        if all(pd.api.types.is_bool_dtype(d) for d in dtypes):
            columns.append(ColumnSpec(name=name, type="boolean"))
        elif all(pd.api.types.is_integer_dtype(d) for d in dtypes):
            columns.append(ColumnSpec(name=name, type="integer"))
        elif all(pd.api.types.is_numeric_dtype(d) for d in dtypes):
            columns.append(ColumnSpec(name=name, type="float"))
        else:
            seen: set[str] = set()
            for f in frames:
                seen.update(v for v in _categorical_text(f[name]) if v is not None)
            if not seen:
                raise QueryInvalid(f"column {name!r} has no values to infer levels from")
            columns.append(ColumnSpec(name=name, type="categorical", levels=sorted(seen)))
    return DatasetSchema(columns=columns)


def uneven_shares(frame: pd.DataFrame, parties: int) -> list[pd.DataFrame]:
    """Split a pooled frame into contiguous, uneven hospital shares for `simulate`: party i
    holds a share proportional to i + 1 (how the tests and benchmarks play several sites)."""
    weights = np.arange(1, parties + 1)
    cuts = [0, *(np.cumsum(weights) / weights.sum() * len(frame)).astype(int)]
    return [frame.iloc[a:b].reset_index(drop=True) for a, b in itertools.pairwise(cuts)]
