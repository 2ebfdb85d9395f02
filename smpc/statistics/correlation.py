"""`correlation`: the Pearson correlation matrix of numeric columns, as numpy.corrcoef.

Each party shares its fixed-point Gram matrix of [1, columns…] per group
(`smpc.statistics.gram`); rows with a missing value in any of the columns are dropped
(listwise, like `numpy.corrcoef` on complete rows). Inside MPC, in an exact prime field, the
centred co-moments C_jk = n·Σx_j x_k − Σx_j·Σx_k are computed as secrets, and for every pair
only r_jk² = C_jk² / (C_jj·C_kk) is opened (a masked ratio, `smpc.exact`) together with the sign
of C_jk (one secure comparison per pair); r_jk = sign·√(r_jk²). A constant column's row and
column are null (numpy gives NaN): that the column is constant is revealed, nothing else.

Cost: local O(rows · k²); secure O(k²) multiplications and k(k−1)/2 comparisons of ~210-bit
values, a constant number of rounds. Limits: at most 50 columns; local sums of products below
2**50 ≈ 1.1e15.

Reveals: per released group n and the correlation matrix; which columns are constant; which
groups are suppressed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from smpc.exact import open_ratio_arrays
from smpc.query import QueryBase
from smpc.statistics.base import number
from smpc.statistics.design import ENTRY_BITS
from smpc.statistics.gram import GramStatistic
from tessera.errors import QueryInvalid
from tessera.schemas import ColumnName

if TYPE_CHECKING:
    import pandas as pd


class CorrelationQuery(QueryBase):
    statistic: Literal["correlation"]
    columns: list[ColumnName] = Field(min_length=2, max_length=50)

    def statistic_columns(self) -> list[str]:
        return list(self.columns)


class Correlation(GramStatistic):
    name = "correlation"
    query_model = CorrelationQuery
    result_fields = {"columns": list[str], "matrix": list[list[float | None]]}
    query: CorrelationQuery

    def validate(self) -> None:
        columns = self.query.columns
        if len(set(columns)) != len(columns):
            raise QueryInvalid("correlation: a column is listed twice")
        for name in columns:
            spec = self.schema.column(name)
            assert spec is not None
            if not spec.is_numeric:
                raise QueryInvalid(
                    f"correlation: column {name!r} is {spec.type}, not numeric", {"column": name}
                )

    def design_columns(self) -> list[str]:
        return list(self.query.columns)

    def co_moment_bits(self) -> int:
        return 2 * ENTRY_BITS + 2

    def field_bits(self) -> int:
        return 4 * self.co_moment_bits() + 16  # C² and C_jj·C_kk, a masked ratio

    def compare_bits(self) -> int:
        return self.co_moment_bits()

    async def solve(self, mpc: Any, matrix: Any, n: int, compare: Any = None) -> dict[str, Any]:
        k = len(self.query.columns)
        pairs = [(j, m) for j in range(k) for m in range(j + 1, k)]
        diagonal = np.array([j * k + j for j in range(k)])
        first = np.array([j * k + j for j, _ in pairs], dtype=np.int64)
        second = np.array([m * k + m for _, m in pairs], dtype=np.int64)
        upper = np.array([j * k + m for j, m in pairs], dtype=np.int64)
        co = self.co_moments(mpc, matrix).reshape(-1)
        squared = co[upper] * co[upper] if pairs else None
        numerators = co[diagonal] if not pairs else mpc.np_hstack((co[diagonal], squared))
        denominators = co[diagonal]
        if pairs:
            denominators = mpc.np_hstack((denominators, co[first] * co[second]))
        ratios = await open_ratio_arrays(mpc, numerators, denominators)
        signs: list[int] = []
        if pairs:
            assert compare is not None
            opened = await mpc.output(mpc.np_sgn(self.co_moments(mpc, compare).reshape(-1)[upper]))
            signs = [int(v) for v in np.asarray(opened).ravel()]
        result: list[list[float | None]] = [[None] * k for _ in range(k)]
        for j in range(k):
            result[j][j] = None if ratios[j] is None else 1.0
        for (j, m), r2, sign in zip(pairs, ratios[k:], signs, strict=True):
            value = None if r2 is None else sign * math.sqrt(float(r2))
            result[j][m] = result[m][j] = number(value)
        return {"columns": list(self.query.columns), "matrix": result}

    @staticmethod
    def co_moments(mpc: Any, matrix: Any) -> Any:
        """C = n·S − s·sᵀ from the Gram matrix of [1, x…] (all in the same secret scale)."""
        sums = matrix[0, 1:]
        return matrix[1:, 1:] * matrix[0, 0] - mpc.np_outer(sums, sums)

    def empty_values(self) -> dict[str, Any]:
        k = len(self.query.columns)
        return {"columns": list(self.query.columns), "matrix": [[None] * k for _ in range(k)]}

    def reference_values(self, sub: pd.DataFrame) -> dict[str, Any]:
        columns = list(self.query.columns)
        values = sub[columns].to_numpy(dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            matrix = np.corrcoef(values, rowvar=False) if len(sub) else np.full((1, 1), np.nan)
        matrix = np.atleast_2d(matrix)
        if matrix.shape != (len(columns), len(columns)):
            matrix = np.full((len(columns), len(columns)), np.nan)
        return {"columns": columns, "matrix": [[number(v) for v in row] for row in matrix]}
