"""`chi2`: Pearson's χ² test of independence of two categorical columns, as
`scipy.stats.chi2_contingency(table, correction=False)`.

Each party shares its crosstab counts (levels from the schema, sorted, as `crosstab`). Inside
MPC the row and column totals are summed on shares and compared with max(min_count, 1); only
one bit per table is opened: whether every total passes. For such a table, in an exact prime
field (`smpc.exact`), with P = ΠR_i·ΠC_j,

    χ² = n·Σ_ij O_ij² / (R_i·C_j) − n = n·(N − P) / P,   N = Σ_ij O_ij²·(P / (R_i·C_j)),

where P / (R_i·C_j) is an exact integer obtained with field inverses; only χ² is opened (a
masked ratio), and n. df = (r − 1)(c − 1) and the p-value follow in plaintext.

A table with an empty (or, under min_count, small) row or column total is not tested (its
entries are null; scipy raises an error for a zero expected frequency): a level with no rows
should be filtered out with `where`.

Cost: r + c secure comparisons and O(r·c) multiplications per table, constant rounds.
Limits: n below 2**30; the field grows with r + c (refused beyond ~300 levels in total).

Reveals: per tested table χ², its p-value and df, and n; which tables were not tested.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from smpc.encoding import KEY_BITS
from smpc.job import PartyJob
from smpc.statistics.base import PerGroup, number
from smpc.statistics.crosstab import Crosstab, CrosstabQuery

if TYPE_CHECKING:
    import pandas as pd

COUNT_BITS = 30


class Chi2Query(CrosstabQuery):
    statistic: Literal["chi2"]  # type: ignore[assignment]


class Chi2(Crosstab):
    name = "chi2"
    query_model = Chi2Query
    supports_dp = False
    result_fields = {"statistic": float | None, "p_value": float | None, "df": int | None}

    @property
    def shape(self) -> tuple[int, int]:
        rows, columns = (len(levels) for levels in self.table.levels)
        return rows, columns

    def validate(self) -> None:
        super().validate()
        from smpc.exact import field_exponent

        field_exponent(self.field_bits())

    def field_bits(self) -> int:
        r, c = (len(self.schema.column(n).group_levels()) for n in self._axes())  # type: ignore[union-attr]
        return 2 * ((r + c + 2) * COUNT_BITS + 8) + 16

    def _axes(self) -> tuple[str, str]:
        return self.query.rows, self.query.columns

    async def compute(self, mpc: Any, job: PartyJob) -> PerGroup:
        from smpc.exact import exact_type, open_ratios
        from smpc.protocol import pooled

        threshold = self.threshold
        r, c = self.shape
        groups = len(self.layout.groups)
        secint = mpc.SecInt(KEY_BITS)
        counts = pooled(mpc, secint, job.summary.counts).reshape(groups, r, c)
        margins = mpc.np_hstack((counts.sum(axis=2), counts.sum(axis=1)))  # groups × (r + c)
        flags = margins >= max(threshold, 1)
        passes = mpc.np_prod(flags, axis=1)
        tested = [bool(int(v)) for v in np.asarray(await mpc.output(passes)).ravel()]
        outcome = PerGroup(threshold, [None] * groups)
        if not any(tested):
            return outcome
        stype = exact_type(mpc, self.field_bits())
        table = pooled(mpc, stype, job.summary.counts).reshape(groups, r, c)
        for g in range(groups):
            if not tested[g]:
                continue
            o = table[g]
            row_totals = [mpc.sum(list(o[i, :])) for i in range(r)]
            column_totals = [mpc.sum(list(o[:, j])) for j in range(c)]
            n = mpc.sum(row_totals)
            product_rows = mpc.prod(row_totals)
            product_columns = mpc.prod(column_totals)
            others_rows = [product_rows * mpc.reciprocal(t) for t in row_totals]
            others_columns = [product_columns * mpc.reciprocal(t) for t in column_totals]
            squares = o * o
            weighted = mpc.sum(
                [
                    squares[i, j] * others_rows[i] * others_columns[j]
                    for i in range(r)
                    for j in range(c)
                ]
            )
            p = product_rows * product_columns
            statistic = await open_ratios(mpc, [n * (weighted - p)], p)
            assert statistic is not None  # every total is positive
            outcome.groups[g] = {
                "n": int(await mpc.output(n)),
                "statistic": statistic[0],
            }
        return outcome

    # ---- after the protocol -------------------------------------------------------------

    def _values(self, statistic: float) -> dict[str, Any]:
        from scipy import stats

        r, c = self.shape
        df = (r - 1) * (c - 1)
        return {
            "statistic": number(statistic),
            "p_value": number(stats.chi2.sf(statistic, df)) if df > 0 else 1.0,
            "df": df,
        }

    def finish(self, opened: PerGroup) -> dict[str, Any]:
        entries = []
        for item in opened.groups:
            if item is None:
                entries.append({"n": None, **self.empty_values()})
            else:
                entries.append({"n": item["n"], **self._values(float(item["statistic"]))})
        return self.assemble(entries)

    def empty_values(self) -> dict[str, Any]:
        return {"statistic": None, "p_value": None, "df": None}

    def reference(self, frame: pd.DataFrame, min_count: int = 0) -> dict[str, Any]:
        from scipy import stats

        _, cells = self.rows(frame)
        r, c = self.shape
        entries = []
        for g in range(len(self.layout.groups)):
            flat = np.bincount(
                cells[(cells >= g * r * c) & (cells < (g + 1) * r * c)] - g * r * c, minlength=r * c
            )
            table = flat.reshape(r, c)
            totals = np.concatenate([table.sum(axis=1), table.sum(axis=0)])
            if (totals < max(min_count, 1)).any():
                entries.append({"n": None, **self.empty_values()})
                continue
            fit = stats.chi2_contingency(table, correction=False)
            entries.append({"n": int(table.sum()), **self._values(float(fit.statistic))})
        return self.assemble(entries)
