"""`quantile`: pooled quantiles, as `numpy.quantile(pooled, q, method="inverted_cdf")`, found
inside MPC on a fine grid of the declared range and published moved by cell key.

The inverted-CDF quantile of level q over n pooled values is the value of rank k = max(1,
⌈n·q⌉) (q as the decimal the analyst wrote: 0.2 is 1/5; numpy takes the same rank from its
float product). A quantile needs the column's declared bounds [min, max].

Protocol (`exact` mode), per group of `group_by`:

1. each party shares its row count per group, its cells' key sums and its histogram of the
   group's values over 2^12 equal bins of [min, max] (values clipped to the bounds); no row
   reaches the party process. The pooled count is compared with T inside MPC, every site's
   count 0 or at least its floor (`release`), and only that bit is opened;
2. for a released group and each level q = a/d, the bin holding rank k is found obliviously in
   two stages of 2^6 positions: the cumulative counts C_j of the 64 coarse bins are tested,
   C_j·d − a·n − [a = 0] ≥ 0 (that is C_j ≥ k, with the secret n), one secure comparison each;
   the coarse bin is the number of failed tests and its one-hot vector the differences of
   the passed ones; the one-hot vector times the histogram gives that bin's 64 fine counts
   (one secret product per entry), whose cumulative counts from the rows below the bin are
   tested the same way. The fine bin's index is secret;
3. each level's result is that bin's midpoint, every level of the group moved by the same
   u_b·noise·(max − min) (u_b from the group's key B, `smpc.cellkey`), rounded down to 2^-16
   inside MPC, and n is opened as n + p (the count perturbation). Opened: those values only.
   Not the exact quantile (a child's value), n, the bin, or the shift.

Why a grid: the search of earlier versions cut the order keys of the values at public points
and opened [quantile ≤ cut] each round, so every party learned each exact quantile (a data
value, often one child's) and n. The grid's bin is 1/4096 of the declared range (0.03 kg on
2–120 kg), far below the perturbation (up to a quarter of the range by default), and the
result is never a data value. The same rows always give the same answer.

Cost: per group the 2^12 counts of each party's histogram (shared), and per level 128 secure
comparisons of about 40 bits (more for a level of many decimal digits: 1/3 written as
0.3333333333333333 is 3333333333333333/10^16), a 64 × 64 secret product and one rounding;
a constant number of rounds. Independent of the number of rows.

With `dp` (`{"epsilon": ε}`): no search and no rows. Each party shares its per-group row count
and its histogram over 2^8 equal bins of the declared [min, max] (values clipped to it; the
bounds are required). Inside MPC: the count gets discrete Laplace noise (`smpc.dp`) and is
compared with T; released noisy counts ñ are opened (n = max(0, ñ)). For a group with n > 0
the fine bins are merged into m = 2^b candidate bins, b = `candidate_bits(ñ)` (16 to 256,
about ñ/4 rows a bin: post-processing of ñ). Per level q the utility of bin j (`Utility`) is
u_j = −max(0, L_j − t, t − R_j), L_j and R_j the pooled counts below the bin and up to its
top, t = q(n − 1) + ½ with the exact, secret n: sensitivity Δ = max(q, 1 − q) ≤ 1 rank under
adding or removing one row (L_j, R_j move by 0 or 1, n by 1; q is rounded to 2^-16 when it is
not a multiple of it). Each u_j is computed on shares (2 comparisons), one-sided geometric
noise of α = exp(−ε_q/(2Δ)) is added, a tournament of secure comparisons finds the winning
index (ties to the lowest), and only that index is opened; the answer is the bin's midpoint.
This report-noisy-max is ε_q-DP (proof in `smpc.dp`; the plaintext twin of its law,
`selection_probabilities`, is checked against e^ε on neighbouring histograms in the tests).
ε is split evenly over the noisy count and the distinct levels (sequential composition);
groups are disjoint (parallel composition). The sampler's truncation adds at most
(1 + levels·m)·2^-64 to δ. Cost per (group, level): m one-sided noise samples (about 8 to 11
coins each at ε_q ≤ 1), 3m − 1 secure comparisons in log2(m) + 1 rounds.

Missing values are skipped. At most 99 levels q per query.

Reveals: per released group n + p and each requested quantile as its fine bin's midpoint moved
by the group's cell-key shift; which groups are suppressed (below `min_count`); the overall
n + p only when no group is; with `min_count` 0, whether a released group is empty (one bit,
its quantiles then null). With `dp`: per released group the noisy n and, per level, the index
of the chosen bin (its midpoint is the result); which groups are suppressed (noisy n below
`min_count`).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, field_validator

from smpc.cost import QueryCost, key_decompositions, noise_coins, prelude_comparisons
from smpc.disclosure import AppliedRules
from smpc.dp import NoiseSpec, column_bounds, describe
from smpc.encoding import FRAC_BITS, MOMENT_BITS, encode_moment
from smpc.job import LocalSummary, PartyJob
from smpc.query import ColumnQuery
from smpc.statistics.base import Opened, SecureStatistic, number
from tessera.errors import QueryInvalid

if TYPE_CHECKING:
    import pandas as pd

GRID_BITS = 12  # the exact mode: each party shares its histogram over 2^12 bins of [min, max]
STAGE_BITS = 4  # searched in three stages of 2^4 parts
DP_GRID_BITS = 8  # with dp, each party shares its histogram over 2^8 equal bins of [min, max]
DP_MIN_BITS = 4  # at least 2^4 candidate bins
LEVEL_BITS = 16  # a level q not a multiple of 2^-16 is rounded to one (with dp)
COUNT_LIMIT_BITS = 34  # pooled counts < 2^34 (`smpc.protocol.COUNT_BITS`)
MECHANISM = "discrete_laplace+report_noisy_max"


def level_fraction(q: float) -> tuple[int, int]:
    """q as the fraction a/d of its shortest decimal form (0.2 is 1/5, not the binary
    0.2000000000000000111), as the analyst wrote it."""
    level = Fraction(repr(float(q)))
    return level.numerator, level.denominator


def grid_rank(n: int, q: float) -> int:
    """The 1-based rank the exact mode finds for level q of n ≥ 1 values: max(1, ⌈n·q⌉) for
    q's decimal fraction (`level_fraction`). numpy's `inverted_cdf` takes ⌈n·q⌉ from the
    float product n·q − 1: the same rank but where that product rounds across an integer."""
    a, d = level_fraction(q)
    return max(1, -(-n * a // d))


def quantile_key(q: float) -> str:
    """The result key of level q: Python's shortest repr of the float ("0.5", "1.0")."""
    return repr(float(q))


def candidate_bits(noisy_n: int) -> int:
    """log2 of the number of candidate bins for a group of noisy size ñ (dp): about ñ/4 rows
    a bin, from 2^DP_MIN_BITS to 2^DP_GRID_BITS (post-processing of the released ñ)."""
    wanted = math.ceil(math.log2(max(noisy_n, 1) / 4)) if noisy_n > 4 else 0
    return min(DP_GRID_BITS, max(DP_MIN_BITS, wanted))


def grid_bins(
    values: np.ndarray, bounds: tuple[float, float], bits: int = DP_GRID_BITS
) -> np.ndarray:
    """Each value's bin among the 2^bits equal bins of the declared [min, max] (half-open, the
    last closed; values outside are clipped to the bounds first)."""
    low, high = bounds
    edges = low + (high - low) * np.arange(1, 1 << bits) / (1 << bits)
    return np.searchsorted(edges, np.clip(values, low, high), side="right").astype(np.int64)


def grid_index(histogram: Sequence[int], q: float) -> int:
    """The bin (0-based, of the fine grid) holding the rank-`grid_rank` value of a histogram
    with n ≥ 1 rows: the first bin whose cumulative count reaches it."""
    counts = np.asarray(histogram, dtype=np.int64)
    rank = grid_rank(int(counts.sum()), q)
    return int(np.searchsorted(np.cumsum(counts), rank, side="left"))


@dataclass(frozen=True)
class Utility:
    """The dp selection's utility of the candidate bins for one level q, on an integer scale.

    A bin holding pooled ranks (L, R] (L rows below it, R at or below its top) scores
    u = −dist(t, [L, R]) = −max(0, L − t, t − R) for the target rank position t = q(n − 1) + ½
    (numpy's default "linear" position of level q, at the centre of its rank; t is within ½ a
    rank of `inverted_cdf`'s). Multiplied by 2D/g (q = a/D, g the common divisor) both
    excesses are integers: L·`scale` − n·`count` − `offset` and n·`count` + `offset` − R·`scale`.
    Adding or removing a row changes L and R by 0 or 1 (R at least as much as L) and n by 1, so
    each excess moves by −q or 1 − q (resp. q or q − 1) ranks: the utility's sensitivity is
    max(q, 1 − q) ranks, `sensitivity` units.
    """

    scale: int
    count: int
    offset: int
    sensitivity: int
    unit: Fraction  # one unit, in ranks

    @classmethod
    def of(cls, q: float) -> Utility:
        level = Fraction(q)
        if level.denominator > 1 << LEVEL_BITS:
            level = Fraction(round(q * (1 << LEVEL_BITS)), 1 << LEVEL_BITS)
        a, d = level.numerator, level.denominator
        g = math.gcd(2 * d, 2 * a, d - 2 * a)
        return cls(
            2 * d // g, 2 * a // g, (d - 2 * a) // g, 2 * max(a, d - a) // g, Fraction(g, 2 * d)
        )

    @property
    def bits(self) -> int:
        """|excess| < 2^bits for pooled counts below 2^COUNT_LIMIT_BITS."""
        return (self.scale + self.count + abs(self.offset)).bit_length() + COUNT_LIMIT_BITS

    def noise(self, epsilon: float) -> NoiseSpec:
        """The one-sided geometric noise of report-noisy-max at ε: calibrated for 2Δ."""
        return NoiseSpec(epsilon, 2 * self.sensitivity, self.unit)

    def plain(self, counts: Sequence[int]) -> np.ndarray:
        """The utilities of bins with these pooled counts, in plaintext (integers, ≤ 0)."""
        upto = np.cumsum(np.asarray(counts, dtype=object))
        below, n = upto - np.asarray(counts, dtype=object), int(upto[-1])
        low = below * self.scale - n * self.count - self.offset
        high = n * self.count + self.offset - upto * self.scale
        return -np.maximum(0, np.maximum(low, high)).astype(np.int64)


def selection_probabilities(utilities: Sequence[int], alpha: float) -> np.ndarray:
    """The exact law of report-noisy-max over integer `utilities` with independent one-sided
    geometric noise, P(X = x) = (1 − α)αˣ, ties to the lowest index (the protocol's plaintext
    twin): P(i) = Σₓ P(X = x) Π_{j<i} P(u_j + X_j < u_i + x) Π_{j>i} P(u_j + X_j ≤ u_i + x).
    Sums over every integer score: for small scales (levels q of small dyadic denominator)."""
    u = np.asarray(utilities, dtype=np.int64)
    reach = math.ceil(40 / -math.log(alpha))  # αˣ < e^-40 beyond
    v = np.arange(int(u.min()), int(u.max()) + reach + 1)
    log_alpha = math.log(alpha)

    def log_cdf(shift: int) -> np.ndarray:  # log P(u_j + X_j ≤ v − shift), per (j, v)
        y = v[None, :] - shift - u[:, None]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.where(y >= 0, np.log1p(-np.exp((y + 1) * log_alpha)), -np.inf)

    strict, weak = log_cdf(1), log_cdf(0)
    zeros = np.zeros((1, len(v)))
    before = np.cumsum(np.vstack([zeros, strict[:-1]]), axis=0)
    after = np.cumsum(np.vstack([zeros, weak[::-1][:-1]]), axis=0)[::-1]
    x = v[None, :] - u[:, None]
    with np.errstate(invalid="ignore"):
        terms = np.where(x >= 0, math.log1p(-alpha) + x * log_alpha + before + after, -np.inf)
    return np.exp(terms).sum(axis=1)


@dataclass
class QuantileOpened(Opened):
    values: list[list[float | None]] = field(default_factory=list)  # per group, per q


class QuantileQuery(ColumnQuery):
    statistic: Literal["quantile"]
    q: list[float] = Field(min_length=1, max_length=99, description="Quantile levels in [0, 1].")

    @field_validator("q")
    @classmethod
    def _in_unit_interval(cls, q: list[float]) -> list[float]:
        if any(not 0 <= v <= 1 for v in q):
            raise ValueError("quantile levels q must lie in [0, 1]")
        return q


class Quantile(SecureStatistic):
    name = "quantile"
    moved_by_range = True
    supports_dp = True  # noisy n, and each level's bin chosen by report-noisy-max (see above)
    query_model = QuantileQuery
    numeric_column = True
    result_fields = {"quantiles": dict[str, float | None]}
    query: QuantileQuery

    def __init__(self, query: Any, schema: Any) -> None:
        super().__init__(query, schema)
        if query.dp is not None:
            self.noise = self.dp_plan(query.dp.epsilon)

    def check_columns(self) -> None:
        column = getattr(self.query, "column", None)
        spec = self.schema.column(column) if isinstance(column, str) else None
        if self.query.dp is not None and spec is not None and spec.is_numeric:  # noqa: SIM102
            if column_bounds(spec) is None:
                raise QueryInvalid(
                    f"dp quantile of {column!r} needs the column's bounds: declare finite 'min' "
                    f"and 'max' for {column!r} in the dataset schema (the candidate answers are "
                    "bins of that range, and values are clipped to it)",
                    {"column": column, "field": "dp"},
                )
        super().check_columns()

    @property
    def levels(self) -> list[float]:
        """The distinct levels q (with dp, each spends its share of ε once)."""
        return list(dict.fromkeys(self.query.q))

    def dp_plan(self, epsilon: float) -> dict[str, NoiseSpec]:
        """ε split evenly over the noisy n and each distinct level's selection (sequential
        composition; groups compose in parallel)."""
        share = epsilon / (1 + len(self.levels))
        plan = {"count": NoiseSpec(share, 1)}
        for q in self.levels:
            plan[f"quantile {quantile_key(q)}"] = Utility.of(q).noise(share)
        return plan

    # ---- local part ----------------------------------------------------------------------

    def local_input(self, frame: pd.DataFrame) -> LocalSummary:
        """Per-group row counts (shared) and this party's own selected values with their group
        (`rows`: read only by this party's own process, to count values below cut points).
        With dp: per-group row counts and histograms over the fine grid (both shared), no rows."""
        from smpc.cellkey import key_sums

        if self.query.dp is not None:
            data, cells = self.rows(frame)
            assert self.column is not None and self.declared_bounds is not None
            values = data[self.column].to_numpy(dtype=float)
            fine = cells * (1 << DP_GRID_BITS) + grid_bins(values, self.declared_bounds)
            counts = np.bincount(cells, minlength=self.layout.size)
            bins = np.bincount(fine, minlength=self.layout.size << DP_GRID_BITS)
            return LocalSummary(
                counts=[int(c) for c in counts], vectors={"bins": [int(c) for c in bins]}
            )
        data, cells, keys = self.keyed_rows(frame)
        assert self.column is not None and self.declared_bounds is not None
        size = self.layout.size
        counts = np.bincount(cells, minlength=size)
        values = data[self.column].to_numpy(dtype=float)
        fine = cells * (1 << GRID_BITS) + grid_bins(values, self.declared_bounds, GRID_BITS)
        bins = np.bincount(fine, minlength=size << GRID_BITS)
        return LocalSummary(
            counts=[int(c) for c in counts],
            vectors={"keys": key_sums(keys, cells, size), "grid": [int(c) for c in bins]},
        )

    def expected_error(self, rules: AppliedRules) -> dict[str, str]:
        assert self.declared_range is not None
        if self.query.dp is not None:
            return {
                "n": f"discrete Laplace noise of scale {self.noise['count'].scale:g}",
                "quantiles": "the midpoint of a bin of width (declared range)/m, m = 16 to 256 "
                "from the noisy n; the bin is chosen with geometric noise of scale "
                + ", ".join(
                    f"{spec.scale:g} ranks ({name})"
                    for name, spec in self.noise.items()
                    if name != "count"
                ),
            }
        return {
            "n": "at most ±3 (standard deviation 1.58)",
            "quantiles": f"each the midpoint of its bin of {self.declared_range:g}/4096, all "
            f"moved by the same amount, at most ±{rules.noise:g} × {self.declared_range:g} (the "
            "declared range), per group",
        }

    def cost(self, parties: int) -> QueryCost:
        """Cells: per group n and one value per level. Comparisons, `exact` mode: the
        prelude's, one release comparison per group, the cell keys of every group and the
        total, per (group, level) 16 comparisons in each of the search's three stages and one
        rounding. With `dp`: the count's noise and release per group, and per (group,
        distinct level) report-noisy-max over at most 2^8 candidate bins m: 2m sign tests of
        the utilities' excesses, m one-sided noise samples and a tournament of m − 1."""
        groups, levels = self.layout.size, len(self.query.q)
        cells = groups * (1 + levels)
        if self.query.dp is not None:
            m = 1 << DP_GRID_BITS
            selection = sum(
                groups * (3 * m - 1 + noise_coins(spec, m, one_sided=True))
                for name, spec in self.noise.items()
                if name != "count"
            )
            count = noise_coins(self.noise["count"], groups) + groups
            return QueryCost(cells, prelude_comparisons(self) + count + selection)
        stages = GRID_BITS // STAGE_BITS
        search = groups * levels * (stages * (1 << STAGE_BITS) + 1)
        compared = prelude_comparisons(self) + groups + key_decompositions(groups + 1) + search
        return QueryCost(cells, compared)

    # ---- the secure part -------------------------------------------------------------------

    async def compute(self, mpc: Any, job: PartyJob) -> QuantileOpened:
        size = self.layout.size
        summary = job.summary
        if len(summary.counts) != size:
            raise ValueError(f"local summary has {len(summary.counts)} groups, layout needs {size}")
        if self.query.dp is not None:
            return await self._noisy(mpc, job)
        from smpc.cellkey import floor_bits
        from smpc.protocol import (
            EXTREME_DROP,
            EXTREME_UNIT,
            at_least,
            cell_perturbation,
            check_histograms,
            extreme_step,
            moved_counts,
            release,
        )

        if len(summary.vectors.get("grid", ())) != size << GRID_BITS:
            raise ValueError(f"local summary does not fit the layout's {size} groups")
        secint = mpc.SecInt(MOMENT_BITS)
        threshold = self.threshold
        site_counts = mpc.input(secint.array(np.array(summary.counts, dtype=object)))
        site_grids = mpc.input(secint.array(np.array(summary.vectors["grid"], dtype=object)))
        # each site's grid adds up to its counts (a bin's sign is not checked: 2^12 bins of 30
        # bits each would triple the protocol; a node could only move the quantile within the
        # declared range, as by lying about its rows)
        await check_histograms(mpc, self, secint, site_counts, site_grids)
        counts, released = await release(mpc, self, summary.counts, secint, sites=site_counts)
        opened = QuantileOpened(threshold=threshold, released=released, counts=[None] * size)
        levels = self.query.q
        opened.values = [[None] * len(levels) for _ in range(size)]
        shown = np.flatnonzero(released)
        if not shown.size:
            return opened
        whole = bool(all(released))
        k = len(shown)
        n = counts[shown]
        nonempty = [True] * k  # T ≥ 1: every released group has rows
        if threshold < 1:  # an empty released group: n 0 and null quantiles (one bit each)
            bits = await mpc.output(at_least(mpc, n, 1, COUNT_LIMIT_BITS))
            nonempty = [bool(int(v)) for v in np.asarray(bits).ravel()]
        grid = functools.reduce(operator.add, site_grids)
        grid = grid.reshape((size, 1 << GRID_BITS))[shown]
        index = self._grid_search(mpc, grid, n)  # (k, levels): secret fine-bin indices
        shift = cell_perturbation(mpc, secint, summary.vectors["keys"], size, shown, whole)
        total = mpc.np_sum(counts, keepdims=True)
        sizes = mpc.np_concatenate((n, total)) if whole else n
        # each level's bin midpoint, all of a group's moved by u_b·noise·(declared range), rounded
        # down to 2**-16 inside MPC: the exact quantile, n and the shift are never opened
        live = np.flatnonzero(nonempty)
        low, step = self.grid_scale()
        values = index[live] * (2 * step) + (low + step)
        noise = shift.magnitude_b[live].reshape((len(live), 1)) * extreme_step(self)
        moved = (values * (1 << EXTREME_UNIT) + noise).reshape(-1)
        parts = [moved_counts(mpc, sizes, shift.count, threshold, COUNT_LIMIT_BITS)]
        if live.size:
            parts.append(await floor_bits(mpc, moved, EXTREME_DROP))
        out = [int(v) for v in np.asarray(await mpc.output(mpc.np_concatenate(parts))).ravel()]
        width = len(levels)
        found = out[len(out) - len(live) * width :]
        for i, g in enumerate(shown):
            opened.counts[g] = max(0, out[i])
        for j, at in enumerate(live.tolist()):
            opened.values[shown[at]] = [
                float(Fraction(v, 1 << (FRAC_BITS + EXTREME_UNIT)))
                for v in found[j * width : (j + 1) * width]
            ]
        if whole:
            opened.total = max(0, out[k])
        return opened

    def grid_scale(self) -> tuple[int, int]:
        """The fine grid's low bound and half a bin, scaled 2**40 (the moment scale): bin i's
        midpoint is low + (2i + 1)·half."""
        assert self.declared_bounds is not None
        low, high = (encode_moment(b) for b in self.declared_bounds)
        return low, (high - low) // (1 << (GRID_BITS + 1))

    def _grid_search(self, mpc: Any, grid: Any, n: Any) -> Any:
        """Per group (rows of `grid`, its pooled fine histogram, and of `n`, its pooled count)
        and level q: the fine bin holding the value of rank max(1, ⌈n·q⌉), secret. Three
        stages of 2^4 positions (16 × 16 × 16 = 2^12 bins): at each, the cumulative counts of
        the current block's 16 parts, from the rows below the block, are tested against the
        rank, C·d − a·n − [a = 0] ≥ 0 for q = a/d (one secure comparison each, sized by d);
        the part is the number of failed tests, and its one-hot vector (the differences of the
        passed ones) times the block's counts is the next block. Nothing is opened."""
        k, parts = grid.shape[0], 1 << STAGE_BITS
        fractions = [level_fraction(q) for q in self.query.q]
        levels = len(fractions)
        cumulate = np.triu(np.ones((parts, parts), dtype=object))
        stype = type(grid).sectype

        def reached(upto: Any) -> Any:  # (k, levels, parts): cumulative count ≥ the rank
            tests = []
            for j, (a, d) in enumerate(fractions):
                value = upto[:, j] * d - n.reshape((k, 1)) * a - (1 if a == 0 else 0)
                bits = (d + a + 1).bit_length() + COUNT_LIMIT_BITS + 1
                tests.append(1 - mpc.np_sgn(value, l=bits, LT=True))
            return mpc.np_stack(tests, axis=1)

        def one_hot(flags: Any) -> Any:
            zero = stype.array(np.zeros((k, levels, 1), dtype=object))
            return flags - mpc.np_concatenate((zero, flags[:, :, :-1]), axis=2)

        # stage 1: the same 16 parts of the whole grid for every level of a group
        first = grid.reshape((k, parts, -1))
        counts = first.sum(axis=2)  # (k, 16)
        upto = counts @ cumulate
        flags = reached(mpc.np_stack([upto] * levels, axis=1))
        index = parts - flags.sum(axis=2)
        chosen = one_hot(flags)
        below = (chosen * mpc.np_stack([upto - counts] * levels, axis=1)).sum(axis=2)
        block = mpc.np_stack([mpc.np_matmul(chosen[g], first[g]) for g in range(k)])
        for stage in range(1, GRID_BITS // STAGE_BITS):
            split = block.reshape((k, levels, parts, -1))
            counts = split.sum(axis=3)  # (k, levels, 16)
            upto = counts @ cumulate + below.reshape((k, levels, 1))
            flags = reached(upto)
            index = index * parts + (parts - flags.sum(axis=2))
            if stage + 1 < GRID_BITS // STAGE_BITS:
                chosen = one_hot(flags)
                below = (chosen * (upto - counts)).sum(axis=2)
                weights = chosen.reshape((k, levels, parts, 1))
                block = (split * mpc.np_concatenate([weights] * split.shape[3], axis=3)).sum(axis=2)
        return index

    async def _noisy(self, mpc: Any, job: PartyJob) -> QuantileOpened:
        """The dp protocol: noisy n and release, then per level report-noisy-max over bins."""
        from smpc.dp import discrete_laplace
        from smpc.protocol import check_counts, check_histograms, noisy_release

        size, fine = self.layout.size, 1 << DP_GRID_BITS
        summary = job.summary
        if len(summary.counts) != size or len(summary.vectors["bins"]) != size * fine:
            raise ValueError(f"local summary does not fit the layout's {size} groups")
        secint = mpc.SecInt(MOMENT_BITS)
        site_counts = mpc.input(secint.array(np.array(summary.counts, dtype=object)))
        site_bins = mpc.input(secint.array(np.array(summary.vectors["bins"], dtype=object)))
        await check_counts(mpc, self, secint, site_counts, summary.counts)
        await check_histograms(mpc, self, secint, site_counts, site_bins, summary.vectors["bins"])
        counts = functools.reduce(operator.add, site_counts)
        histograms = functools.reduce(operator.add, site_bins).reshape((size, fine))
        noisy = counts + discrete_laplace(mpc, secint, [self.noise["count"]] * size)
        threshold = self.threshold
        released = await noisy_release(mpc, noisy, threshold)
        opened = QuantileOpened(threshold=threshold, released=released, counts=[None] * size)
        opened.values = [[None] * len(self.query.q) for _ in range(size)]
        shown = np.flatnonzero(released)
        if shown.size:
            values = await mpc.output(noisy[shown])
            for g, v in zip(shown, np.asarray(values).ravel(), strict=True):
                opened.counts[g] = max(0, int(v))
        if all(released):
            opened.total = sum(c for c in opened.counts if c is not None)

        by_bits: dict[int, list[int]] = {}  # groups by their number of candidate bins
        for g in shown:
            n = opened.counts[g]
            if n:  # a released n of 0 has null quantiles (post-processing: no selection)
                by_bits.setdefault(candidate_bits(n), []).append(int(g))
        winners = {
            bits: self._select(mpc, secint, counts, histograms, groups, bits)
            for bits, groups in sorted(by_bits.items())
        }  # all scheduled before anything is awaited
        assert self.declared_bounds is not None
        low, high = self.declared_bounds
        levels = self.levels
        for bits, groups in sorted(by_bits.items()):
            index = np.asarray(await mpc.output(winners[bits])).reshape(len(levels), len(groups))
            width = (high - low) / (1 << bits)
            for i, group in enumerate(groups):  # the chosen bin's midpoint
                found = {q: low + (int(index[k, i]) + 0.5) * width for k, q in enumerate(levels)}
                opened.values[group] = [found[q] for q in self.query.q]
        return opened

    def _select(
        self, mpc: Any, secint: Any, counts: Any, histograms: Any, groups: list[int], bits: int
    ) -> Any:
        """The winning bin (secret) of each (level, group), report-noisy-max over 2^bits bins."""
        from smpc.dp import discrete_laplace

        m, merge = 1 << bits, 1 << (DP_GRID_BITS - bits)
        fine = np.arange(1 << DP_GRID_BITS)
        coarsen = (fine[:, None] // merge == np.arange(m)[None, :]).astype(object)
        strictly_below = (np.arange(m)[:, None] < np.arange(m)[None, :]).astype(object)
        binned = histograms[np.array(groups)] @ coarsen  # (G, m) pooled counts per bin
        below = binned @ strictly_below  # L: rows below each bin
        upto = below + binned  # R
        n = counts[np.array(groups)].reshape((len(groups), 1)) @ np.ones((1, m), dtype=object)
        excess, specs, width = [], [], 0
        for q in self.levels:
            utility = Utility.of(q)
            excess.append(below * utility.scale - n * utility.count - utility.offset)
            excess.append(n * utility.count + utility.offset - upto * utility.scale)
            spec = self.noise[f"quantile {quantile_key(q)}"]
            specs += [spec] * (len(groups) * m)
            width = max(width, utility.bits, spec.bits)
        both = mpc.np_concatenate(excess)  # (2·levels·G, m): the two excesses of each level
        positive = both * (1 - mpc.np_sgn(both, l=width + 1, LT=True))
        pairs = positive.reshape((len(self.levels), 2, len(groups), m))
        utilities = -(pairs[:, 0] + pairs[:, 1])  # at most one excess is positive (L ≤ R)
        noise = discrete_laplace(mpc, secint, specs, one_sided=True)
        scores = utilities.reshape((-1, m)) + noise.reshape((-1, m))
        return noisy_argmax(mpc, scores, width + 2)

    def plain(
        self, summaries: list[LocalSummary], frames: list[pd.DataFrame]
    ) -> QuantileOpened | None:
        """`compute`'s opened values in plaintext (the tests' oracle): the same pooled fine
        histograms, bins, keys and rounding. None with dp (the selection's law is
        `selection_probabilities`)."""
        from smpc.protocol import (
            EXTREME_DROP,
            EXTREME_UNIT,
            extreme_step,
            plain_cell_perturbation,
            plain_moved_count,
            plain_release,
        )

        if self.query.dp is not None:
            return None
        rules = self.rules
        assert rules is not None and self.declared_range is not None
        size = self.layout.size
        opened = QuantileOpened(
            threshold=rules.threshold, released=[False] * size, counts=[None] * size
        )
        opened.values = [[None] * len(self.query.q) for _ in range(size)]
        grid = np.sum([s.vectors["grid"] for s in summaries], axis=0).reshape(size, -1)
        low, step = self.grid_scale()
        drop = 1 << EXTREME_DROP
        exact = []
        for g in range(size):
            opened.released[g], n = plain_release(summaries, rules, g)
            if not opened.released[g]:
                continue
            exact.append(n)
            p, _, u_b = plain_cell_perturbation(summaries, size, [g])
            opened.counts[g] = plain_moved_count(n, p, rules.threshold)
            if n:
                values: list[float | None] = []
                for q in self.query.q:
                    value = low + step + 2 * step * grid_index(grid[g], q)
                    moved = value * (1 << EXTREME_UNIT) + u_b * extreme_step(self)
                    rounded = moved - moved % drop
                    values.append(float(Fraction(rounded, 1 << (FRAC_BITS + EXTREME_UNIT))))
                opened.values[g] = values
        if all(opened.released) and size:
            p, _, _ = plain_cell_perturbation(summaries, size, list(range(size)))
            opened.total = plain_moved_count(sum(exact), p, rules.threshold)
        return opened

    # ---- after the protocol ----------------------------------------------------------------

    def cell_values(self, opened: Opened, cell: int) -> dict[str, Any]:
        assert isinstance(opened, QuantileOpened)
        values = opened.values[cell]
        return {
            "quantiles": {
                quantile_key(q): number(self.within_bounds(v))
                for q, v in zip(self.query.q, values, strict=True)
            }
        }

    def empty_values(self) -> dict[str, Any]:
        return {"quantiles": {quantile_key(q): None for q in self.query.q}}

    def with_dp(self, result: dict[str, Any]) -> dict[str, Any]:
        if self.query.dp is None:
            return result
        applied = describe(self.query.dp.epsilon, self.query.dp.delta, self.noise)
        return {**result, "dp": {**applied, "mechanism": MECHANISM}}

    def reference_values(self, sub: pd.DataFrame) -> dict[str, Any]:
        assert self.column is not None
        values = sub[self.column].to_numpy(dtype=float)
        if not len(values):
            return self.empty_values()
        if self.query.dp is not None and self.declared_bounds is not None:
            values = np.clip(values, *self.declared_bounds)  # dp: values clipped to the bounds
        found = np.quantile(values, self.query.q, method="inverted_cdf")
        return {
            "quantiles": {
                quantile_key(q): number(v) for q, v in zip(self.query.q, found, strict=True)
            }
        }


def noisy_argmax(mpc: Any, scores: Any, bits: int) -> Any:
    """The index of each row's largest secret score, ties to the lowest index (secret; rows of
    a power-of-two length, |score differences| < 2^(bits − 1)). A tournament of log2(m) rounds
    of vectorised comparisons; a pair's later entry wins only if strictly larger, so each
    round keeps the lowest-index maximum of its range."""
    m = scores.shape[1]
    index: Any = None
    while m > 1:
        left, right = scores[:, 0::2], scores[:, 1::2]
        later = mpc.np_sgn(left - right, l=bits, LT=True)  # [right > left]
        scores = left + later * (right - left)
        if index is None:
            index = later + np.arange(0, m, 2, dtype=object)[None, :]
        else:
            index = index[:, 0::2] + later * (index[:, 1::2] - index[:, 0::2])
        m //= 2
    assert index is not None, "at least two candidates"
    return index.reshape(-1)
