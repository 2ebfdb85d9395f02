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

For a tested table, the cells are opened with the cell-key perturbation (`smpc.cellkey`): each
cell as n_ij + p_ij, p_ij from the cell's own key (exactly what a `crosstab` of the same rows
shows for it: every cell of a tested table reaches T, so the crosstab releases them all), and
n as n + p, p from the key of the table's rows (what a `count` of them shows). χ², its p-value
and df = (r − 1)(c − 1) are scipy's `chi2_contingency(correction=False)` on the perturbed
table, in plaintext. So χ² publishes nothing a crosstab and a count of the same rows do not:
no exact rational, no exact n to set against a crosstab's released cells, and the same rows
always give the same answer. A perturbed table with an empty row or column (possible only
with T < 4) has no χ²: its statistic, p-value and df are null.

Cost: r·c secure comparisons per table (the rules), one key decomposition per cell and per
tested table, one opening; a constant number of rounds. Limits: n below 2**30.

Reveals: per tested table its perturbed cells (to the parties; the result shows χ², its
p-value and df computed from them) and n + p; which tables were not tested (a cell below
min_count, or a site's share below its floor).
"""

from __future__ import annotations

import functools
import operator
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from smpc.cost import QueryCost, key_decompositions, prelude_comparisons
from smpc.encoding import KEY_BITS
from smpc.job import LocalSummary, PartyJob
from smpc.statistics.base import N_PERTURBED, PerGroup, number
from smpc.statistics.crosstab import Crosstab, CrosstabQuery

if TYPE_CHECKING:
    import pandas as pd

    from smpc.disclosure import AppliedRules

COUNT_BITS = 30


class Chi2Query(CrosstabQuery):
    statistic: Literal["chi2"]  # type: ignore[assignment]


class Chi2(Crosstab):
    name = "chi2"
    n_published = N_PERTURBED
    query_model = Chi2Query
    supports_dp = False
    result_fields = {"statistic": float | None, "p_value": float | None, "df": int | None}

    @property
    def perturbed(self) -> bool:
        """The cells χ² is computed from are perturbed, n is n + p."""
        return True

    def expected_error(self, rules: AppliedRules) -> dict[str, str]:
        return {
            "n": self.n_published,
            "statistic, p_value": (
                "scipy's χ² of the table whose every cell is moved by at most ±3 (standard "
                "deviation 1.58): the cells a crosstab of the same rows shows"
            ),
        }

    @property
    def shape(self) -> tuple[int, int]:
        rows, columns = (len(levels) for levels in self.table.levels)
        return rows, columns

    def cost(self, parties: int) -> QueryCost:
        """For G tables of r × c cells. Cells: per table its perturbed cells (opened to the
        parties, χ² follows from them) and n. Comparisons: the prelude's, one release
        comparison per cell (without a threshold, one per row and column total instead), and
        the cell keys of every cell and every table."""
        groups = len(self.layout.groups)
        r, c = self.shape
        cells = groups * r * c
        compared = prelude_comparisons(self) + cells + key_decompositions(cells + groups)
        return QueryCost(cells + groups, compared)

    async def compute(self, mpc: Any, job: PartyJob) -> PerGroup:
        from smpc.protocol import check_counts, moved_counts, release_flags, union_perturbation

        threshold = self.threshold
        r, c = self.shape
        groups = len(self.layout.groups)
        width = r * c
        secint = mpc.SecInt(KEY_BITS)
        summary = job.summary
        if len(summary.vectors.get("keys", ())) != 2 * groups * width:
            raise ValueError(f"local summary's keys do not fit {groups} tables of {r}×{c}")
        site_counts = mpc.input(secint.array(np.array(summary.counts, dtype=object)))
        pooled_counts = functools.reduce(operator.add, site_counts)
        # every cell reaches T (hence every margin), each site's share 0 or at least its floor
        flags = release_flags(mpc, self.rules, pooled_counts, summary.counts, secint, threshold)
        counts = pooled_counts.reshape(groups, width)
        passes = None if flags is None else mpc.np_prod(flags.reshape(groups, width), axis=1)
        if threshold < 1:  # no threshold: every row and column total is positive (χ² defined)
            cells = counts.reshape(groups, r, c)
            margins = mpc.np_hstack((cells.sum(axis=2), cells.sum(axis=1))) >= 1
            positive = mpc.np_prod(margins, axis=1)
            passes = positive if passes is None else passes * positive
        # every site's counts: ≥ 0 and within its declared rows (one bit), checked before the
        # release bits (computed alongside: linear in the inputs) are opened
        await check_counts(mpc, self, secint, site_counts, summary.counts)
        tested = [bool(int(v)) for v in np.asarray(await mpc.output(passes)).ravel()]
        outcome = PerGroup(threshold, [None] * groups)
        shown = [g for g in range(groups) if tested[g]]
        if not shown:
            return outcome
        # each tested table's cells + p (each cell's own key: what a crosstab of the same rows
        # shows) and its n + p (the table's rows' key: what a count of them shows)
        cells = [g * width + k for g in shown for k in range(width)]
        tables = [list(range(g * width, (g + 1) * width)) for g in shown]
        shift = union_perturbation(
            mpc, secint, summary.vectors["keys"], groups * width, [[k] for k in cells] + tables
        )
        values = mpc.np_concatenate(
            (pooled_counts[np.array(cells)], counts[np.array(shown)].sum(axis=1))
        )
        moved = moved_counts(mpc, values, shift.count, threshold, COUNT_BITS + 2)
        opened = [max(0, int(v)) for v in np.asarray(await mpc.output(moved)).ravel()]
        for i, g in enumerate(shown):
            table = opened[i * width : (i + 1) * width]
            outcome.groups[g] = {"n": opened[len(cells) + i], "table": table}
        return outcome

    def plain(self, summaries: list[LocalSummary], frames: list[pd.DataFrame]) -> Any:
        """`compute` in plaintext from every party's counts and key sums (the tests' and the
        demo's twin): the same rules (every cell ≥ T, or every margin > 0 with T = 0; each
        site's share of every cell 0 or at least its floor), the same perturbed cells and n."""
        if self.query.dp is not None:
            return None
        from smpc.protocol import plain_cell_perturbation, plain_moved_count, plain_release

        rules = self.rules
        assert rules is not None
        r, c = self.shape
        width = r * c
        size = len(self.layout.groups) * width
        outcome = PerGroup(rules.threshold, [None] * len(self.layout.groups))
        for g in range(len(self.layout.groups)):
            cells = list(range(g * width, (g + 1) * width))
            table = np.array([plain_release(summaries, rules, k, 0)[1] for k in cells])
            tested = all(plain_release(summaries, rules, k)[0] for k in cells)
            if rules.threshold < 1:
                grid = table.reshape(r, c)
                margins = (grid.sum(axis=1) > 0).all() and (grid.sum(axis=0) > 0).all()
                tested = tested and bool(margins)
            if not tested:
                continue

            def moved(count: int, union: list[int]) -> int:
                p, _, _ = plain_cell_perturbation(summaries, size, union)
                return plain_moved_count(count, p, rules.threshold)

            outcome.groups[g] = {
                "n": moved(int(table.sum()), cells),
                "table": [moved(int(v), [k]) for v, k in zip(table, cells, strict=True)],
            }
        return outcome

    # ---- after the protocol -------------------------------------------------------------

    def _values(self, table: np.ndarray) -> dict[str, Any]:
        """χ², its p-value and df of a table, as scipy's `chi2_contingency` without continuity
        correction computes them (`scipy.stats` would cost a party 0.4 s to import); all null
        where a row or column total is 0 (χ² is undefined there)."""
        from smpc.statistics.tails import chi2_upper

        r, c = self.shape
        grid = np.asarray(table, dtype=np.int64).reshape(r, c)
        rows, columns = grid.sum(axis=1), grid.sum(axis=0)
        if not ((rows > 0).all() and (columns > 0).all()):
            return self.empty_values()
        df = (r - 1) * (c - 1)
        expected = np.outer(rows, columns) / grid.sum()
        statistic = float(((grid - expected) ** 2 / expected).sum())
        return {
            "statistic": number(statistic),
            "p_value": number(chi2_upper(statistic, df)) if df > 0 else 1.0,
            "df": df,
        }

    def finish(self, opened: PerGroup) -> dict[str, Any]:
        entries = []
        for item in opened.groups:
            if item is None:
                entries.append({"n": None, **self.empty_values()})
            else:
                entries.append({"n": item["n"], **self._values(np.array(item["table"]))})
        return self.assemble(entries)

    def empty_values(self) -> dict[str, Any]:
        return {"statistic": None, "p_value": None, "df": None}

    def reference(self, frame: pd.DataFrame, min_count: int = 0) -> dict[str, Any]:
        """scipy on the pooled, unperturbed table, with the same rule (pooled counts only)."""
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
            entries.append({"n": int(table.sum()), **self._values(table)})
        return self.assemble(entries)
