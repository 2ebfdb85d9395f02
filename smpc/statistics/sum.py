"""`sum`: the pooled sum of a numeric column over rows meeting `where` (missing values skipped).

Each party shares its row count and its local Σx (fixed point, 2⁻⁴⁰ resolution) per group;
both are pooled inside MPC and opened only for groups at or above `min_count`.

With `dp`: the count and Σx (of values clipped to the declared bounds) each get discrete Laplace
noise of ε/2 inside MPC (`smpc.dp`); only the noisy values are opened.

Reveals: per released group the pooled n and Σx, noisy with `dp`; which groups are suppressed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pandas as pd

from smpc.query import ColumnQuery
from smpc.statistics.base import Opened, SecureStatistic, number


class SumQuery(ColumnQuery):
    statistic: Literal["sum"]


class Sum(SecureStatistic):
    name = "sum"
    query_model = SumQuery
    supports_dp = True
    numeric_column = True
    result_fields = {"sum": float | None}
    moments = ("sum",)

    def cell_values(self, opened: Opened, cell: int) -> dict[str, Any]:
        return {"sum": number(opened.moments["sum"][cell])}

    def empty_values(self) -> dict[str, Any]:
        return {"sum": None}

    def reference_values(self, sub: pd.DataFrame) -> dict[str, Any]:
        assert self.column is not None
        return {"sum": float(sub[self.column].sum())}
