"""`correlation`: the Pearson correlation matrix of numeric columns, as numpy.corrcoef.

Each party shares its fixed-point Gram matrix of [1, columns…] per group
(`smpc.statistics.gram`); rows with a missing value in any of the columns are dropped
(listwise, like `numpy.corrcoef` on complete rows). Inside MPC, in an exact prime field, the
centred co-moments C_jk = n·Σx_j x_k − Σx_j·Σx_k are computed as secrets, and for every pair
only r_jk² = C_jk² / (C_jj·C_kk) is opened, rounded down inside MPC to a multiple of 2**-32
(`smpc.rounded`), together with the bit [C_jk ≥ 0] (`open_nonnegative`); r_jk = ±√(r_jk²).
In the `exact` mode the matrix is the Gram matrix plus its cell-key pseudo-row
(`smpc.statistics.gram`), and n is opened as n + p, the count perturbation of the same rows
(as a `count` of them gets). A constant column's row and column are null (numpy gives NaN): that
the column is constant (on the unperturbed matrix) is revealed, nothing else.

Cost: local O(rows · k²); secure O(k²) multiplications, k(k−1)/2 sign bits and rounded
ratios, a constant number of rounds; the comparisons are sized by the declared bounds and the
opened n where every column has bounds (`pair_bits`: about 120 bits for 3 000 rows of values
below 2**8), else by the generic 192. Limits: at most 50 columns; local sums of products below
2**50 ≈ 1.1e15.

With `dp` (noisy sufficient statistics, `smpc.statistics.gram`): every column needs declared
bounds; the noisy n and the noisy entries of the Gram matrix of [1, columns…] (clipped and
centred) are opened, at ε/K each for K noised entries, and r_jk = C_jk / √(C_jj·C_kk) is
computed from them in plaintext after the positive definite projection (so the matrix is a
valid correlation matrix, every r in (−1, 1)). n is the noisy n (not rounded); no pair is
hidden for a small cell, and no column is reported constant.

Reveals: per released group n and the correlation matrix; which columns are constant; which
groups are suppressed. With `dp`: per released group the noisy n and the noisy Gram entries,
and which groups' noisy n is below the threshold.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from smpc.cost import rounded_ratios
from smpc.encoding import FRAC_BITS
from smpc.job import PartyJob
from smpc.query import QueryBase
from smpc.rounded import Precision, open_rounded_ratios
from smpc.statistics.base import number
from smpc.statistics.design import ENTRY_BITS
from smpc.statistics.gram import GramStatistic, GroupOutcome, PseudoRow
from tessera.errors import QueryInvalid
from tessera.schemas import ColumnName

if TYPE_CHECKING:
    import pandas as pd

R_SQUARED_GRID_BITS = 32  # r² is opened rounded down to a multiple of 2**-32
# r² ≤ 1 (with the range test's margin): a smaller field than the default ratios' (range
# 2**40), the same unit 2**-64, so that the bias that makes a grid point open as itself
# (7·2**-64 with 3 parties) moves r² across a grid point of 2**-32 only once in 6e8 values
# and the plaintext twin floors as the MPC does (`smpc.rounded.Precision`)
R_SQUARED_PRECISION = Precision(range_bits=1)


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
    supports_dp = True  # noisy sufficient statistics: the Gram matrix's entries (ε/K each)

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

    def opened_per_group(self) -> int:
        """r of every pair of columns (the diagonal is 1 by definition)."""
        k = len(self.query.columns)
        return k * (k - 1) // 2

    def solve_comparisons(self) -> int:
        """The screen's comparisons (4 cells of a pair of binary columns, 2 levels of a pair
        with one), a zero test per column, and per pair its sign bit and its rounded r²
        (one numerator, one denominator)."""
        binary = set(self.binary())
        screened = sum(4 if j in binary and m in binary else 2 for j, m in self.small_cells())
        k = len(self.query.columns)
        pairs = self.opened_per_group()
        return screened + k + pairs + rounded_ratios(pairs, pairs)

    def design_columns(self) -> list[str]:
        return list(self.query.columns)

    def co_moment_bits(self) -> int:
        return 2 * ENTRY_BITS + 2

    def field_bits(self) -> int:
        """Ratios r² = C_jk² / (C_jj·C_kk) of the generic co-moments' size."""
        return R_SQUARED_PRECISION.field_bits(2 * self.co_moment_bits() + 1)

    def solve_field_bits(self, sizes: list[int]) -> int:
        """Sized by the declared bounds and the opened sizes where every column has both
        (`pair_bits` over every pair; public values only), else `field_bits`; at least the
        pooled Gram entries' own size."""
        k = len(self.query.columns)
        pairs = [(j, m) for j in range(k) for m in range(j + 1, k)]
        bits = max(self.pair_bits(n, pairs) for n in sizes)
        return max(R_SQUARED_PRECISION.field_bits(2 * bits + 1), self.co_moment_bits() + 2)

    def compare_bits(self) -> int:
        """The small field holds the pooled Gram matrix for the cells' comparisons (counts
        scaled 2**40): no co-moment is compared there."""
        return ENTRY_BITS + 2

    def binary(self) -> list[int]:
        """The columns that are 0/1 by schema (boolean, or integer declared within [0, 1])."""
        out = []
        for j, name in enumerate(self.query.columns):
            spec = self.schema.column(name)
            assert spec is not None
            if spec.type == "boolean" or (
                spec.type == "integer" and spec.min == 0 and spec.max == 1
            ):
                out.append(j)
        return out

    def small_cells(self) -> list[tuple[int, int]]:
        """The pairs whose pooled 2×2 cells (two binary columns) or levels (one) are checked."""
        k = len(self.query.columns)
        binary = set(self.binary())
        return [(j, m) for j in range(k) for m in range(j + 1, k) if j in binary or m in binary]

    async def screen(
        self,
        mpc: Any,
        job: PartyJob,
        counts: Any,
        small: list[Any] | None,
        shown: list[int],
        outcomes: list[GroupOutcome],
    ) -> tuple[list[int], dict[int, set[tuple[int, int]]]]:
        """A pair with a binary column is shown only if every pooled cell of its 2×2 table (two
        binary columns) or both levels of its binary column reach T, decided inside MPC: one
        bit per such pair is opened, and a pair that fails is null (its correlation is never
        computed or opened)."""
        hidden: dict[int, set[tuple[int, int]]] = {g: set() for g in shown}
        checked = self.small_cells()
        if self.threshold < 1 or not checked:
            return shown, hidden
        assert small is not None
        binary = set(self.binary())
        floor = self.threshold << FRAC_BITS  # Gram entries are scaled by 2**FRAC_BITS
        cells = []
        for g in shown:
            n, ones = small[g][0, 0], small[g][0, 1:]
            for j, m in checked:
                if j in binary and m in binary:
                    both = small[g][j + 1, m + 1]
                    cells += [both, ones[j] - both, ones[m] - both]
                    cells.append(n - ones[j] - ones[m] + both)
                else:
                    b = j if j in binary else m
                    cells += [ones[b], n - ones[b]]
        from smpc.protocol import at_least

        flags = await mpc.output(at_least(mpc, mpc.np_fromlist(cells), floor, ENTRY_BITS + 1))
        flags = [bool(int(f)) for f in np.asarray(flags).ravel()]
        start = 0
        for g in shown:
            for pair in checked:
                width = 4 if pair[0] in binary and pair[1] in binary else 2
                if not all(flags[start : start + width]):
                    hidden[g].add(pair)
                start += width
        return shown, hidden

    async def solve(
        self,
        mpc: Any,
        matrix: Any,
        n: int,
        compare: Any = None,
        hidden: set[tuple[int, int]] | None = None,
        pseudo: PseudoRow | None = None,
    ) -> dict[str, Any]:
        from smpc.rounded import open_nonnegative_soon

        k = len(self.query.columns)
        hidden = hidden or set()
        diagonal = np.array([j * k + j for j in range(k)])
        # constant columns on the unperturbed matrix (C_jj = 0: a masked zero test each)
        exact = self.co_moments(mpc, matrix).reshape(-1)
        constant = [bool(z) for z in await mpc.np_is_zero_public(exact[diagonal])]
        if pseudo is not None:
            matrix = matrix + pseudo.outer(mpc)
        pairs = [
            (j, m)
            for j in range(k)
            for m in range(j + 1, k)
            if (j, m) not in hidden and not constant[j] and not constant[m]
        ]
        first = np.array([j * k + j for j, _ in pairs], dtype=np.int64)
        second = np.array([m * k + m for _, m in pairs], dtype=np.int64)
        upper = np.array([j * k + m for j, m in pairs], dtype=np.int64)
        co = self.co_moments(mpc, matrix).reshape(-1)
        ratios: list[float | None] = [None if c else 1.0 for c in constant]
        signs: list[int] = []
        if pairs:
            # the sign of each r: [C_jk ≥ 0] opened alone (C_jk = 0 gives r = 0 either way),
            # computed alongside the ratios
            co_bits = self.pair_bits(n, pairs)
            positive = open_nonnegative_soon(mpc, co[upper], co_bits)
            squared = mpc.np_tolist(co[upper] * co[upper])
            products = mpc.np_tolist(co[first] * co[second])
            bits = 2 * co_bits + 1
            # r² ≤ 1 on a Gram matrix (Cauchy–Schwarz), range-tested all the same: a site's
            # matrix is not checked to be one (positive semi-definite), and a ratio beyond
            # the precision's range is null, never opened. No zero test of C_jj·C_kk: the
            # pseudo-row's weight is positive, so a column that is not constant (tested
            # above) has C_jj > 0 on the perturbed matrix too (C_jj is Σ_(a<b) w_a·w_b·
            # (x_a − x_b)² over the weighted rows)
            ratios += await open_rounded_ratios(
                mpc,
                squared,
                products,
                bits,
                grid=R_SQUARED_GRID_BITS,
                precision=R_SQUARED_PRECISION,
                nonzero=True,
            )
            signs = [1 if p else -1 for p in await positive]
        result: list[list[float | None]] = [[None] * k for _ in range(k)]
        for j in range(k):
            result[j][j] = None if ratios[j] is None else 1.0
        for (j, m), r2, sign in zip(pairs, ratios[k:], signs, strict=True):
            # a negative r² only from a site's matrix that is no Gram matrix: null
            value = None if r2 is None or r2 < 0 else sign * math.sqrt(float(r2))
            result[j][m] = result[m][j] = number(value)
        return {"columns": list(self.query.columns), "matrix": result}

    def pair_bits(self, n: int, pairs: list[tuple[int, int]]) -> int:
        """A public bound, in bits, on every |C_jk| of the given pairs: from the declared
        bounds and the opened n where every column has both (|C_jk| ≤ A_j·A_k with
        A_j = n′·(max |x_j| + 1)·2**40, n′ = n + 3 (the count perturbation) + 2 (the pseudo-row's
        weight, below 2·magnitude ≤ 2) + 1), otherwise the generic `co_moment_bits`. The
        comparisons and the denominators' bits are sized by it: fewer bits, less work. It
        holds for checked inputs (every site's sums within its declared bounds)."""
        generic = self.co_moment_bits()
        scale = []
        for name in self.query.columns:
            spec = self.schema.column(name)
            assert spec is not None
            if spec.min is None or spec.max is None:
                return generic
            largest = math.ceil(max(abs(spec.min), abs(spec.max))) + 1
            scale.append(((n + 6) * largest) << FRAC_BITS)
        widest = max(scale[j] * scale[m] for j, m in pairs)
        return min(generic, widest.bit_length() + 1)

    def noisy_values(self, gram: Any, n: int) -> dict[str, Any]:
        """Pearson's r from the positive definite noisy Gram matrix (post-processing): the
        centred co-moments n·S − s·sᵀ, each over the root of its two variances."""
        co = gram[0, 0] * gram[1:, 1:] - np.outer(gram[0, 1:], gram[0, 1:])
        spread = np.sqrt(np.diag(co))
        matrix = np.clip(co / np.outer(spread, spread), -1.0, 1.0)
        np.fill_diagonal(matrix, 1.0)
        return {
            "columns": list(self.query.columns),
            "matrix": [[number(v) for v in row] for row in matrix],
        }

    def plain_values(self, gram: Any, n: int, entry: dict[str, Any]) -> dict[str, Any]:
        """`solve` in plaintext: r_jk = C_jk / √(C_jj·C_kk) from the perturbed matrix, r² rounded
        down to a multiple of 2**-32 as the MPC opens it, where the pooled reference has a value
        (its nulls: small cells, constant columns)."""
        k = len(self.query.columns)
        size, sums = gram[0][0], [gram[0][j + 1] for j in range(k)]
        co = [[size * gram[j + 1][m + 1] - sums[j] * sums[m] for m in range(k)] for j in range(k)]
        matrix = [list(row) for row in entry["matrix"]]
        for j in range(k):
            if matrix[j][j] is not None:
                matrix[j][j] = 1.0
            for m in range(j + 1, k):
                if matrix[j][m] is not None:
                    r2 = co[j][m] ** 2 / (co[j][j] * co[m][m])  # a Fraction
                    r2 = math.floor(r2 * 2**R_SQUARED_GRID_BITS) / 2**R_SQUARED_GRID_BITS
                    sign = 1 if co[j][m] >= 0 else -1
                    matrix[j][m] = matrix[m][j] = number(sign * math.sqrt(float(r2)))
        return {"columns": list(self.query.columns), "matrix": matrix}

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

    def reference(self, frame: pd.DataFrame, min_count: int = 0) -> dict[str, Any]:
        """numpy on the pooled rows, with the same rules: groups below T suppressed, a pair with
        a binary column null when one of its pooled
        2×2 cells (or one level of its binary column) is below T. With `dp`: numpy on the
        clipped rows, n exact (`GramStatistic.reference`)."""
        if self.query.dp is not None:
            return super().reference(frame, min_count)
        data, groups = self.selected(frame)
        columns = list(self.query.columns)
        binary = set(self.binary())
        entries = []
        for g in range(len(self.layout.groups)):
            sub = data[groups == g]
            if len(sub) < min_count:
                entries.append({"n": None, **self.empty_values()})
                continue
            values = self.reference_values(sub)
            x = sub[columns].to_numpy(dtype=float)
            for j, m in self.small_cells() if min_count >= 1 else []:
                if j in binary and m in binary:
                    cells = [
                        ((x[:, j] == a) & (x[:, m] == b)).sum() for a in (0, 1) for b in (0, 1)
                    ]
                else:
                    b = j if j in binary else m
                    cells = [(x[:, b] == 1).sum(), (x[:, b] == 0).sum()]
                if min(cells) < min_count:
                    values["matrix"][j][m] = values["matrix"][m][j] = None
            entries.append({"n": len(sub), **values})
        return self.assemble(entries)
