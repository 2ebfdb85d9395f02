"""`ttest`: Welch's two-sample t-test, as `scipy.stats.ttest_ind(a, b, equal_var=False)`, of
each level's rows plus a cell-key pseudo-row.

`group` is a column with exactly two levels; `a` is the first level in schema order
(booleans: False, then True), so the statistic is positive when a's mean is larger. Each
party shares, per (group_by group × level), its row count, Σx and Σx² (fixed point), the cells'
key sums and, for a column without declared bounds, its smallest and largest value per cell.
Inside MPC the counts are compared with max(min_count, 2) and only the comparison bits are
opened; for a group where both levels pass, everything else is computed on secrets in an exact
prime field (`smpc.exact`).

The pseudo-row (`smpc.cellkey`, as the models' in `smpc.statistics.gram`): each level gets one
more "row" of weight w = ω·m/2¹⁶ (ω from the level's key A, m the policy's magnitude in 1/256:
w uniform on (0, 2·magnitude)) at a corner c, the column's low or high declared bound by a bit
of the level's key B (without declared bounds: the level's own smallest or largest value, a
secure minimum and maximum over the sites). On the scale κ = 2¹⁶ each level's sums are
N = κ·n + ω·m, S = κ·Σx + ω·m·c and Q = κ·Σx² + ω·m·c², and with A = N·Q − S² (≥ 0: a weighted
sample's) and D = N²(N − κ):

    t² = (S_a·N_b − S_b·N_a)²·D_a·D_b / ((N_a·N_b)²·(A_a·D_b + A_b·D_a)·κ),
    df = (A_a·D_b + A_b·D_a)²·(N_a − κ)(N_b − κ) / ((A_a²·D_b²·(N_b − κ) + A_b²·D_a²·(N_a − κ))·κ),

Welch's formulas for the weighted levels (the factor κ of the substitution n = N/κ, …, left
in the denominators). t² and df are opened rounded inside MPC to 25 significant bits
(`smpc.rounded`) and the sign of t as one bit, [S_a·N_b ≥ S_b·N_a]; the p-value follows from t
and df (Student's t, two-sided). Both levels constant, with their pseudo-rows: t is undefined
and reported as null. The same rows always give the same test; one child more or less changes
its level's key and with it the pseudo-row, so two tests whose selections differ by one child
do not give that child's value (`tests/adversarial/test_cells.py`).

Before anything is opened, every site's count, Σx and Σx² of every cell are checked inside MPC
against the column's declared bounds (n·lo ≤ Σx ≤ n·hi, 0 ≤ Σx² ≤ n·max(lo², hi²): one bit
opened, a failure refused naming no site; `smpc.protocol.SiteInputs`), and its counts against
its declared row count (`release`).

Cost: a constant number of rounds, independent of rows: the release, the pseudo-rows' key bits
and corners, two rounded ratios per group sharing one normalisation each, one sign bit.
Limits: |Σx²| of a party below about 7.7e25 (the fixed-point range); n below 2**30.

n = n_a + n_b is opened as n + p, p the cell-key count perturbation of the group's rows (the
two levels' keys together: what a `count` of the same rows gets, `smpc.cellkey`), so that it
cannot be set against released counts to recover a suppressed one. Each level's n is compared
with max(min_count, 2) inside MPC (one bit each), with every site's share 0 or at least its
floor (`release`).

Reveals: per reported group t, df and the p-value of the levels with their cell-key
pseudo-rows, and n = n_a + n_b + p; which groups are not reported (a level below
max(min_count, 2) rows).
"""

from __future__ import annotations

import functools
import math
import operator
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from smpc.cellkey import (
    CORNER_LIMIT_BITS,
    LARGEST_SCALE_BITS,
    corner_limited,
    corners,
    scale_factor,
    sign_slot,
)
from smpc.cost import QueryCost, key_decompositions, prelude_comparisons, rounded_ratios
from smpc.encoding import FRAC_BITS, MOMENT_BITS
from smpc.job import LocalSummary, PartyJob
from smpc.query import ColumnQuery
from smpc.statistics.base import N_PERTURBED, PerGroup, SecureStatistic, number
from tessera.errors import QueryInvalid
from tessera.schemas import ColumnName

if TYPE_CHECKING:
    import pandas as pd

    from smpc.disclosure import AppliedRules

COUNT_BITS = 30
SUM_BITS = MOMENT_BITS + 4  # pooled over at most 16 parties
KAPPA = 1 << 16  # the pseudo-row's weight w = ω·m / 2**16: every level's sums scaled by κ
N_BITS = COUNT_BITS + 17  # κ·n + ω·m
S_BITS = SUM_BITS + 17  # κ·Σx + ω·m·c (and κ·Σx²  + ω·m·c²), scaled 2**40
A_BITS = 2 * S_BITS + 1  # N·Q·2**40 − S²
D_BITS = 3 * N_BITS  # N²·(N − κ)
DIFF_BITS = S_BITS + N_BITS + 1  # S_a·N_b − S_b·N_a
_SPREAD = A_BITS + D_BITS + 1  # A_a·D_b + A_b·D_a
RATIO_BITS = (
    max(
        2 * DIFF_BITS + 2 * D_BITS,  # t²'s numerator
        4 * N_BITS + _SPREAD + 16,  # its denominator
        2 * _SPREAD + 2 * N_BITS,  # df's numerator
        2 * A_BITS + 2 * D_BITS + N_BITS + 17,  # its denominator
    )
    + 1
)


def welch_with_one_more(
    a: np.ndarray, b: np.ndarray, candidates: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Welch's t and df of `a` plus one more value against `b`, for every value in
    `candidates` at once (plaintext): what an attacker who knows every other row solves for
    the last one (`tests/adversarial/test_cells.py`, `benchmarks/disclosure_cost.py`)."""
    m = len(a) + 1
    total, squares = a.sum() + candidates, (a**2).sum() + candidates**2
    e_a = (squares - total**2 / m) / (m - 1) / m
    e_b = b.var(ddof=1) / len(b)
    t = (total / m - b.mean()) / np.sqrt(e_a + e_b)
    df = (e_a + e_b) ** 2 / (e_a**2 / (m - 1) + e_b**2 / (len(b) - 1))
    return t, df


def welch_from_sums(
    n_a: int, s_a: int, q_a: int, n_b: int, s_b: int, q_b: int
) -> tuple[float | None, float | None, int]:
    """t², df and the sign of t, exactly, from each level's κ·n + w, κ·Σx + w·c and
    κ·Σx² + w·c² (sums scaled 2**40): what `TTest.compute` opens rounded (the twin's)."""
    scale = 1 << FRAC_BITS
    a_a, a_b = q_a * n_a * scale - s_a * s_a, q_b * n_b * scale - s_b * s_b
    d_a, d_b = n_a * n_a * (n_a - KAPPA), n_b * n_b * (n_b - KAPPA)
    diff = s_a * n_b - s_b * n_a
    spread = a_a * d_b + a_b * d_a
    t2_den = (n_a * n_b) ** 2 * spread * KAPPA
    df_den = (a_a * a_a * d_b * d_b * (n_b - KAPPA) + a_b * a_b * d_a * d_a * (n_a - KAPPA)) * KAPPA
    t2 = float(Fraction(diff * diff * d_a * d_b, t2_den)) if t2_den else None
    df = (
        float(Fraction(spread * spread * (n_a - KAPPA) * (n_b - KAPPA), df_den)) if df_den else None
    )
    return t2, df, 1 if diff >= 0 else -1


class TTestQuery(ColumnQuery):
    statistic: Literal["ttest"]
    group: ColumnName

    def statistic_columns(self) -> list[str]:
        return [self.column, self.group]


class TTest(SecureStatistic):
    name = "ttest"
    n_published = N_PERTURBED
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

    # ---- the local part -----------------------------------------------------------------

    def local_input(self, frame: pd.DataFrame) -> LocalSummary:
        """The cell protocol's summary (counts, key sums, Σx, Σx², the largest |x|) and, for a
        column without declared bounds, each cell's smallest and largest value (the pseudo-row's
        corners, `corners`)."""
        summary = super().local_input(frame)
        if self.declared_bounds is None:
            data, cells = self.rows(frame)
            values = data[self.query.column].to_numpy(dtype=float)
            summary.vectors["corners"] = corners(values.reshape(-1, 1), cells, self.layout.size)
        return summary

    def corner_bounds(self) -> tuple[int, int] | None:
        """The declared bounds as the pseudo-row's corners (scaled 2**8, rounded outwards, within
        the corners' range: `cellkey.corner_limited`)."""
        if self.declared_bounds is None:
            return None
        low, high = self.declared_bounds
        return (
            corner_limited(math.floor(math.ldexp(low, LARGEST_SCALE_BITS))),
            corner_limited(math.ceil(math.ldexp(high, LARGEST_SCALE_BITS))),
        )

    # ---- the secure part ----------------------------------------------------------------

    def cost(self, parties: int) -> QueryCost:
        """For G groups of two levels (2G cells). Cells: per group n, t and df. Comparisons:
        the prelude's (every site's n, Σx, Σx² and largest |x| of every level are shown within
        the declared bounds by bits the site inputs: `smpc.ranges`); one release comparison per
        level; the cell keys of each level and each group (3G unions); without declared
        bounds, the corners (a secure minimum and maximum per level over the m sites); per
        group two rounded ratios (t², df) and one sign bit."""
        groups = len(self.layout.groups)
        levels = 2 * groups
        corners = 0 if self.declared_bounds is not None else 2 * (parties - 1) * levels
        compared = (
            prelude_comparisons(self)
            + levels
            + key_decompositions(3 * groups)
            + corners
            + groups * (rounded_ratios(2, 2) + 1)
        )
        return QueryCost(groups * 3, compared)

    async def compute(self, mpc: Any, job: PartyJob) -> PerGroup:
        from smpc.exact import exact_type
        from smpc.protocol import (
            SiteInputs,
            pooled,
            release,
            secure_max,
            secure_min,
            union_perturbation,
        )
        from smpc.rounded import (
            convert,
            open_nonnegative_soon,
            open_rounded_ratios,
            ratio_field_bits,
        )

        threshold = self.threshold
        summary = job.summary
        groups = len(self.layout.groups)
        size = len(summary.counts)
        # every site's n, Σx and Σx² of every cell within the column's declared bounds, decided
        # inside MPC before anything (the release bits included) is opened
        small = mpc.SecInt(SUM_BITS + COUNT_BITS + 2)
        site_counts = mpc.input(small.array(np.array(summary.counts, dtype=object)))
        inputs = SiteInputs.of(mpc, small, self, job, np.arange(size), site_counts)
        await inputs.check(mpc, self)
        _, passes = await release(
            mpc, self, summary.counts, small, threshold=max(threshold, 2), sites=site_counts
        )
        reported = [passes[2 * g] and passes[2 * g + 1] for g in range(groups)]
        outcome = PerGroup(threshold, [None] * groups)
        if not any(reported):
            return outcome
        shown = np.array([g for g in range(groups) if reported[g]])
        k = len(shown)
        levels = np.concatenate([2 * shown, 2 * shown + 1])  # every a, then every b
        # the cell keys: each level's pseudo-row (ω from key A, its corner bit from key B), and
        # n = n_a + n_b + p with p the count perturbation of both levels' rows together
        unions = [[int(c)] for c in levels] + [[2 * int(g), 2 * int(g) + 1] for g in shown]
        shift = union_perturbation(mpc, small, summary.vectors["keys"], size, unions)
        bounds = self.corner_bounds()
        if bounds is None:
            at = np.concatenate([2 * levels, 2 * levels + 1])
            sites = mpc.input(small.array(np.array(summary.vectors["corners"], dtype=object)))
            ends = [s[at] for s in sites]
            bits = CORNER_LIMIT_BITS + 2
            low = functools.reduce(
                lambda x, y: secure_min(mpc, x, y, bits), [e[: 2 * k] for e in ends]
            )
            high = functools.reduce(
                lambda x, y: secure_max(mpc, x, y, bits), [e[2 * k :] for e in ends]
            )
        else:
            low, high = bounds
        slot = sign_slot(self.query.column)
        corner = high + shift.signs[: 2 * k, slot] * (low - high)
        offset = 1 << CORNER_LIMIT_BITS
        moved = await convert(
            mpc,
            mpc.np_concatenate((corner + offset, shift.weight[: 2 * k])),
            exact_type(mpc, ratio_field_bits(RATIO_BITS)),
            CORNER_LIMIT_BITS + 2,
        )
        stype = type(moved).sectype
        c, omega = moved[: 2 * k] - offset, moved[2 * k :]
        assert self.rules is not None
        w = omega * scale_factor(self.rules.magnitude)  # w·2**16: the pseudo-row's weight
        # each level with its pseudo-row, on the scale κ = 2**16 (n → N/κ, Σx → S/κ, …)
        n = pooled(mpc, stype, summary.counts)[levels] * KAPPA + w
        s = pooled(mpc, stype, summary.moments["sum"])[levels] * KAPPA + w * c * (
            1 << (FRAC_BITS - LARGEST_SCALE_BITS)
        )
        q = pooled(mpc, stype, summary.moments["sumsq"])[levels] * KAPPA + w * c * c * (
            1 << (FRAC_BITS - 2 * LARGEST_SCALE_BITS)
        )
        a, b = np.arange(k), np.arange(k, 2 * k)
        n_a, n_b = n[a], n[b]
        centred = q * n * (1 << FRAC_BITS) - s * s  # ≥ 0: a weighted sample's
        a_a, a_b = centred[a], centred[b]
        d = n * n * (n - KAPPA)
        d_a, d_b = d[a], d[b]
        diff = s[a] * n_b - s[b] * n_a
        spread = a_a * d_b + a_b * d_a
        n_ab = n_a * n_b
        # t² and df each carry a factor κ in the denominator (`smpc.statistics.ttest` docs)
        numerators = mpc.np_tolist(diff * diff * d_a * d_b)
        numerators += mpc.np_tolist(spread * spread * (n_a - KAPPA) * (n_b - KAPPA))
        denominators = mpc.np_tolist(n_ab * n_ab * spread * KAPPA)
        denominators += mpc.np_tolist(
            (a_a * a_a * d_b * d_b * (n_b - KAPPA) + a_b * a_b * d_a * d_a * (n_a - KAPPA)) * KAPPA
        )
        positive = open_nonnegative_soon(mpc, diff, DIFF_BITS)  # alongside the ratios
        ratios = await open_rounded_ratios(mpc, numerators, denominators, RATIO_BITS)
        t2, df = ratios[:k], ratios[k:]
        signs = await positive
        pooled_counts = functools.reduce(operator.add, site_counts)
        totals = await mpc.output(
            pooled_counts[2 * shown] + pooled_counts[2 * shown + 1] + shift.count[2 * k :]
        )
        for i, g in enumerate(shown):
            outcome.groups[g] = {
                "n": max(0, int(totals[i])),
                "t2": t2[i],
                "sign": 1 if signs[i] else -1,
                "df": df[i],
            }
        return outcome

    def plain(self, summaries: list[LocalSummary], frames: list[pd.DataFrame]) -> Any:
        """`compute` in plaintext (the tests' and the demo's twin): the same release (both
        levels ≥ max(T, 2), each site's count 0 or at least its floor), n + p from the same
        keys, and Welch's test exactly on each level's sums with the same pseudo-row (the MPC
        rounds t² and df to 25 significant bits)."""
        if self.query.dp is not None:
            return None
        from smpc.cellkey import plain_model_shift
        from smpc.protocol import plain_cell_keys, plain_cell_perturbation, plain_release

        rules = self.rules
        assert rules is not None
        size = len(summaries[0].counts)
        outcome = PerGroup(rules.threshold, [None] * len(self.layout.groups))
        bounds = self.corner_bounds()
        magnitude = scale_factor(rules.magnitude)
        for g in range(len(self.layout.groups)):
            cells = (2 * g, 2 * g + 1)
            levels = [plain_release(summaries, rules, c, max(rules.threshold, 2)) for c in cells]
            if not all(ok for ok, _ in levels):
                continue
            moments = []
            for c in cells:
                omega, signs = plain_model_shift(*plain_cell_keys(summaries, size, [c]))
                if bounds is None:
                    low = min(x.vectors["corners"][2 * c] for x in summaries)
                    high = max(x.vectors["corners"][2 * c + 1] for x in summaries)
                else:
                    low, high = bounds
                corner = low if signs[sign_slot(self.query.column)] else high
                w = omega * magnitude
                n = sum(x.counts[c] for x in summaries) * KAPPA + w
                total = sum(x.moments["sum"][c] for x in summaries) * KAPPA
                total += w * corner * (1 << (FRAC_BITS - LARGEST_SCALE_BITS))
                square = sum(x.moments["sumsq"][c] for x in summaries) * KAPPA
                square += w * corner * corner * (1 << (FRAC_BITS - 2 * LARGEST_SCALE_BITS))
                moments.append((n, total, square))
            t2, df, sign = welch_from_sums(*moments[0], *moments[1])
            p, _, _ = plain_cell_perturbation(summaries, size, list(cells))
            outcome.groups[g] = {
                "n": max(0, sum(n for _, n in levels) + p),
                "t2": t2,
                "sign": sign,
                "df": df,
            }
        return outcome

    # ---- what the dry run says --------------------------------------------------------

    @property
    def perturbed(self) -> bool:
        return True  # n + p, and a cell-key pseudo-row on each level's sums

    def expected_error(self, rules: AppliedRules) -> dict[str, str]:
        return {
            "n": self.n_published,
            "statistic, p_value, df": (
                "Welch's test of the two levels, each with one pseudo-row of weight up to "
                f"{2 * rules.magnitude:g} (2 × magnitude) at the low or high declared bound of "
                f"{self.query.column!r} (without bounds: the level's own smallest or largest "
                "value), t² and df rounded to 25 significant bits: like adding up to "
                f"{2 * rules.magnitude:g} of a patient at a corner of the data to each level"
            ),
        }

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
