"""Rows compared across tables: one canonical form and one key per row.

Exact copies are counted by these keys (`synth.evaluate`), and `cart` leaves out a synthetic row
whose key is that of a row seen once in training (a replicated unique) with the same keys, so
that what the generator avoids and what the evaluation counts are the same thing.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from synth.metadata import TableMetadata


def canonical(frame: pd.DataFrame, metadata: TableMetadata) -> pd.DataFrame:
    """Numbers as float, categoricals and booleans as text or None: comparable across tables."""
    out = {}
    for c in metadata.columns:
        s = frame[c.name]
        if c.is_numeric:
            out[c.name] = pd.to_numeric(s, errors="coerce").astype(float)
        elif c.kind == "boolean":
            out[c.name] = s.map(_bool_text).astype(object)
        else:
            out[c.name] = s.map(lambda v: None if v is None or pd.isna(v) else str(v)).astype(
                object
            )
    return pd.DataFrame(out).reset_index(drop=True)


def _bool_text(value: Any) -> str | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    text = str(value).strip().lower()
    if text in ("true", "1", "1.0", "yes"):
        return "True"
    if text in ("false", "0", "0.0", "no"):
        return "False"
    return None


def row_keys(frame: pd.DataFrame, metadata: TableMetadata) -> list[int]:
    """One hash per row over its canonical values (numbers to 9 decimals, missing as such):
    equal keys are equal rows."""
    parts = {}
    for c in metadata.columns:
        s = frame[c.name]
        if c.is_numeric:
            parts[c.name] = s.astype(float).round(9).map(lambda v: "" if pd.isna(v) else repr(v))
        else:
            parts[c.name] = s.map(lambda v: "" if v is None or pd.isna(v) else f"={v}")
    canonical = pd.DataFrame(parts)
    return pd.util.hash_pandas_object(canonical, index=False).tolist()
