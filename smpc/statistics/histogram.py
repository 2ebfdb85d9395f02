"""`histogram`: pooled counts of a numeric column in the given bins (as `numpy.histogram`).

Bins are half-open `[e_i, e_{i+1})` except the last, which is closed; values outside the edges
are not counted. Each party shares its count per (group, bin) cell. Every cell is compared with
`min_count` inside MPC and only released cells are opened; a suppressed cell is `null`, and
the group's `n` (and the overall `n`) is opened only when none of its cells is suppressed, so
that no suppressed cell can be recovered by subtraction.

With `dp`: each cell's pooled count gets discrete Laplace noise of scale 1/ε inside MPC
(`smpc.dp`); cells are disjoint, so the whole result spends ε once. `min_count` is applied
to the noisy counts, released counts are max(0, noisy count), and n is the sum of released
counts.

Reveals: the pooled (with `dp`: noisy) count of each released cell; which cells are
suppressed; n where safe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, field_validator

if TYPE_CHECKING:
    import pandas as pd

from smpc.query import ColumnQuery
from smpc.statistics.base import Opened, SecureStatistic


class HistogramQuery(ColumnQuery):
    statistic: Literal["histogram"]
    bins: list[float] = Field(
        min_length=2, max_length=1001, description="Bin edges, strictly increasing."
    )

    @field_validator("bins")
    @classmethod
    def _increasing(cls, bins: list[float]) -> list[float]:
        if any(b >= a for a, b in zip(bins[1:], bins[:-1], strict=False)):
            raise ValueError("histogram bin edges must be strictly increasing")
        return bins


class Histogram(SecureStatistic):
    name = "histogram"
    query_model = HistogramQuery
    supports_dp = True
    numeric_column = True
    result_fields = {"edges": list[float], "counts": list[int | None]}
    binned = True
    query: HistogramQuery

    def bins(self) -> int:
        return len(self.query.bins) - 1

    def bin_index(self, data: pd.DataFrame) -> np.ndarray:
        assert self.column is not None
        edges = np.asarray(self.query.bins, dtype=float)
        x = data[self.column].to_numpy(dtype=float)
        index = np.searchsorted(edges, x, side="right") - 1
        index[x == edges[-1]] = len(edges) - 2
        index[(x < edges[0]) | (x > edges[-1])] = -1
        return index.astype(np.int64)

    def group_result(self, opened: Opened, g: int) -> dict[str, Any]:
        cells = range(g * self.layout.bins, (g + 1) * self.layout.bins)
        counts = [opened.counts[c] if opened.released[c] else None for c in cells]
        shown = [c for c in counts if c is not None]
        n = sum(shown) if len(shown) == len(counts) else None
        return {"n": n, "edges": list(self.query.bins), "counts": counts}

    def reference_group(self, sub: pd.DataFrame, min_count: int) -> dict[str, Any]:
        assert self.column is not None
        counts, _ = np.histogram(sub[self.column].to_numpy(dtype=float), bins=self.query.bins)
        shown = [int(c) if c >= min_count else None for c in counts]
        n = None if any(c is None for c in shown) else int(counts.sum())
        return {"n": n, "edges": list(self.query.bins), "counts": shown}

    def reference_count(self, entry: dict[str, Any]) -> int:
        return sum(entry["counts"])
