"""`mean`: the pooled arithmetic mean of a numeric column (missing values skipped).

Each party shares its row count and local Σx per group. The pooled n and Σx are opened for
released groups and the mean is Σx / n, computed exactly on the opened rationals. Opening Σx
reveals nothing beyond the result: Σx = n · mean.

Reveals: per released group the pooled n and mean (equivalently Σx); which groups are
suppressed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from smpc.statistics.base import Opened, SecureStatistic, number


class Mean(SecureStatistic):
    name = "mean"
    moments = ("sum",)

    def cell_values(self, opened: Opened, cell: int) -> dict[str, Any]:
        n = opened.counts[cell]
        total = opened.moments["sum"][cell]
        if not n or total is None:
            return {"mean": None}
        return {"mean": number(total / n)}

    def empty_values(self) -> dict[str, Any]:
        return {"mean": None}

    def reference_values(self, sub: pd.DataFrame) -> dict[str, Any]:
        assert self.column is not None
        return {"mean": number(sub[self.column].mean()) if len(sub) else None}
