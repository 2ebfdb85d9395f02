"""`mean`: the pooled arithmetic mean of a numeric column (missing values skipped).

Each party shares its row count and local Σx per group. The pooled n and Σx are opened for
released groups and the mean is Σx / n, computed exactly on the opened rationals. Opening Σx
reveals nothing beyond the result: Σx = n · mean.

With `dp`: the count and Σx (of values clipped to the declared bounds) each get discrete Laplace
noise of ε/2 inside MPC (`smpc.dp`); the mean is the noisy Σx over the noisy n, computed after
opening (post-processing, no further ε) and clamped into the bounds; it is null when the noisy
n is 0.

Reveals: per released group the pooled n and mean (equivalently Σx), noisy with `dp`; which
groups are suppressed.
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pandas as pd

from smpc.query import ColumnQuery
from smpc.statistics.base import Opened, SecureStatistic, number


class MeanQuery(ColumnQuery):
    statistic: Literal["mean"]


class Mean(SecureStatistic):
    name = "mean"
    query_model = MeanQuery
    supports_dp = True
    numeric_column = True
    result_fields = {"mean": float | None}
    moments = ("sum",)

    def cell_values(self, opened: Opened, cell: int) -> dict[str, Any]:
        n = opened.counts[cell]
        total = opened.moments["sum"][cell]
        if not n or total is None:
            return {"mean": None}
        mean = total / n
        if self.clip_bounds is not None:  # dp: post-processing of the noisy values
            lo, hi = self.clip_bounds
            mean = min(max(mean, Fraction(lo)), Fraction(hi))
        return {"mean": number(mean)}

    def empty_values(self) -> dict[str, Any]:
        return {"mean": None}

    def reference_values(self, sub: pd.DataFrame) -> dict[str, Any]:
        assert self.column is not None
        return {"mean": number(sub[self.column].mean()) if len(sub) else None}
