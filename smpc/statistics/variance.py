"""`variance`: pooled mean, sample variance (ddof = 1) and standard deviation of a column.

Each party shares its row count, Σx and Σx² per group. In the exact mode the pooled n and
Σx and the centred n·Σx² − (Σx)² of released groups are perturbed by cell key and rounded
inside MPC (`smpc.protocol`); the variance is that moment over n′(n′ − 1). With `dp` the noisy
n, Σx and Σx² of values clipped to the declared bounds are opened (ε/3 each: the noisy
sufficient statistics) and the variance is (Σx² − (Σx)²/n) / (n − 1) on them, clamped to
[0, ((max − min)/2)²·n/(n − 1)] and the mean to the bounds (post-processing).

Reveals: per released group n, mean and variance (perturbed, or noisy with `dp`); which groups
are suppressed.
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
    supports_dp = True  # noisy n, Σx and Σx² of clipped values (ε/3 each)
    result_fields = {"mean": float | None, "variance": float | None, "std": float | None}
    moments = ("sum", "sumsq")

    def cell_values(self, opened: Opened, cell: int) -> dict[str, Any]:
        n = opened.counts[cell]
        s = opened.moments["sum"][cell]
        if not n or s is None:
            return self.empty_values()
        mean = s / n
        if self.clip_bounds is not None:  # dp: post-processing of the noisy values
            lo, hi = (Fraction(b) for b in self.clip_bounds)
            mean = min(max(mean, lo), hi)
        if n < 2:
            return {"mean": number(mean), "variance": None, "std": None}
        centred = opened.moments.get("centred", [None] * len(opened.counts))[cell]
        if centred is not None:  # exact mode: the perturbed centred moment, rounded
            variance = max(centred / (n * (n - 1)), Fraction(0))
        else:
            q = opened.moments["sumsq"][cell]
            assert q is not None
            variance = max((q - s * s / n) / (n - 1), Fraction(0))
            if self.clip_bounds is not None:  # dp: no variance beyond the bounds' largest
                lo, hi = (Fraction(b) for b in self.clip_bounds)
                variance = min(variance, (hi - lo) ** 2 / 4 * n / (n - 1))
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
