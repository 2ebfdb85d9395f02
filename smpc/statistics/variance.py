"""`variance`: pooled mean, sample variance (ddof = 1) and standard deviation of a column.

Each party shares its row count, Σx and Σx² per group. For released groups the pooled n, Σx
and Σx² are opened and the variance is (Σx² − (Σx)²/n) / (n − 1), evaluated exactly in
rational arithmetic on the opened fixed-point values, so there is no cancellation error beyond
each party's float64 Σx² (relative 1e-16 · (mean² + variance) / variance).

Reveals: per released group n, mean and variance (equivalently n, Σx, Σx²); which groups are
suppressed.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pandas as pd

from smpc.query import ColumnQuery
from smpc.statistics.base import Opened, SecureStatistic, number


class VarianceQuery(ColumnQuery):
    statistic: Literal["variance"]


class Variance(SecureStatistic):
    name = "variance"
    query_model = VarianceQuery
    numeric_column = True
    result_fields = {"mean": float | None, "variance": float | None, "std": float | None}
    moments = ("sum", "sumsq")

    def cell_values(self, opened: Opened, cell: int) -> dict[str, Any]:
        n = opened.counts[cell]
        s = opened.moments["sum"][cell]
        if not n or s is None:
            return self.empty_values()
        mean = s / n
        if n < 2:
            return {"mean": number(mean), "variance": None, "std": None}
        centred = opened.moments.get("centred", [None] * len(opened.counts))[cell]
        if centred is not None:  # exact mode: the perturbed centred moment, rounded
            variance = max(centred / (n * (n - 1)), Fraction(0))
        else:
            q = opened.moments["sumsq"][cell]
            assert q is not None
            variance = max((q - s * s / n) / (n - 1), Fraction(0))
        return {
            "mean": number(mean),
            "variance": number(variance),
            "std": math.sqrt(variance),
        }

    def empty_values(self) -> dict[str, Any]:
        return {"mean": None, "variance": None, "std": None}

    def reference_values(self, sub: pd.DataFrame) -> dict[str, Any]:
        assert self.column is not None
        col = sub[self.column]
        if len(col) == 0:
            return self.empty_values()
        return {
            "mean": number(col.mean()),
            "variance": number(col.var(ddof=1)),
            "std": number(col.std(ddof=1)),
        }
