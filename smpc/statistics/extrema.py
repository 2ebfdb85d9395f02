"""`min` and `max`: the pooled extreme of a numeric column (missing values skipped).

Each party shares its row count and the *order key* of its local extreme per group (an exact,
order-preserving integer image of the float64; an empty group shares a sentinel). Inside MPC
the extremes of released groups are combined with m − 1 secure comparisons and only the
winner is opened: no party learns which site holds it, nor any other site's local extreme.

Reveals: per released group the pooled n and the extreme value; which groups are suppressed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    import pandas as pd

from smpc.query import ColumnQuery
from smpc.statistics.base import Opened, SecureStatistic, number


class MinQuery(ColumnQuery):
    statistic: Literal["min"]


class MaxQuery(ColumnQuery):
    statistic: Literal["max"]


class Min(SecureStatistic):
    name = "min"
    query_model: ClassVar[type[ColumnQuery]] = MinQuery
    numeric_column = True
    result_fields = {"min": float | None}
    extreme: ClassVar[Literal["min", "max"] | None] = "min"
    moved_by_range = True

    def cell_values(self, opened: Opened, cell: int) -> dict[str, Any]:
        if not opened.counts[cell]:  # an empty cell released without a threshold
            return self.empty_values()
        return {self.name: number(self.within_bounds(opened.extremes[cell]))}

    def empty_values(self) -> dict[str, Any]:
        return {self.name: None}

    def reference_values(self, sub: pd.DataFrame) -> dict[str, Any]:
        assert self.column is not None
        col = sub[self.column]
        value = col.min() if self.extreme == "min" else col.max()
        return {self.name: number(value) if len(col) else None}


class Max(Min):
    name = "max"
    query_model = MaxQuery
    result_fields = {"max": float | None}
    extreme = "max"
