"""The layout of a result: groups (the product of `group_by` levels) × bins.

A *cell* is the unit of disclosure control: every count that `min_count` protects is one cell.
All parties derive the same layout from the query and the declared schema alone, never from
their data, so a group or level absent at one site still has its cell everywhere.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from tessera.schemas import DatasetSchema


@dataclass(frozen=True)
class CellLayout:
    group_columns: tuple[str, ...]
    levels: tuple[tuple[str, ...], ...]  # each grouping column's levels, in schema order
    bins: int = 1

    @classmethod
    def build(cls, group_by: list[str], schema: DatasetSchema, bins: int = 1) -> CellLayout:
        levels = []
        for name in group_by:
            spec = schema.column(name)
            assert spec is not None
            levels.append(tuple(spec.group_levels()))
        return cls(tuple(group_by), tuple(levels), bins)

    @property
    def groups(self) -> list[tuple[str, ...]]:
        """One tuple of levels per group, in result order (the last column varies fastest)."""
        return list(itertools.product(*self.levels))

    @property
    def size(self) -> int:
        return len(self.groups) * self.bins

    def group_codes(self, frame: pd.DataFrame) -> np.ndarray:
        """Each row's group index (−1 if a grouping value is missing)."""
        codes = np.zeros(len(frame), dtype=np.int64)
        valid = np.ones(len(frame), dtype=bool)
        stride = 1
        for name, levels in reversed(list(zip(self.group_columns, self.levels, strict=True))):
            col = frame[name]
            if col.dtype == object:
                lookup = {lv: i for i, lv in enumerate(levels)}
                idx = col.map(lookup).fillna(-1).to_numpy(dtype=np.int64)
            else:  # boolean columns arrive as 0.0 / 1.0
                values = col.to_numpy(dtype=float)
                idx = np.where(np.isnan(values), -1, np.nan_to_num(values)).astype(np.int64)
            valid &= idx >= 0
            codes += np.maximum(idx, 0) * stride
            stride *= len(levels)
        return np.where(valid, codes, -1)

    def group_label(self, g: int) -> dict[str, str]:
        return dict(zip(self.group_columns, self.groups[g], strict=True))
