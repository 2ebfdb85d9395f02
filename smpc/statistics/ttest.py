"""`ttest`: Welch's two-sample t-test, as `scipy.stats.ttest_ind(a, b, equal_var=False)`.

`group` is a column with exactly two levels; `a` is the first level in schema order
(booleans: False, then True), so the statistic is positive when a's mean is larger. Each
party shares, per (group_by group × level), its row count, Σx and Σx² (fixed point). Inside MPC
the counts are compared with max(min_count, 2) and only the comparison bits are opened; for a
group where both levels pass, everything else is computed on secrets in an exact prime field
(`smpc.exact`) from n, Σx, Σx² of each level:

    t² = (Σx_a·n_b − Σx_b·n_a)²·D_a·D_b / ((n_a·n_b)²·(A_a·D_b + A_b·D_a)),
    df = (A_a·D_b + A_b·D_a)²·(n_a − 1)(n_b − 1) / (A_a²·D_b²·(n_b − 1) + A_b²·D_a²·(n_a − 1)),

with A = n·Σx² − (Σx)² and D = n²(n − 1); t² and df are opened rounded inside MPC to 25
significant bits (`smpc.rounded`) and the sign
of t by one secure comparison; the p-value follows from t and df (Student's t, two-sided).
Both levels constant: t is undefined and reported as null.

Before anything is opened, every site's count, Σx and Σx² of every cell are checked inside MPC
against the column's declared bounds (n·lo ≤ Σx ≤ n·hi, 0 ≤ Σx² ≤ n·max(lo², hi²): one bit
opened, a failure refused naming no site; `smpc.protocol.SiteInputs`), and its counts against
its declared row count (`release`).

Cost: two secure comparisons per group and a constant number of rounds, independent of rows.
Limits: |Σx²| of a party below about 7.7e25 (the fixed-point range); n below 2**30.

n = n_a + n_b is opened as n + p, p the cell-key count perturbation of the group's rows (the
two levels' keys together: what a `count` of the same rows gets, `smpc.cellkey`), so that it
cannot be set against released counts to recover a suppressed one. Each level's n is compared
with max(min_count, 2) inside MPC (one bit each), with every site's share 0 or at least its
floor (`release`).

Reveals: per reported group t, df, the p-value and n = n_a + n_b + p; which groups are not
reported (a level below max(min_count, 2) rows).
"""

from __future__ import annotations

import functools
import operator
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from smpc.encoding import FRAC_BITS, MOMENT_BITS
from smpc.job import LocalSummary, PartyJob
from smpc.query import ColumnQuery
from smpc.statistics.base import PerGroup, SecureStatistic, number
from tessera.errors import QueryInvalid
from tessera.schemas import ColumnName

if TYPE_CHECKING:
    import pandas as pd

COUNT_BITS = 30
SUM_BITS = MOMENT_BITS + 4  # pooled over at most 16 parties


class TTestQuery(ColumnQuery):
    statistic: Literal["ttest"]
    group: ColumnName

    def statistic_columns(self) -> list[str]:
        return [self.column, self.group]


class TTest(SecureStatistic):
    name = "ttest"
    n_published = "at most ±3 (standard deviation 1.58): the count perturbation of the group's rows"
    query_model = TTestQuery
    numeric_column = True
    result_fields = {"statistic": float | None, "p_value": float | None, "df": float | None}
    moments = ("sum", "sumsq")
    binned = True
    query: TTestQuery

    def bins(self) -> int:
        return 2

    def validate(self) -> None:
        q = self.query
        spec = self.schema.column(q.group)
        assert spec is not None
        if spec.type not in ("categorical", "boolean") or len(spec.group_levels()) != 2:
            raise QueryInvalid(
                f"ttest: group column {q.group!r} must be boolean or categorical with exactly "
                "two levels",
                {"column": q.group},
            )
        if q.group in q.group_by:
            raise QueryInvalid(f"ttest: {q.group!r} is both the group and a group_by column")

    def level_count(self) -> int:
        """The levels rule (`smpc.disclosure.prelude`) counts the two-level group column too."""
        return max(super().level_count(), 2)

    def bin_index(self, data: pd.DataFrame) -> np.ndarray:
        from smpc.cells import CellLayout

        return CellLayout.build([self.query.group], self.schema).group_codes(data)

    # ---- the secure part ----------------------------------------------------------------

    async def compute(self, mpc: Any, job: PartyJob) -> PerGroup:
        from smpc.exact import exact_type
        from smpc.protocol import SiteInputs, pooled, release, union_perturbation
        from smpc.rounded import open_rounded_ratios, ratio_field_bits

        threshold = self.threshold
        summary = job.summary
        groups = len(self.layout.groups)
        # every site's n, Σx and Σx² of every cell within the column's declared bounds, decided
        # inside MPC before anything (the release bits included) is opened; the same shares,
        # pooled, then give the sign of t (cheap comparisons in this small field)
        small = mpc.SecInt(SUM_BITS + COUNT_BITS + 2)
        site_counts = mpc.input(small.array(np.array(summary.counts, dtype=object)))
        cells = np.arange(len(summary.counts))
        inputs = SiteInputs.of(mpc, small, self, job, cells, site_counts)
        await inputs.check(mpc, self)
        _, passes = await release(
            mpc, self, summary.counts, small, threshold=max(threshold, 2), sites=site_counts
        )
        reported = [passes[2 * g] and passes[2 * g + 1] for g in range(groups)]
        outcome = PerGroup(threshold, [None] * groups)
        if not any(reported):
            return outcome
        s_bits = SUM_BITS
        a_bits = 2 * s_bits + 1
        d_bits = 3 * COUNT_BITS
        df_bits = 2 * (2 * a_bits + 2 * d_bits + 2) + 2 * COUNT_BITS + 4
        ratio_bits = df_bits // 2 + 2 * COUNT_BITS  # any numerator or denominator below
        stype = exact_type(mpc, ratio_field_bits(ratio_bits))
        shown = np.array([g for g in range(groups) if reported[g]])
        a, b = 2 * shown, 2 * shown + 1
        n_small = functools.reduce(operator.add, site_counts)
        s_small = inputs.pooled("sum")
        sign_of = s_small[a] * n_small[b] - s_small[b] * n_small[a]
        signs = await mpc.output(mpc.np_sgn(sign_of))
        n = pooled(mpc, stype, summary.counts)
        s = pooled(mpc, stype, summary.moments["sum"])
        q = pooled(mpc, stype, summary.moments["sumsq"])
        scale = 1 << FRAC_BITS
        n_a, n_b = n[a], n[b]
        a_a = q[a] * n_a * scale - s[a] * s[a]
        a_b = q[b] * n_b * scale - s[b] * s[b]
        d_a = n_a * n_a * (n_a - 1)
        d_b = n_b * n_b * (n_b - 1)
        diff = s[a] * n_b - s[b] * n_a
        spread = a_a * d_b + a_b * d_a
        n_ab = n_a * n_b
        numerators = mpc.np_tolist(diff * diff * d_a * d_b)
        numerators += mpc.np_tolist(spread * spread * (n_a - 1) * (n_b - 1))
        denominators = mpc.np_tolist(n_ab * n_ab * spread)
        denominators += mpc.np_tolist(
            a_a * a_a * d_b * d_b * (n_b - 1) + a_b * a_b * d_a * d_a * (n_a - 1)
        )
        ratios = await open_rounded_ratios(mpc, numerators, denominators, ratio_bits)
        t2, df = ratios[: len(shown)], ratios[len(shown) :]
        # n = n_a + n_b + p, p the count perturbation of the group's rows (both levels' keys
        # together: what a `count` of the same rows gets)
        unions = [[2 * int(g), 2 * int(g) + 1] for g in shown]
        shift = union_perturbation(mpc, small, summary.vectors["keys"], len(summary.counts), unions)
        totals = await mpc.output(n_small[a] + n_small[b] + shift.count)
        sign_values = np.asarray(signs).ravel()
        for i, g in enumerate(shown):
            outcome.groups[g] = {
                "n": max(0, int(totals[i])),
                "t2": t2[i],
                "sign": int(sign_values[i]),
                "df": df[i],
            }
        return outcome

    def plain(self, summaries: list[LocalSummary], frames: list[pd.DataFrame]) -> Any:
        """`compute` in plaintext (the tests' and the demo's twin): the same release (both
        levels ≥ max(T, 2), each site's count 0 or at least its floor), n + p from the same
        keys, and scipy's Welch test on the pooled rows (the MPC rounds t² and df to 25
        significant bits)."""
        if self.query.dp is not None:
            return None
        import pandas as pd
        from scipy import stats

        from smpc.protocol import plain_cell_perturbation, plain_release

        rules = self.rules
        assert rules is not None
        size = len(summaries[0].counts)
        data, cells = self.rows(pd.concat(frames, ignore_index=True))
        values = data[self.query.column].to_numpy(dtype=float)
        outcome = PerGroup(rules.threshold, [None] * len(self.layout.groups))
        for g in range(len(self.layout.groups)):
            levels = [
                plain_release(summaries, rules, cell, max(rules.threshold, 2))
                for cell in (2 * g, 2 * g + 1)
            ]
            if not all(ok for ok, _ in levels):
                continue
            sizes = [n for _, n in levels]
            p, _, _ = plain_cell_perturbation(summaries, size, [2 * g, 2 * g + 1])
            with np.errstate(invalid="ignore", divide="ignore"):
                fit = stats.ttest_ind(
                    values[cells == 2 * g], values[cells == 2 * g + 1], equal_var=False
                )
            t = float(fit.statistic)
            outcome.groups[g] = {
                "n": max(0, sum(sizes) + p),
                "t2": t * t if np.isfinite(t) else None,
                "sign": int(np.sign(t)) if np.isfinite(t) else 0,
                "df": float(fit.df) if np.isfinite(fit.df) else None,
            }
        return outcome

    # ---- after the protocol -------------------------------------------------------------

    @staticmethod
    def _values(t: float | None, df: Fraction | float | None) -> dict[str, Any]:
        from smpc.statistics.tails import t_two_sided

        if t is None or df is None:
            return {"statistic": None, "p_value": None, "df": number(df)}
        p = t_two_sided(t, float(df))
        return {"statistic": number(t), "p_value": number(p), "df": number(df)}

    def finish(self, opened: PerGroup) -> dict[str, Any]:
        entries = []
        for item in opened.groups:
            if item is None:
                entries.append({"n": None, **self.empty_values()})
                continue
            t = None if item["t2"] is None else item["sign"] * float(item["t2"]) ** 0.5
            entries.append({"n": item["n"], **self._values(t, item["df"])})
        return self.assemble(entries)

    def empty_values(self) -> dict[str, Any]:
        return {"statistic": None, "p_value": None, "df": None}

    def reference(self, frame: pd.DataFrame, min_count: int = 0) -> dict[str, Any]:
        from scipy import stats

        data, cells = self.rows(frame)
        values = data[self.query.column].to_numpy(dtype=float)
        entries = []
        for g in range(len(self.layout.groups)):
            a, b = values[cells == 2 * g], values[cells == 2 * g + 1]
            if min(len(a), len(b)) < max(min_count, 2):
                entries.append({"n": None, **self.empty_values()})
                continue
            with np.errstate(invalid="ignore", divide="ignore"):
                fit = stats.ttest_ind(a, b, equal_var=False)
            statistic = float(fit.statistic)
            df = float(fit.df)
            entries.append(
                {
                    "n": len(a) + len(b),
                    **self._values(statistic if np.isfinite(statistic) else None, df),
                }
            )
        return self.assemble(entries)
