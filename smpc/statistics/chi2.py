"""`chi2`: Pearson's χ² test of independence of two categorical columns, as
`scipy.stats.chi2_contingency(table, correction=False)`.

Each party shares its crosstab counts (levels from the schema, sorted, as `crosstab`).

Disclosure control, inside MPC: with T = max(min_count, every node's floor) ≥ 1, *every cell*
of a table must hold at least T pooled rows (a 2×2 table's χ² and its margins pin down every
cell, so a small cell behind a test would be disclosed), and every site's share of every cell
must be 0 or at least that site's floor (DataSHIELD's nfilter.tab per site, as `release`:
otherwise a site holding all but one of a cell's rows could read the others' one from χ²);
with T = 0, every row and column total must be positive (χ² is undefined otherwise). The
cells are compared on shares and only one bit per table is opened, after one bit that
every site's counts are ≥ 0 and within the rows it declared (`check_counts`). A table that
fails is not tested: its entries are null (suppressed, like a crosstab cell), and nothing
else is opened for it.

For a tested table, in secure fixed point with 96 fractional bits,

    χ² = n·Σ_ij O_ij² · (1/R_i) · (1/C_j) − n,

with the reciprocals of the row and column totals taken on shares (MPyC's normalised Newton
iteration; error below 2**-60 for n < 2**30). χ² is then rounded *down*, inside MPC and
deterministically (an exact secure remainder), to a multiple of 2**-20
(`smpc.secure.OUTPUT_PRECISION_BITS`), and only that multiple is opened: no exact rational,
whose numerator and denominator would give the table's structure away. n is opened only
rounded, on shares, to the nearest multiple of max(5, T) (`smpc.secure.count_base`), so that
it cannot be set against a crosstab's released cells to recover a suppressed one. df =
(r − 1)(c − 1) and the p-value (from the rounded χ²) follow in plaintext.

Cost: r·c secure comparisons per table, r + c fixed-point reciprocals and one secure
remainder per tested table, and one per reported n; a constant number of rounds.
Limits: n below 2**30.

Reveals: per tested table χ² (rounded down to 2**-20), its p-value and df, and n rounded to a
multiple of max(5, min_count); which tables were not tested (a cell below min_count).
"""

from __future__ import annotations

import functools
import operator
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from smpc.encoding import KEY_BITS
from smpc.job import LocalSummary, PartyJob
from smpc.secure import OUTPUT_PRECISION_BITS, count_base, floor_to_grid, round_count
from smpc.statistics.base import PerGroup, number
from smpc.statistics.crosstab import Crosstab, CrosstabQuery

if TYPE_CHECKING:
    import pandas as pd

COUNT_BITS = 30
FIXED_FRACTION_BITS = 96  # χ² is computed in secure fixed point with 96 fractional bits


class Chi2Query(CrosstabQuery):
    statistic: Literal["chi2"]  # type: ignore[assignment]


class Chi2(Crosstab):
    name = "chi2"
    n_published = "rounded inside MPC to the nearest multiple of max(5, T)"
    query_model = Chi2Query
    supports_dp = False
    result_fields = {"statistic": float | None, "p_value": float | None, "df": int | None}

    @property
    def shape(self) -> tuple[int, int]:
        rows, columns = (len(levels) for levels in self.table.levels)
        return rows, columns

    async def compute(self, mpc: Any, job: PartyJob) -> PerGroup:
        from smpc.protocol import check_counts, pooled, release_flags
        from smpc.secure import count_base, floored_units, rounded_counts

        threshold = self.threshold
        r, c = self.shape
        groups = len(self.layout.groups)
        secint = mpc.SecInt(KEY_BITS)
        # every site's counts: ≥ 0 and within its declared rows (one bit), then pooled
        site_counts = mpc.input(secint.array(np.array(job.summary.counts, dtype=object)))
        await check_counts(mpc, self, secint, site_counts)
        pooled_counts = functools.reduce(operator.add, site_counts)
        # every cell reaches T (hence every margin), each site's share 0 or at least its floor
        flags = release_flags(mpc, self.rules, pooled_counts, site_counts, threshold)
        counts = pooled_counts.reshape(groups, r * c)
        passes = None if flags is None else mpc.np_prod(flags.reshape(groups, r * c), axis=1)
        if threshold < 1:  # no threshold: every row and column total is positive (χ² defined)
            cells = counts.reshape(groups, r, c)
            margins = mpc.np_hstack((cells.sum(axis=2), cells.sum(axis=1))) >= 1
            positive = mpc.np_prod(margins, axis=1)
            passes = positive if passes is None else passes * positive
        tested = [bool(int(v)) for v in np.asarray(await mpc.output(passes)).ravel()]
        outcome = PerGroup(threshold, [None] * groups)
        shown = [g for g in range(groups) if tested[g]]
        if not shown:
            return outcome
        totals = counts[np.array(shown)].sum(axis=1)
        base = count_base(threshold)
        sizes = await mpc.output(rounded_counts(mpc, mpc.np_tolist(totals), base))
        secfxp = mpc.SecFxp(2 * FIXED_FRACTION_BITS)
        table = pooled(mpc, secfxp, job.summary.counts).reshape(groups, r, c)
        statistics = []
        for g in shown:
            o = table[g]
            rows, columns = o.sum(axis=1), o.sum(axis=0)
            n = rows.sum()
            inverses = mpc.np_divide(1, mpc.np_hstack((rows, columns)))
            weighted = o * o * inverses[:r].reshape(r, 1) * inverses[r:].reshape(1, c)
            statistics.append(n * weighted.sum() - n)
        units = await mpc.output(floored_units(mpc, statistics))
        for g, size, unit in zip(shown, sizes, units, strict=True):
            value = max(round(float(unit)), 0) / (1 << OUTPUT_PRECISION_BITS)
            outcome.groups[g] = {"n": int(size), "statistic": value}
        return outcome

    def plain(self, summaries: list[LocalSummary], frames: list[pd.DataFrame]) -> Any:
        """`compute` in plaintext from every party's counts (the tests' and the demo's twin):
        the same rules (every cell ≥ T, or every margin > 0 with T = 0; each site's share of
        every cell 0 or at least its floor), scipy's χ² of the pooled table rounded down to
        2**-20, and n rounded as the MPC rounds it."""
        if self.query.dp is not None:
            return None
        from scipy import stats

        from smpc.protocol import plain_release

        rules = self.rules
        assert rules is not None
        r, c = self.shape
        width = r * c
        outcome = PerGroup(rules.threshold, [None] * len(self.layout.groups))
        for g in range(len(self.layout.groups)):
            cells = range(g * width, (g + 1) * width)
            table = np.array([plain_release(summaries, rules, k, 0)[1] for k in cells])
            table = table.reshape(r, c)
            tested = all(plain_release(summaries, rules, k)[0] for k in cells)
            if rules.threshold < 1:
                margins = (table.sum(axis=1) > 0).all() and (table.sum(axis=0) > 0).all()
                tested = tested and bool(margins)
            if not tested:
                continue
            fit = stats.chi2_contingency(table, correction=False)
            outcome.groups[g] = {
                "n": round_count(int(table.sum()), count_base(rules.threshold)),
                "statistic": max(floor_to_grid(float(fit.statistic)), 0.0),
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
            if min_count >= 1:
                tested = bool((table >= min_count).all())
            else:
                tested = bool((table.sum(axis=1) > 0).all() and (table.sum(axis=0) > 0).all())
            if not tested:
                entries.append({"n": None, **self.empty_values()})
                continue
            fit = stats.chi2_contingency(table, correction=False)
            statistic = max(floor_to_grid(float(fit.statistic)), 0.0)
            n = round_count(int(table.sum()), count_base(min_count))
            entries.append({"n": n, **self._values(statistic)})
        return self.assemble(entries)
