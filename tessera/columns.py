"""Rows meet a column schema: infer a `DatasetSchema` from frames, conform a frame to one.

`tessera.schemas.ColumnSpec` is the one model of a column; this module is the one place that
reads a schema off data (`infer_schema`) and the one place that checks data against a declared
schema and types it (`conform`). The node checks its datasets with it, the MPC statistics type
their rows with it, and the synthetic-data generators check their training table with it, so a
value accepted by one is accepted by all, in the same form.

`conform`'s error messages name the column, what is wrong, how many rows and the first row
number, never a value: they end up in logs and, from a node, at the coordinator. The error class
is the caller's (`DataInvalid` for a node's dataset, `QueryInvalid` for a query's rows,
`InvalidRequest` for a table handed to a library), the wording is this module's.

pandas is imported here, not in `tessera.schemas`, which the coordinator uses without it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from tessera.errors import DataInvalid, InvalidRequest, TesseraError
from tessera.schemas import COLUMN_PATTERN, ColumnSpec, DatasetSchema

MAX_LEVELS = 1000  # a text column with more distinct values is an identifier, not a category

# The spellings of a boolean (after trimming and lower-casing).
_TRUTH = {
    "true": True, "t": True, "yes": True, "1": True, "1.0": True,
    "false": False, "f": False, "no": False, "0": False, "0.0": False,
}  # fmt: skip

# A float column whose values are all whole and below this reads as integers ("3", not "3.0").
_EXACT_INTEGERS = 2.0**53


# ---- inference ------------------------------------------------------------------------------


def infer_schema(
    frames: Sequence[pd.DataFrame],
    *,
    observed_bounds: bool = False,
    error: type[TesseraError] = InvalidRequest,
) -> DatasetSchema:
    """The schema the rows of `frames` (one table, split in parts with the same columns) show.

    Each column's type, from its dtypes in every frame: bool → boolean; text holding only
    booleans → boolean; pandas categorical (in every frame) → categorical with its categories,
    in their order; integer → integer; any other number (a mix of bool and integer included)
    → float; anything else → categorical with the sorted text values seen in any frame as its
    levels. Refused (raising `error`): no frames, no columns, frames with different columns, a
    column name a schema cannot hold, dates or times, a text column with more than
    `MAX_LEVELS` distinct values (an identifier or free text), a text column with no values.

    With `observed_bounds`, numeric columns get the smallest and largest value seen as
    `min`/`max`. Off by default: bounds are a declaration (they calibrate differential privacy
    and the Kaplan–Meier grid), and rows must not declare them unless the caller says so.
    """
    if not frames:
        raise error("no data frames given")
    names = list(frames[0].columns)
    for i, f in enumerate(frames[1:], start=1):
        if list(f.columns) != names:
            differ = sorted(map(str, set(names) ^ set(f.columns)))
            raise error(
                f"frame {i} does not have the same columns as frame 0 (differs in: "
                f"{', '.join(differ) or 'column order'})",
                {"frame": i},
            )
    if not names:
        raise error("the table has no columns")
    columns = []
    for name in names:
        if not isinstance(name, str) or len(name) > 128 or not re.fullmatch(COLUMN_PATTERN, name):
            raise error(
                f"column name {str(name)[:40]!r} cannot be used: a column's name is 1 to 128 "
                "characters, without control characters or spaces around it; rename the column",
                {"column": str(name)[:128]},
            )
        spec = _inferred_column(name, [f[name] for f in frames], error)
        if observed_bounds and spec.type in ("float", "integer"):
            spec = spec.model_copy(update=_observed_bounds([f[name] for f in frames]))
        columns.append(spec)
    return DatasetSchema(columns=columns)


def _inferred_column(name: str, parts: list[pd.Series], error: type[TesseraError]) -> ColumnSpec:
    dtypes = [s.dtype for s in parts]
    if any(
        pd.api.types.is_datetime64_any_dtype(d) or pd.api.types.is_timedelta64_dtype(d)
        for d in dtypes
    ):
        raise error(
            f"column {name!r} holds dates or times: convert it to a number (e.g. days since an "
            "origin) first",
            {"column": name},
        )
    if all(pd.api.types.is_bool_dtype(d) for d in dtypes) or _only_booleans(parts):
        return ColumnSpec(name=name, type="boolean")
    if all(isinstance(d, pd.CategoricalDtype) for d in dtypes):
        levels: dict[str, None] = {}  # in order of first appearance
        for s in parts:
            levels.update(dict.fromkeys(_category_text(s)))
        if not levels:
            raise error(f"column {name!r} has no values to infer levels from", {"column": name})
        return ColumnSpec(name=name, type="categorical", levels=list(levels))
    if all(pd.api.types.is_integer_dtype(d) for d in dtypes):
        return ColumnSpec(name=name, type="integer")
    if all(pd.api.types.is_numeric_dtype(d) for d in dtypes):
        return ColumnSpec(name=name, type="float")
    seen: set[str] = set()
    for s in parts:
        seen.update(v for v in _text_values(s) if v is not None)
    if len(seen) > MAX_LEVELS:
        raise error(
            f"column {name!r} has {len(seen)} distinct values: an identifier or free text, not "
            "a category; drop it",
            {"column": name, "levels": len(seen)},
        )
    if not seen:
        raise error(f"column {name!r} has no values to infer levels from", {"column": name})
    return ColumnSpec(name=name, type="categorical", levels=sorted(seen))


def _only_booleans(parts: list[pd.Series]) -> bool:
    """Text (object) columns holding nothing but booleans and missing values, at least one."""
    present = 0
    for s in parts:
        if pd.api.types.is_bool_dtype(s.dtype):
            present += int(s.notna().sum())
            continue
        if s.dtype != object:
            return False
        values = s.dropna()
        if not values.map(lambda v: isinstance(v, bool | np.bool_)).all():
            return False
        present += len(values)
    return present > 0


def _observed_bounds(parts: list[pd.Series]) -> dict[str, float | None]:
    values = pd.concat([pd.to_numeric(s, errors="coerce") for s in parts]).dropna()
    if not len(values):
        return {"min": None, "max": None}
    return {"min": float(values.min()), "max": float(values.max())}


# ---- conforming -----------------------------------------------------------------------------


def conform(
    frame: pd.DataFrame,
    schema: DatasetSchema,
    columns: Sequence[str] | None = None,
    *,
    check_bounds: bool = True,
    error: type[TesseraError] = DataInvalid,
) -> pd.DataFrame:
    """The named columns of `frame` (default: every column of `schema`, in its order), checked
    against their declared types and typed; the index is `frame`'s.

    Categoricals become text (object of str, None where missing) and must be declared levels;
    booleans become pandas ``boolean`` from bools or true/false, t/f, 1/0, yes/no; integers
    become ``Int64`` and must be whole; floats become ``float64``; missing values stay missing.
    With `check_bounds`, numbers outside the declared `min`/`max` are refused too (without it,
    the caller handles them: the statistics clip to the bounds, or refuse in their own words).

    Raises `error` for a column the schema does not declare, a declared column the frame lacks,
    or a column breaking its declaration; the message says how many rows and the first row
    number (1 for the frame's first row), never a value.
    """
    names = schema.names if columns is None else list(columns)
    specs = []
    for name in names:
        spec = schema.column(name)
        if spec is None:
            raise error(f"unknown column {name!r}", {"column": name})
        specs.append(spec)
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise error(
            f"declared column(s) missing from the data: {', '.join(missing)}", {"columns": missing}
        )
    out = {spec.name: _conformed(spec, frame[spec.name], check_bounds, error) for spec in specs}
    return pd.DataFrame(out, index=frame.index)


def _conformed(
    spec: ColumnSpec, series: pd.Series, check_bounds: bool, error: type[TesseraError]
) -> pd.Series:
    def fail(bad: pd.Series, problem: str) -> TesseraError:
        return error(f"column {spec.name!r}: {_rows(bad)} {problem}", {"column": spec.name})

    if spec.type == "categorical":
        levels = list(spec.levels or [])
        text_dtype = series.dtype == object or isinstance(series.dtype, pd.StringDtype)
        if text_dtype and all(level == level.strip() for level in levels):
            # Already text of declared levels (a node's checked dataset is): nothing to convert.
            present = series.notna()
            if (series.isin(levels) | ~present).all():
                return series.astype(object).where(present, None)
        text = _text_values(series)
        bad = text.notna() & ~text.isin(levels)
        if bad.any():
            raise fail(bad, f"not among the declared levels {levels}")
        return text
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(object)
    if spec.type == "boolean":
        if pd.api.types.is_bool_dtype(series.dtype):
            return series.astype("boolean")
        typed = series.astype("string").str.strip().str.lower().map(_TRUTH).astype("boolean")
        bad = typed.isna() & series.notna()
        if bad.any():
            raise fail(bad, "not true/false (or 1/0, yes/no)")
        return typed
    numeric = pd.to_numeric(series, errors="coerce")
    bad = numeric.isna() & series.notna()
    if bad.any():
        raise fail(bad, f"not numeric in a {spec.type} column")
    numeric = numeric.astype("float64")
    if spec.type == "integer":
        bad = numeric.notna() & (numeric != numeric.round())
        if bad.any():
            raise fail(bad, "not whole numbers")
    if check_bounds:
        if spec.min is not None and (bad := numeric < spec.min).any():
            raise fail(bad, f"below the declared minimum {spec.min:g}")
        if spec.max is not None and (bad := numeric > spec.max).any():
            raise fail(bad, f"above the declared maximum {spec.max:g}")
    return _whole_numbers(numeric) if spec.type == "integer" else numeric


def _whole_numbers(numeric: pd.Series) -> pd.Series:
    """Whole float64 values as ``Int64`` (built from the array: ``astype`` takes 20x longer)."""
    values = numeric.to_numpy(dtype="float64")
    missing = np.isnan(values)
    if not (np.abs(values[~missing]) < 2.0**63).all():
        return numeric.astype("Int64")  # beyond int64: as pandas says
    whole = np.where(missing, 0.0, values).astype(np.int64)
    return pd.Series(pd.arrays.IntegerArray(whole, missing), index=numeric.index)


def _rows(bad: pd.Series) -> str:
    count = int(bad.sum())
    first = int(np.flatnonzero(bad.to_numpy(dtype=bool))[0]) + 1
    return f"{count} row{'s' if count > 1 else ''} (first: data row {first})"


# ---- text -----------------------------------------------------------------------------------


def _text_values(series: pd.Series) -> pd.Series:
    """The values as categorical levels are written: trimmed text, whole floats without their
    ".0" (a level read as 3.0 from a file is "3"), a pandas categorical by its categories'
    text; object dtype, None where missing. Inference and `conform` both read text this way,
    so the levels inferred from rows are exactly the texts those rows conform to."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        labels = np.array([*_category_text(series), None], dtype=object)
        return pd.Series(labels[series.cat.codes.to_numpy()], index=series.index)  # -1: None
    if pd.api.types.is_float_dtype(series.dtype):
        present = series.dropna()
        if ((present == present.round()) & (present.abs() < _EXACT_INTEGERS)).all():
            series = series.astype("Int64")
    text = series.astype("string").str.strip()
    return text.astype(object).where(text.notna(), None)


def _category_text(series: pd.Series) -> list[str]:
    """A pandas categorical's categories as text, in their order."""
    categories = series.cat.categories
    return [str(v) for v in _text_values(pd.Series(categories, dtype=categories.dtype))]
