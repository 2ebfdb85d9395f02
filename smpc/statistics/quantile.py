"""`quantile`: exact pooled quantiles, as `numpy.quantile(pooled, q, method="inverted_cdf")`.

The inverted-CDF quantile of level q over n pooled values is the k-th smallest value, with k
the rank numpy derives from n and q (k = ceil(n·q), at least 1: q = 0 is the minimum, q = 1 the
maximum). It is always one of the data values, so it is found exactly, by a secure search over
the 64-bit *order keys* of float64 values (`smpc.encoding.order_key`, exact and invertible).

Protocol, per group of `group_by`:

1. the nodes' floors are opened and T = max(query `min_count`, every floor); each party shares
   its row count per group, the pooled count is compared with T inside MPC, only that bit is
   opened, and then the pooled n of each released group (n is part of the result). The ranks k
   follow from the public n and q, in plaintext, exactly as numpy computes them;
2. every wanted (group, k) is searched for at once. The answer x is the smallest key whose
   pooled count of values ≤ x reaches k. Each round splits every item's current key interval
   [lo, lo + 2^s) into K = 2^b parts (b = 1, 2, 4 or 8: the fewer items, the wider the split)
   and tests the K − 1 cut points c: each party counts *its own* values ≤ c in its own party
   process (from its own sorted column; the rows never leave the node), shares the counts, the
   pooled counts are compared with k inside MPC and only the bit [pooled ≤ c count ≥ k] is
   opened. The interval shrinks to the part holding x; after 64 / b rounds it is x itself.

Why the search reveals nothing more than the quantiles: the opened bit for cut point c is
[x ≤ c], a function of the answer x alone, and the cut points of each round are a function of
the previous bits. The whole transcript is therefore computed from the result (the quantile
values and n) and could be simulated from it; no party's count, nor which site holds the
quantile, is ever opened. Suppressed groups take no part in the search.

Cost: with M distinct (group, k) items, 64 / b rounds of M·(2^b − 1) secure comparisons on
integers of about log2(n) + 2 bits, plus one local binary search per cut point at each party
(O(log rows)). Independent of the number of rows but for the local sort (O(rows·log rows)).
Each round is a few network round trips: between hospitals, latency dominates.

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

Numeric limits: exact for every finite float64 (an infinite quantile is reported as null: JSON
has no infinity); missing values are skipped. At most 99 levels q per query.

Reveals: per released group the pooled n and each requested quantile (exact data values);
which groups are suppressed (below `min_count`); the overall n only when no group is. With
`dp`: per released group the noisy n and, per level, the index of the chosen bin (its
midpoint is the result); which groups are suppressed (noisy n below `min_count`).
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

from smpc.disclosure import AppliedRules
from smpc.dp import NoiseSpec, column_bounds, describe
from smpc.encoding import MOMENT_BITS, from_order_key
from smpc.job import LocalSummary, PartyJob
from smpc.query import ColumnQuery
from smpc.statistics.base import Opened, SecureStatistic, number
from tessera.errors import QueryInvalid

if TYPE_CHECKING:
    import pandas as pd

KEY_SPACE_BITS = 64
ROUND_COMPARISONS = 256  # the widest split whose comparisons per round stay within this
_SIGN = np.int64(-(2**63))
_MAGNITUDE = np.int64(2**63 - 1)
DP_GRID_BITS = 8  # with dp, each party shares its histogram over 2^8 equal bins of [min, max]
DP_MIN_BITS = 4  # at least 2^4 candidate bins
LEVEL_BITS = 16  # a level q not a multiple of 2^-16 is rounded to one (with dp)
COUNT_LIMIT_BITS = 34  # pooled counts < 2^34 (`smpc.protocol.COUNT_BITS`)
MECHANISM = "discrete_laplace+report_noisy_max"


def order_keys(values: np.ndarray) -> np.ndarray:
    """`smpc.encoding.order_key` of every float64 in `values`, as int64 (vectorised)."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.int64)
    return np.where(bits >= 0, bits, -(bits & _MAGNITUDE) - 1).astype(np.int64)


def inverted_cdf_rank(n: int, q: float) -> int:
    """The 1-based rank numpy's `inverted_cdf` takes for level q of n values (n ≥ 1).

    numpy computes the 0-based index from the float64 product ``n * q - 1``: itself when it is
    whole, else the next integer; clipped to [0, n − 1]. Doing the same float arithmetic keeps
    the result identical even where n·q is not exact in binary.
    """
    index = float(n) * float(q) - 1.0
    below = math.floor(index)
    position = below if index == below else below + 1
    return min(max(position, 0), n - 1) + 1


def quantile_key(q: float) -> str:
    """The result key of level q: Python's shortest repr of the float ("0.5", "1.0")."""
    return repr(float(q))


def split_bits(items: int) -> int:
    """Bits b per search round: the widest split whose M·(2^b − 1) comparisons fit a round."""
    for bits in (8, 4, 2):
        if items * ((1 << bits) - 1) <= ROUND_COMPARISONS:
            return bits
    return 1


def candidate_bits(noisy_n: int) -> int:
    """log2 of the number of candidate bins for a group of noisy size ñ (dp): about ñ/4 rows
    a bin, from 2^DP_MIN_BITS to 2^DP_GRID_BITS (post-processing of the released ñ)."""
    wanted = math.ceil(math.log2(max(noisy_n, 1) / 4)) if noisy_n > 4 else 0
    return min(DP_GRID_BITS, max(DP_MIN_BITS, wanted))


def grid_bins(values: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """Each value's bin among the 2^DP_GRID_BITS equal bins of the declared [min, max]
    (half-open, the last closed; values outside are clipped to the bounds first)."""
    low, high = bounds
    edges = low + (high - low) * np.arange(1, 1 << DP_GRID_BITS) / (1 << DP_GRID_BITS)
    return np.searchsorted(edges, np.clip(values, low, high), side="right").astype(np.int64)


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
    intermediates = (
        "the search's comparison bits, each [quantile ≤ a public cut point], all determined by "
        "the quantiles themselves"
    )
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
        assert self.column is not None
        size = self.layout.size
        counts = np.bincount(cells, minlength=size)
        values = data[self.column].to_numpy(dtype=float)
        matrix = np.column_stack([cells.astype(float), values]) if len(values) else np.empty((0, 2))
        return LocalSummary(
            counts=[int(c) for c in counts],
            rows=LocalSummary.pack_rows(matrix),
            vectors={"keys": key_sums(keys, cells, size)},
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
            "quantiles": f"all moved by the same amount, at most ±{rules.noise:g} × "
            f"{self.declared_range:g} (the declared range), per group",
        }

    # ---- the secure part -------------------------------------------------------------------

    async def compute(self, mpc: Any, job: PartyJob) -> QuantileOpened:
        size = self.layout.size
        summary = job.summary
        if len(summary.counts) != size:
            raise ValueError(f"local summary has {len(summary.counts)} groups, layout needs {size}")
        if self.query.dp is not None:
            return await self._noisy(mpc, job)
        from smpc.protocol import release

        secint = mpc.SecInt(MOMENT_BITS)
        threshold = self.threshold
        counts, released = await release(mpc, self, summary.counts, secint)
        opened = QuantileOpened(threshold=threshold, released=released, counts=[None] * size)
        shown = np.flatnonzero(released)
        exact: dict[int, int] = {}  # the parties' exact n per shown group, to find the ranks
        if shown.size:
            values = await mpc.output(counts[shown])
            exact = {int(g): int(v) for g, v in zip(shown, np.asarray(values).ravel(), strict=True)}

        levels = self.query.q
        ranks: dict[tuple[int, int], None] = {}
        for g in shown:
            for q in levels if exact[int(g)] > 0 else ():
                ranks[(int(g), inverted_cdf_rank(exact[int(g)], q))] = None
        items = list(ranks)
        largest = max(exact.values(), default=0)
        keys = await self._search(mpc, items, summary, largest) if items else []
        found = dict(zip(items, keys, strict=True))
        opened.values = [[None] * len(levels) for _ in range(size)]
        if not shown.size:
            return opened
        shift, moved = await self._perturbation(mpc, secint, summary, shown, counts, all(released))
        for i, g in enumerate(shown):
            n = exact[int(g)]
            opened.counts[g] = max(0, n + shift[i]) if n else 0
            if n:
                opened.values[g] = [
                    from_order_key(found[(int(g), inverted_cdf_rank(n, q))]) + moved[i]
                    for q in levels
                ]
        if all(released):
            opened.total = max(0, sum(exact.values()) + shift[-1])
        return opened

    async def _noisy(self, mpc: Any, job: PartyJob) -> QuantileOpened:
        """The dp protocol: noisy n and release, then per level report-noisy-max over bins."""
        from smpc.dp import discrete_laplace
        from smpc.protocol import noisy_release, pooled

        size, fine = self.layout.size, 1 << DP_GRID_BITS
        summary = job.summary
        if len(summary.counts) != size or len(summary.vectors["bins"]) != size * fine:
            raise ValueError(f"local summary does not fit the layout's {size} groups")
        secint = mpc.SecInt(MOMENT_BITS)
        counts = pooled(mpc, secint, summary.counts)
        histograms = pooled(mpc, secint, summary.vectors["bins"]).reshape((size, fine))
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

    async def _perturbation(
        self,
        mpc: Any,
        secint: Any,
        summary: LocalSummary,
        shown: np.ndarray,
        counts: Any,
        whole: bool,
    ) -> tuple[list[int], list[float]]:
        """Per shown group the cell-key count perturbation and the shift of its quantiles,
        u_b·noise·(declared range), rounded to 2**-16 (`smpc.cellkey`); the last count entry is
        the total's when every group is shown. Opened: the parties know the exact quantiles and
        n from the search, so these reveal only the perturbation, which the analyst never sees
        apart from the result."""
        from smpc.protocol import cell_perturbation, range_shift

        size = self.layout.size
        shift = cell_perturbation(mpc, secint, summary.vectors["keys"], size, shown, whole)
        count = await mpc.output(shift.count)
        units = await mpc.output(shift.magnitude_b[: len(shown)])
        moved = [range_shift(self, int(u)) for u in np.asarray(units).ravel()]
        return [int(c) for c in np.asarray(count).ravel()], moved

    async def _search(
        self, mpc: Any, items: list[tuple[int, int]], summary: LocalSummary, largest: int
    ) -> list[int]:
        """The order key of the k-th smallest pooled value of group g, for each (g, k)."""
        own = summary.unpack_rows()
        cells = own[:, 0].astype(np.int64) if own.size else np.empty(0, dtype=np.int64)
        keys = order_keys(own[:, 1]) if own.size else np.empty(0, dtype=np.int64)
        order = np.lexsort((keys, cells))
        cells, keys = cells[order], keys[order]
        bounds = np.searchsorted(cells, np.arange(self.layout.size + 1))
        column = [keys[bounds[g] : bounds[g + 1]] for g in range(self.layout.size)]

        cmp_type = mpc.SecInt(largest.bit_length() + 2)
        bits = split_bits(len(items))
        lows = [-(2 ** (KEY_SPACE_BITS - 1))] * len(items)
        left = KEY_SPACE_BITS
        while left > 0:
            b = min(bits, left)
            step = 1 << (left - b)
            cuts = [j * step - 1 for j in range(1, 1 << b)]
            local: list[int] = []
            targets: list[int] = []
            for (g, k), low in zip(items, lows, strict=True):
                points = np.array([low + c for c in cuts], dtype=np.int64)
                local.extend(int(c) for c in np.searchsorted(column[g], points, side="right"))
                targets.extend([k] * len(cuts))
            shares = mpc.input(cmp_type.array(np.array(local, dtype=object)))
            pooled = functools.reduce(operator.add, shares)
            reached = await mpc.output(pooled >= np.array(targets, dtype=object))
            below = np.asarray(reached, dtype=np.int64).reshape(len(items), len(cuts))
            lows = [
                low + int(len(cuts) - row.sum()) * step
                for low, row in zip(lows, below, strict=True)
            ]
            left -= b
        return lows

    def plain(
        self, summaries: list[LocalSummary], frames: list[pd.DataFrame]
    ) -> QuantileOpened | None:
        """`compute`'s opened values in plaintext (the tests' oracle); None with dp (the
        selection's law is `selection_probabilities`)."""
        from smpc.protocol import plain_cell_perturbation, plain_release, range_shift

        if self.query.dp is not None:
            return None

        rules = self.rules
        assert rules is not None and self.declared_range is not None
        size = self.layout.size
        opened = QuantileOpened(
            threshold=rules.threshold, released=[False] * size, counts=[None] * size
        )
        opened.values = [[None] * len(self.query.q) for _ in range(size)]
        rows = np.vstack([s.unpack_rows() for s in summaries] + [np.empty((0, 2))])
        exact = []
        for g in range(size):
            opened.released[g], n = plain_release(summaries, rules, g)
            if not opened.released[g]:
                continue
            exact.append(n)
            p, _, u_b = plain_cell_perturbation(summaries, size, [g])
            opened.counts[g] = max(0, n + p) if n else 0
            if n:
                moved = range_shift(self, u_b)
                values = rows[rows[:, 0] == g, 1]
                found = np.quantile(values, self.query.q, method="inverted_cdf")
                opened.values[g] = [float(v) + moved for v in found]
        if all(opened.released):
            p, _, _ = plain_cell_perturbation(summaries, size, list(range(size)))
            opened.total = max(0, sum(exact) + p)
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
