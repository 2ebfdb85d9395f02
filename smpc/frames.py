"""Plain data handling at a party: conform a frame to its schema, filter rows, infer schemas.

All of this runs locally, on one party's rows, before anything is secret-shared. Checking rows
against a schema and reading a schema off rows are the kernel's (`tessera.columns`); this
module gives them the form the statistics read (numbers as float64) and their error class
(`QueryInvalid`).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from smpc.query import Condition
from tessera.columns import conform as columns_conform
from tessera.columns import infer_schema as columns_infer_schema
from tessera.errors import QueryInvalid
from tessera.schemas import ColumnSpec, DatasetSchema


def _level_text(value: object) -> str:
    """A `where` value as the level text it compares with (as `tessera.columns` reads data)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def conform(frame: pd.DataFrame, schema: DatasetSchema, columns: Sequence[str]) -> pd.DataFrame:
    """The named columns of `frame` as the statistics read them: categoricals as strings
    (None where missing), booleans and numbers as float64 (NaN where missing).

    The checking is the kernel's (`tessera.columns.conform`): `QueryInvalid` for a column the
    schema does not declare or the frame lacks, or one that breaks its declared type. Declared
    bounds are not checked here: with `dp` the statistics clip to them, and the ones that need
    rows within them (Kaplan–Meier's grid) refuse in their own words.
    """
    typed = columns_conform(frame, schema, columns, check_bounds=False, error=QueryInvalid)
    out = {
        name: series if series.dtype == object else series.astype("float64")
        for name, series in typed.items()
    }
    return pd.DataFrame(out, index=frame.index)


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
    """A schema for `simulate`, read off the frames by the kernel's one inference
    (`tessera.columns.infer_schema`; `QueryInvalid` when it refuses). Without bounds: bounds are
    a declaration, and a dp sum or mean, or a Kaplan–Meier time, needs them declared."""
    return columns_infer_schema(frames, observed_bounds=False, error=QueryInvalid)


def uneven_shares(frame: pd.DataFrame, parties: int) -> list[pd.DataFrame]:
    """Split a pooled frame into contiguous, uneven hospital shares for `simulate`: party i
    holds a share proportional to i + 1 (how the tests and benchmarks play several sites)."""
    weights = np.arange(1, parties + 1)
    cuts = [0, *(np.cumsum(weights) / weights.sum() * len(frame)).astype(int)]
    return [frame.iloc[a:b].reset_index(drop=True) for a, b in itertools.pairwise(cuts)]
