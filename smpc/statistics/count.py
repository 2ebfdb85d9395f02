"""`count`: the number of rows meeting `where`, pooled over parties (per group with `group_by`).

Each party shares its row count per group; the pooled counts are compared with the disclosure
threshold inside MPC, and only counts at or above it are opened.

With `dp`: each group's pooled count gets discrete Laplace noise of scale 1/ε inside MPC
(`smpc.dp`); groups are disjoint, so the whole result spends ε once. `min_count` is applied
to the noisy counts, released counts are max(0, noisy count), and n is the sum of released
counts.

Reveals: the pooled (with `dp`: noisy) count of each released group, and which groups are
suppressed (below `min_count`); the overall `n` only when no group is suppressed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pandas as pd

from smpc.query import QueryBase
from smpc.statistics.base import Opened, SecureStatistic


class CountQuery(QueryBase):
    statistic: Literal["count"]


class Count(SecureStatistic):
    name = "count"
    query_model = CountQuery
    supports_dp = True
    result_fields = {"count": int | None}
    value_column = False

    def cell_values(self, opened: Opened, cell: int) -> dict[str, Any]:
        return {"count": opened.counts[cell]}

    def empty_values(self) -> dict[str, Any]:
        return {"count": None}

    def reference_values(self, sub: pd.DataFrame) -> dict[str, Any]:
        return {"count": len(sub)}
