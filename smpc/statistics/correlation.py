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
2**60.

Reveals: per released group n and the correlation matrix; which columns are constant; which
groups are suppressed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from smpc.exact import open_ratio_pairs
from smpc.query import CorrelationQuery
from smpc.statistics.base import number
from smpc.statistics.design import ENTRY_BITS
from smpc.statistics.gram import GramStatistic
from tessera.errors import QueryInvalid

if TYPE_CHECKING:
    import pandas as pd


class Correlation(GramStatistic):
    name = "correlation"
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
        return 4 * self.co_moment_bits() + 16

    def compare_bits(self) -> int:
        return self.co_moment_bits()

    async def solve(self, mpc: Any, stype: Any, matrix: Any, n: int) -> dict[str, Any]:
        k = len(self.query.columns)
        sums = matrix[0, 1:]
        co = matrix[1:, 1:] * matrix[0, 0] - mpc.np_outer(sums, sums)
        flat = co.reshape(-1)
        pairs = [(j, m) for j in range(k) for m in range(j + 1, k)]
        diagonal = [flat[j * k + j] for j in range(k)]
        numerators: list[Any] = list(diagonal)
        denominators: list[Any] = list(diagonal)
        for j, m in pairs:
            c = flat[j * k + m]
            numerators.append(c * c)
            denominators.append(diagonal[j] * diagonal[m])
        ratios = await open_ratio_pairs(mpc, numerators, denominators)
        signs: list[int] = []
        if pairs:
            index = np.array([j * k + m for j, m in pairs])
            opened = await mpc.output(mpc.np_sgn(flat[index], l=self.compare_bits()))
            signs = [int(s) for s in np.asarray(opened).ravel()]
        result: list[list[float | None]] = [[None] * k for _ in range(k)]
        for j in range(k):
            result[j][j] = None if ratios[j] is None else 1.0
        for (j, m), r2, sign in zip(pairs, ratios[k:], signs, strict=True):
            value = None if r2 is None else sign * math.sqrt(float(r2))
            result[j][m] = result[m][j] = number(value)
        return {"columns": list(self.query.columns), "matrix": result}

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
