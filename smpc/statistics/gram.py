"""`GramStatistic`: statistics computed from the pooled Gram matrix of [1, columns…] per group.

Each party secret-shares, per group, its row count and the upper triangle of its fixed-point
Gram matrix (see `smpc.statistics.design`). Before anything is opened, every site's entries are
checked inside MPC against the declared bounds (`inputs_in_range`: its n, Σx and Σx² of each
bounded term; one bit opened, a failure refused naming no site). Then the counts are pooled
and compared with the threshold T (only the comparison bit is opened; a group below T reveals
nothing else); for released groups the group's n is opened and its Gram matrix is pooled, as
a secret, in an exact prime field large enough for everything the statistic computes from it.
Subclasses then compute and open only their outputs (`smpc.exact`).

Cell-key perturbation (the `exact` mode; linear regression and correlation): each party also
inputs, per group, its key sums (`smpc.cellkey`) and its smallest and largest value of every
term. A released group's n is opened as n + p (the count perturbation of the same rows), and
its Gram matrix G gets one pseudo-row, w·z̃z̃ᵀ: z̃ = (1, c₁, …), cⱼ the low or high corner of
term j (its declared bounds, else the group's own extremes: a secure minimum and maximum),
chosen by a bit of key B, and w = ω·magnitude/2⁸·2⁻⁸ uniform on (0, 2·magnitude) from key A
(`pseudo_rows`). The corners and the weight are moved into the exact field by masked
conversion; nothing about them is opened. The singularity, constant-column and small-cells
checks run on the unperturbed matrix and counts; the statistic's outputs are those of G′.
The plaintext twin (`plain`) computes the same G′ exactly for the tests.

With `dp` (noisy sufficient statistics; `smpc.dp` has the mechanism): every design column
must have declared finite bounds (a categorical level's indicator is 0/1). Each party clips
every row's values to the bounds, centres a numeric term at its range's midpoint c (a public
shift: sensitivities shrink from max|bound|² to (range/2)², and the statistics are translated
back exactly afterwards) and rounds each row's products zᵢzⱼ to the 2⁻⁴⁰ grid. Per group the
parties pool n and every *distinct* entry Σzᵢzⱼ of the Gram matrix of [1, terms…] (the
outcome last), add discrete Laplace noise to each inside MPC, compare the noisy n with the
threshold T (one bit per group opened) and open the released groups' noisy n and noisy
entries; everything else is plaintext post-processing. Entries fixed by others carry no noise
of their own (a 0/1 term's Σz² is its Σz; two levels of one categorical never meet, so their
product is 0). Sensitivity of Σzᵢzⱼ: round(Mᵢ·Mⱼ·2⁴⁰) grid units, Mᵢ the largest |zᵢ|
(half the declared range of a numeric term, 1 for a 0/1 term and the constant); of n: 1.
ε split: evenly, ε/K for each of the K noised entries (sequential composition; one row changes
every entry at once, and its change to entry e, in units of e's sensitivity, is at most 1, so
this is the split under which every entry carries the same noise, K/ε, relative to its own
sensitivity); groups compose in parallel. No small-cells rule and no rounding of n apply
(the noise protects every released value).

Post-processing of one group: the noisy Gram matrix G̃ (symmetric; each column scaled by its
Mᵢ, so that every entry's noise has the same Laplace scale b = K/ε) is made positive definite
by raising every eigenvalue below b to b (the nearest matrix, in Frobenius norm, with all
eigenvalues ≥ b: it changes nothing unless the noise has made the matrix (nearly) singular,
and then acts as a ridge of at most b in the unresolved directions). Every statistic derived
from it is then well defined: XᵀX is invertible, the residual sum of squares and every
variance are positive and every correlation lies in (−1, 1).
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from smpc.cellkey import (
    CORNER_LIMIT_BITS,
    LARGEST_SCALE_BITS,
    Perturbation,
    corners,
    key_sums,
    scale_factor,
    sign_slot,
)
from smpc.cost import QueryCost, key_decompositions, noise_coins, prelude_comparisons
from smpc.dp import GRID, NoiseSpec, column_bounds, product_sensitivity, sample
from smpc.encoding import FRAC_BITS, decode_moment
from smpc.job import LocalSummary, PartyJob
from smpc.statistics.base import N_PERTURBED, SecureStatistic
from smpc.statistics.design import (
    ENTRY_BITS,
    LOCAL_ENTRY_BITS,
    SCALE,
    CrossLimit,
    EntryLimit,
    Indicator,
    Term,
    complete_rows,
    cross_limits,
    design,
    encode_gram,
    entry_limits,
    indicator_counts,
    indicators,
    small_cells,
    small_cells_refusal,
    symmetric_index,
    terms,
    triangle_size,
)
from tessera.errors import DisclosureRefused, QueryInvalid
from tessera.schemas import MAX_ROWS

if TYPE_CHECKING:
    import pandas as pd

    from smpc.disclosure import AppliedRules


@dataclass
class GroupOutcome:
    n: int | None  # None: suppressed
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class GramOpened:
    threshold: int
    groups: list[GroupOutcome]


@dataclass
class PseudoRow:
    """A group's cell-key pseudo-row as the exact field holds it: the Gram matrix's
    perturbation is the rank-one u·vᵀ (u = w·z̃ on the matrix's scale, v = z̃ scaled 2**8)."""

    u: Any
    v: Any

    def outer(self, mpc: Any) -> Any:
        return mpc.np_outer(self.u, self.v)


@dataclass
class NoisyGramOpened:
    """What the `dp` protocol opened: per group the noisy n (None: suppressed) and the noisy
    Gram entries, in `dp_entries` order after the count (centred units, exact fractions)."""

    threshold: int
    counts: list[int | None]
    entries: list[list[Fraction] | None]


ZERO = (-1, -1)  # an entry that is 0 by construction (two levels of one categorical)


class GramStatistic(SecureStatistic):
    """Base for correlation and linear regression (and the local part of logistic regression)."""

    value_column = False
    constant: ClassVar[bool] = True
    model: ClassVar[bool] = False  # a regression: its indicators' small cells are checked

    # ---- what the design is -------------------------------------------------------------

    def design_columns(self) -> list[str]:
        """The query's columns that become terms, in order (outcome last for regressions)."""
        raise NotImplementedError

    @cached_property
    def terms(self) -> list[Term]:
        return terms(self.schema, self.design_columns(), self.name)

    @cached_property
    def indicators(self) -> list[Indicator]:
        """A model's 0/1 predictor columns, each checked for small cells (none if no model)."""
        if not self.model:
            return []
        return indicators(self.schema, list(getattr(self.query, "predictors", [])))

    @cached_property
    def names(self) -> list[str]:
        return (["const"] if self.constant else []) + [t.name for t in self.terms]

    def selected(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        """This party's complete selected rows and each one's group index."""
        data, groups, _ = self.keyed_selection(frame, keys=False)
        return data, groups

    # ---- dp: which entries are noisy, and how much -------------------------------------

    def check_columns(self) -> None:
        """Besides the base rules: with `dp`, every numeric column of the design declares
        finite bounds (they set the sensitivity, and values are clipped to them)."""
        super().check_columns()
        if self.query.dp is None:
            return
        for name in self.design_columns():
            spec = self.schema.column(name)
            if spec is not None and spec.type != "categorical" and column_bounds(spec) is None:
                raise QueryInvalid(
                    f"dp {self.name} of {name!r} needs the column's bounds: declare finite "
                    f"'min' and 'max' for {name!r} in the dataset schema (they set the noise's "
                    "sensitivity, and values are clipped to them)",
                    {"column": name, "field": "dp"},
                )

    @cached_property
    def bounds(self) -> list[tuple[float, float]]:
        """Per design column ([1, terms…]): the declared bounds values are clipped to."""
        assert self.constant, "the dp path assumes the constant term"
        out = [(1.0, 1.0)]
        for term in self.terms:
            spec = self.schema.column(term.column)
            assert spec is not None
            declared = column_bounds(spec) if term.level is None else (0.0, 1.0)
            assert declared is not None, "checked: dp needs declared bounds"
            out.append(declared)
        return out

    @cached_property
    def zero_one(self) -> list[bool]:
        """Per design column: a 0/1 term (an indicator, a boolean, an integer in [0, 1])."""
        out = [False]
        for term, (lo, hi) in zip(self.terms, self.bounds[1:], strict=True):
            spec = self.schema.column(term.column)
            assert spec is not None
            discrete = term.level is not None or spec.type in ("boolean", "integer")
            out.append(discrete and (lo, hi) == (0.0, 1.0))
        return out

    @cached_property
    def centres(self) -> np.ndarray:
        """Per design column: the public shift c (a numeric term's declared midpoint; 0 for
        the constant and the 0/1 terms)."""
        return np.array(
            [
                0.0 if j == 0 or self.zero_one[j] else (lo + hi) / 2
                for j, (lo, hi) in enumerate(self.bounds)
            ]
        )

    @cached_property
    def reach(self) -> np.ndarray:
        """Per design column: M, the largest |value| once clipped and centred."""
        return np.array(
            [
                max(abs(lo - c), abs(hi - c))
                for (lo, hi), c in zip(self.bounds, self.centres, strict=True)
            ]
        )

    def fixed(self, i: int, j: int) -> tuple[int, int] | None:
        """Where the Gram entry (i ≤ j) comes from when it needs no noise of its own: the
        entry it equals, or `ZERO`; None for a noised entry."""
        if i == j and self.zero_one[i]:
            return (0, j)
        if i and i != j:
            first, second = self.terms[i - 1], self.terms[j - 1]
            if None not in (first.level, second.level) and first.column == second.column:
                return ZERO
        return None

    @cached_property
    def dp_entries(self) -> list[tuple[int, int]]:
        """The noised entries (i ≤ j) of the upper triangle, n = (0, 0) first."""
        k = len(self.names)
        return [(i, j) for i in range(k) for j in range(i, k) if self.fixed(i, j) is None]

    def entry_name(self, i: int, j: int) -> str:
        names = self.names
        if i == 0:
            return "count" if j == 0 else f"sum({names[j]})"
        return f"sum({names[i]}^2)" if i == j else f"sum({names[i]}*{names[j]})"

    def noise_plan(self) -> dict[str, NoiseSpec]:
        """Every noised Gram entry and its ε: ε/K each (see the module docstring)."""
        assert self.query.dp is not None
        share = self.query.dp.epsilon / len(self.dp_entries)
        plan = {}
        for i, j in self.dp_entries:
            if (i, j) == (0, 0):
                plan["count"] = NoiseSpec(share, 1)
            else:
                delta = product_sensitivity(self.reach[i], self.reach[j])
                plan[self.entry_name(i, j)] = NoiseSpec(share, delta, GRID)
        return plan

    def clipped_design(self, data: pd.DataFrame) -> np.ndarray:
        """The design [1, terms…] of selected rows, clipped to the bounds and centred."""
        z = design(data, self.terms, self.constant)
        low, high = (np.array(side) for side in zip(*self.bounds, strict=True))
        return np.clip(z, low, high) - self.centres

    def clipped(self, data: pd.DataFrame) -> pd.DataFrame:
        """The rows with every numeric design column clipped to its bounds (the oracle's)."""
        out = {}
        for term, (lo, hi) in zip(self.terms, self.bounds[1:], strict=True):
            spec = self.schema.column(term.column)
            if term.level is None and spec is not None and spec.type != "boolean":
                out[term.column] = data[term.column].clip(lo, hi)
        return data.assign(**out)

    # ---- local part ---------------------------------------------------------------------

    def local_input(self, frame: pd.DataFrame) -> LocalSummary:
        if self.query.dp is not None:
            return self.noisy_input(frame)
        data, groups, keys = self.keyed_selection(frame, keys=True)
        z = design(data, self.terms, self.constant)
        size = len(self.layout.groups)
        counts = np.bincount(groups, minlength=size)
        gram: list[int] = []
        for g in range(size):
            rows = z[groups == g]
            gram += encode_gram(rows.T @ rows, self.name, self.names)
        vectors = {"gram": gram}
        if self.indicators:
            vectors["indicators"] = indicator_counts(data, groups, size, self.indicators)
        # the exact mode's cell key: n + p, and a pseudo-row on each group's Gram matrix
        vectors["keys"] = key_sums(keys, groups, size)
        vectors["corners"] = corners(z[:, 1:][:, self.free_terms], groups, size)
        return LocalSummary(counts=[int(c) for c in counts], vectors=vectors)

    @cached_property
    def corner_bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per term: 1 where the pseudo-row's corner is the group's own smallest or largest
        value (no declared bounds), else 0 and the declared bounds (padded, scaled 2**8).

        A 0/1 term is not set to 0 or 1 but spread (low = high): each indicator of a
        categorical column with L levels gets 1/L (rounded to 1/256), a boolean (or an integer
        declared within [0, 1]) 1/2. A corner at one level would perturb only that level's
        equations: in a model with the column alone, the other levels' means (or fitted
        probabilities) would be the data's own, and two selections that differ by one child of
        such a level could be subtracted (tests/adversarial/test_levels.py). Spread, the
        pseudo-row moves every level, the first included, by w/L."""
        keep = np.ones(len(self.terms), dtype=object)
        low = np.zeros(len(self.terms), dtype=object)
        high = np.zeros(len(self.terms), dtype=object)
        for limit in self.limits:
            j = limit.term - 1
            keep[j], low[j], high[j] = 0, limit.lowest, limit.highest
            spread = self.spread_corner(self.terms[j])
            if spread is not None:
                low[j] = high[j] = spread
        return keep, low, high

    def spread_corner(self, term: Term) -> int | None:
        """A 0/1 term's pseudo-row entry (scaled 2**8): 1/L for an indicator of a categorical
        column of L levels, 1/2 for a boolean or an integer declared within [0, 1]; None for
        any other term."""
        spec = self.schema.column(term.column)
        assert spec is not None
        if term.level is not None:
            return round((1 << LARGEST_SCALE_BITS) / len(spec.group_levels()))
        if spec.type == "boolean" or (spec.type == "integer" and spec.min == 0 and spec.max == 1):
            return 1 << (LARGEST_SCALE_BITS - 1)
        return None

    @cached_property
    def free_terms(self) -> np.ndarray:
        """The terms without declared bounds: their corners are the group's own extremes."""
        return np.flatnonzero(self.corner_bounds[0])

    def keyed_selection(
        self, frame: pd.DataFrame, keys: bool
    ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """`selected`, and each selected row's secret key (`smpc.cellkey.row_keys`; empty if
        not `keys`)."""
        from smpc.frames import conform, select

        data = conform(frame, self.schema, self.query.referenced_columns())
        selection = select(data, self.query.where, self.schema)
        mask = np.asarray(selection & complete_rows(data, self.query.statistic_columns()), bool)
        row_keys = self.row_keys(frame)[mask] if keys else np.zeros(0, dtype=np.uint64)
        data = data[mask]
        groups = self.layout.group_codes(data)
        keep = groups >= 0
        return data[keep], groups[keep], row_keys[keep] if keys else row_keys

    def noisy_input(self, frame: pd.DataFrame) -> LocalSummary:
        """With `dp`: per group the row count and each noised entry's Σzᵢzⱼ over clipped,
        centred rows, every row's product rounded to the grid (so the sensitivity is exact)."""
        data, groups = self.selected(frame)
        z = self.clipped_design(data)
        size = len(self.layout.groups)
        pairs = self.dp_entries[1:]
        first = np.array([i for i, _ in pairs], dtype=np.int64)
        second = np.array([j for _, j in pairs], dtype=np.int64)
        limit = 1 << (LOCAL_ENTRY_BITS + FRAC_BITS)
        gram: list[int] = []
        for g in range(size):
            rows = z[groups == g]
            grid = np.rint(np.ldexp(rows[:, first] * rows[:, second], FRAC_BITS))
            for (_, j), column in zip(pairs, grid.T.tolist(), strict=True):
                total = sum(map(int, column))
                if abs(total) >= limit:  # the limit only, never this hospital's own sum
                    raise QueryInvalid(
                        f"{self.name}: the values of {self.names[j]!r} are too large for the "
                        f"secure fixed-point range (a local sum of products must stay below "
                        f"{float(1 << LOCAL_ENTRY_BITS):.3g}); rescale the column",
                        {"column": self.names[j]},
                    )
                gram.append(total)
        counts = np.bincount(groups, minlength=size)
        return LocalSummary(counts=[int(c) for c in counts], vectors={"gram": gram})

    # ---- the secure part ----------------------------------------------------------------

    def solve_field_bits(self, sizes: list[int]) -> int:
        """The exact field's size for groups of these opened sizes: `field_bits` unless a
        statistic can size it by public values."""
        return self.field_bits()

    def field_bits(self) -> int:
        """Bits of the largest |numerator| · denominator the statistic opens."""
        raise NotImplementedError

    async def compute(self, mpc: Any, job: PartyJob) -> GramOpened | NoisyGramOpened:
        if self.query.dp is not None:
            return await self.compute_noisy(mpc, job)
        from smpc.exact import exact_type
        from smpc.protocol import cell_perturbation, pooled, release
        from smpc.soon import soon

        threshold = self.threshold
        size = len(self.layout.groups)
        k = len(self.names)
        width = triangle_size(k)
        summary = job.summary
        if len(summary.counts) != size or len(summary.vectors["gram"]) != size * width:
            raise ValueError(f"local summary does not fit {size} groups of {width} entries")
        # every site's n and Gram entries in a small field: checked against the declared
        # bounds before anything is opened, then pooled for the statistic's cheap comparisons
        checked = mpc.SecInt(max(self.compare_bits(), self.check_bits(), ENTRY_BITS + 2))

        def shared(values: list[int]) -> list[Any]:
            return mpc.input(checked.array(np.array(values, dtype=object)))

        site_counts = shared(summary.counts)
        site_grams = shared(summary.vectors["gram"])
        # the corners of the terms without declared bounds (the others' are public)
        site_corners = shared(summary.vectors["corners"]) if len(self.free_terms) else []
        # started at once, all alongside the counts' checks and release bits (each sees linear
        # functions of the inputs only): the inputs' check and every group's perturbation
        inputs = soon(lambda: self.inputs_in_range(mpc, job, site_counts, site_grams))
        shift = cell_perturbation(
            mpc, checked, summary.vectors["keys"], size, np.arange(size), False
        )
        counts, released = await release(
            mpc,
            self,
            summary.counts,
            checked,
            sites=site_counts,
            pending=[(inputs, self.inputs_refusal())],
        )
        shown = [g for g in range(size) if released[g]]
        outcomes = [GroupOutcome(None) for _ in range(size)]
        if not shown:
            return GramOpened(threshold, outcomes)
        at = np.array(shown)
        sizes = await self.open_sizes(mpc, counts[at], shift.count[at])
        for g, n in zip(shown, sizes, strict=True):
            outcomes[g].n = n
        index = symmetric_index(k).ravel()
        small = None
        if self.compare_bits():  # the same matrix in the small field, for cheap comparisons
            small = functools.reduce(operator.add, site_grams)
            small = [small[g * width : (g + 1) * width][index].reshape(k, k) for g in range(size)]
        solved, hidden = await self.screen(mpc, job, counts, small, shown, outcomes)
        if not solved:
            return GramOpened(threshold, outcomes)
        stype = exact_type(mpc, self.solve_field_bits([outcomes[g].n or 0 for g in solved]))
        gram = pooled(mpc, stype, job.summary.vectors["gram"])
        extra = await self.pseudo_rows(mpc, stype, checked, site_corners, shift, solved)
        for g in solved:
            matrix = gram[g * width : (g + 1) * width][index].reshape(k, k)
            compare = None if small is None else small[g]
            outcomes[g].values = await self.solve(
                mpc, matrix, outcomes[g].n or 0, compare, hidden.get(g, set()), extra.get(g)
            )
        return GramOpened(threshold, outcomes)

    def cost(self, parties: int) -> QueryCost:
        """Cells: per group n and `opened_per_group`. Comparisons, `exact` mode: the
        prelude's, per group its release, its cell keys, a model's small-cells rule (each
        indicator with and without, `design.small_cells`), the corners of each term without
        declared bounds (a secure minimum and maximum over the m sites) and the statistic's
        own `solve_comparisons`. With `dp`: the noise of n and every noised entry, and one
        release comparison per group."""
        groups = len(self.layout.groups)
        cells = groups * (1 + self.opened_per_group())
        if self.query.dp is not None:
            noise = sum(noise_coins(spec, groups) for spec in self.noise.values())
            return QueryCost(cells, prelude_comparisons(self) + noise + groups)
        small = 2 * len(self.indicators)
        corners = 2 * (parties - 1) * len(self.free_terms)
        per_group = 1 + small + corners + self.solve_comparisons()
        compared = prelude_comparisons(self) + key_decompositions(groups) + groups * per_group
        return QueryCost(cells, compared)

    def opened_per_group(self) -> int:
        """The values a solved group opens, n aside."""
        raise NotImplementedError

    def solve_comparisons(self) -> int:
        """A solved group's comparisons in `solve` (`smpc.cost`)."""
        raise NotImplementedError

    def corner_bits(self) -> int:
        """Bits of the comparisons between sites' corners (scaled 2**8): |z|² < 2**50 makes
        |z| < 2**25, and the empty sites' stand-ins are ±2**33."""
        return CORNER_LIMIT_BITS + 3

    async def pseudo_rows(
        self,
        mpc: Any,
        stype: Any,
        secint: Any,
        site_corners: list[Any],
        shift: Perturbation,
        solved: list[int],
    ) -> dict[int, PseudoRow]:
        """Per solved group, the cell-key pseudo-row w·z̃z̃ᵀ (`smpc.cellkey`) on the Gram
        matrix's scale 2**40, in the exact field. z̃ = (1, c₁, …): cⱼ the low or high corner
        of term j, by its corner bit of key B: the declared bounds, or for a term without them
        the group's smallest and largest zⱼ (a secure minimum and maximum over the sites,
        scaled 2**8); w = ω·m / 2**16 (ω = 2W + 1 from key A, m the policy's magnitude in
        1/256: w is uniform on (0, 2·magnitude)); `shift` holds every group's perturbation.
        Opens only masked values (`convert`)."""
        from smpc.protocol import secure_max, secure_min
        from smpc.rounded import convert

        assert self.rules is not None
        k = len(self.names)
        terms = k - 1
        at = np.array(solved)
        # a term with declared bounds takes them as its corners (public, no comparison), the
        # others the group's own extremes (secure minimum and maximum over the sites)
        keep, bound_low, bound_high = (np.tile(v, len(solved)) for v in self.corner_bounds)
        low, high = secint.array(bound_low.copy()), secint.array(bound_high.copy())
        free = np.flatnonzero(keep)
        if free.size:
            bits = self.corner_bits()
            width = len(self.free_terms)
            low_at = np.array([2 * (g * width + f) for g in solved for f in range(width)])
            lows = [s[low_at] for s in site_corners]
            highs = [s[low_at + 1] for s in site_corners]
            low = mpc.np_update(
                low, free, functools.reduce(lambda x, y: secure_min(mpc, x, y, bits), lows)
            )
            high = mpc.np_update(
                high, free, functools.reduce(lambda x, y: secure_max(mpc, x, y, bits), highs)
            )
        slots = np.array([sign_slot(t.name) for t in self.terms])
        signs = shift.signs[at][:, slots].reshape(-1)
        corner = (high + signs * (low - high)).reshape(len(solved), terms)
        small = type(corner).sectype
        constant = small.array(np.full((len(solved), 1), 1 << LARGEST_SCALE_BITS, dtype=object))
        row = mpc.np_hstack((constant, corner))  # z̃, scaled 2**8
        weighted = row * shift.weight[at].reshape(len(solved), 1)  # ω·z̃
        width = CORNER_LIMIT_BITS + 1  # |z̃| < 2**width, |ω·z̃| < 2**(width + 9)
        offsets = np.array([1 << (width + 9)] * k + [1 << width] * k, dtype=object)
        moved = await convert(
            mpc, mpc.np_hstack((weighted, row)) + offsets, stype, width + 10
        ) - stype.array(offsets)
        factor = self.pseudo_row_factor()
        return {g: PseudoRow(moved[i, :k] * factor, moved[i, k:]) for i, g in enumerate(solved)}

    def pseudo_row_factor(self) -> int:
        """w·z̃ᵢz̃ⱼ on the Gram matrix's scale 2**40 is ω·z̃ᵢ·z̃ⱼ times this (w = ω·m/2**16 with
        m the magnitude in 1/256, each z̃ scaled 2**8)."""
        assert self.rules is not None
        return scale_factor(self.rules.magnitude) << (FRAC_BITS - 2 * LARGEST_SCALE_BITS - 16)

    @cached_property
    def limits(self) -> list[EntryLimit]:
        """The declared bounds every site's Gram entries are checked against (`inputs_in_range`)."""
        return entry_limits(self.schema, self.terms)

    @cached_property
    def cross_limits(self) -> list[CrossLimit]:
        """The declared limits of every cross product of two bounded terms (`inputs_in_range`)."""
        return cross_limits(self.limits, len(self.terms))

    def check_bits(self) -> int:
        """Bit length of `inputs_in_range`' comparisons: every honest difference is below it."""
        width = max([1, *(limit.width for limit in self.limits)])
        return FRAC_BITS + MAX_ROWS.bit_length() + 2 * width + 3

    def input_checks(self, n: Any, gram: Any) -> list[Any]:
        """A site's checked values, each ≥ 0 when its inputs are within the declared bounds
        (`inputs_in_range`), along the last axis; the same arithmetic on secure arrays (every
        site's, one row each) or on numpy object arrays (this party's own copy, for its bits)."""
        size, width = len(self.layout.groups), triangle_size(len(self.names))
        limits = self.limits
        starts = np.repeat(np.arange(size) * width, len(limits))
        groups = np.repeat(np.arange(size), len(limits))
        sums = starts + np.tile([limit.sum_at for limit in limits], size).astype(np.int64)
        squares = starts + np.tile([limit.square_at for limit in limits], size).astype(np.int64)

        def public(values: list[int]) -> np.ndarray:
            return np.array(values * size, dtype=object)

        constant = gram[..., np.arange(size) * width]
        checks = [constant - n * SCALE + 1, n * SCALE - constant + 1]
        if limits:
            low, high = public([lim.low for lim in limits]), public([lim.high for lim in limits])
            square = public([lim.square for lim in limits])
            s, q, rows = gram[..., sums], gram[..., squares], n[..., groups]
            checks += [s - rows * low + 1, rows * high - s + 1, q + 1, rows * square - q + 1]
        crosses = self.cross_limits
        if crosses:
            at = np.repeat(np.arange(size) * width, len(crosses)) + np.tile(
                [cross.at for cross in crosses], size
            ).astype(np.int64)
            low = np.array([cross.low for cross in crosses] * size, dtype=object)
            high = np.array([cross.high for cross in crosses] * size, dtype=object)
            c, rows = gram[..., at], n[..., np.repeat(np.arange(size), len(crosses))]
            checks += [c - rows * low + 1, rows * high - c + 1]
        return checks

    async def inputs_in_range(
        self,
        mpc: Any,
        job: PartyJob,
        site_counts: list[Any],
        site_grams: list[Any],
    ) -> bool:
        """Whether every site's Gram entries are within the declared bounds, per group, decided
        inside MPC before anything is opened (`compute` refuses with `inputs_refusal`): its
        constant entry is its n (scaled 2**40), and for each term with declared bounds
        [lo, hi] (a 0/1 term: [0, 1]) n·lo ≤ Σx ≤ n·hi and 0 ≤ Σx² ≤ n·max(lo², hi²), and for
        two such terms n·min ≤ Σxᵢxⱼ ≤ n·max over the products of their bounds, the bounds
        padded per row for rounding (`entry_limits`, `cross_limits`). Each checked value is
        shown to be in [0, 2**check_bits) by the bits its site inputs (`smpc.ranges`); the
        challenge and one bit are opened."""
        from smpc.ranges import all_in_range

        summary = job.summary
        own = np.concatenate(
            self.input_checks(
                np.array(summary.counts, dtype=object),
                np.array(summary.vectors["gram"], dtype=object),
            )
        )
        counts, grams = mpc.np_vstack(site_counts), mpc.np_vstack(site_grams)
        checks = mpc.np_concatenate(self.input_checks(counts, grams), axis=1)
        return await all_in_range(mpc, type(checks).sectype, checks, own, self.check_bits())

    def inputs_refusal(self) -> DisclosureRefused:
        """What a failed `inputs_in_range` refuses with: naming no site."""
        return DisclosureRefused(
            f"{self.name}: a site's inputs break the declared bounds of the design's columns "
            "(its Gram matrix checked inside MPC against every site's declared bounds "
            "together; which site is not revealed)",
            {"rule": "inputs"},
        )

    async def compute_noisy(self, mpc: Any, job: PartyJob) -> NoisyGramOpened:
        """With `dp`: noise drawn inside MPC on every pooled n and noised entry, the noisy n
        compared with T (one bit per group), the released groups' noisy values opened."""
        from smpc.disclosure import inputs_refusal
        from smpc.dp import discrete_laplace
        from smpc.encoding import MOMENT_BITS
        from smpc.protocol import check_counts, noisy_release
        from smpc.ranges import all_in_range

        secint = mpc.SecInt(MOMENT_BITS)
        size = len(self.layout.groups)
        specs = list(self.noise.values())
        width = len(specs) - 1
        summary = job.summary
        if len(summary.counts) != size or len(summary.vectors["gram"]) != size * width:
            raise ValueError(f"local summary does not fit {size} groups of {width} entries")
        # every site's counts within its declared rows and its clipped, centred sums within
        # what its rows allow (`noisy_checks`), inside MPC before anything is opened
        own_counts = np.array(summary.counts, dtype=object)
        own_gram = np.array(summary.vectors["gram"], dtype=object)
        site_counts = mpc.input(secint.array(own_counts.copy()))
        site_grams = mpc.input(secint.array(own_gram.copy()))
        await check_counts(mpc, self, secint, site_counts, summary.counts)
        counts, grams = mpc.np_vstack(site_counts), mpc.np_vstack(site_grams)
        checks = mpc.np_concatenate(self.noisy_checks(counts, grams), axis=1)
        own = np.concatenate(self.noisy_checks(own_counts, own_gram))
        if not await all_in_range(mpc, secint, checks, own, self.noisy_check_bits()):
            what = "its clipped sums exceed what its rows allow within the declared bounds"
            raise DisclosureRefused(inputs_refusal(self.name, what), {"rule": "inputs"})
        noise = discrete_laplace(mpc, secint, [specs[0]] * size + specs[1:] * size)
        counts = functools.reduce(operator.add, site_counts) + noise[:size]
        gram = functools.reduce(operator.add, site_grams) + noise[size:]
        threshold = self.threshold
        released = await noisy_release(mpc, counts, threshold)
        shown = np.flatnonzero(released)
        opened = NoisyGramOpened(threshold, [None] * size, [None] * size)
        if not shown.size:
            return opened
        sizes = np.asarray(await mpc.output(counts[shown])).ravel()
        columns = (shown[:, None] * width + np.arange(width)).ravel()
        values = np.asarray(await mpc.output(gram[columns])).ravel()
        for at, g in enumerate(shown):
            opened.counts[g] = int(sizes[at])
            block = values[at * width : (at + 1) * width]
            opened.entries[g] = [decode_moment(int(v)) for v in block]
        return opened

    def noisy_checks(self, n: Any, gram: Any) -> list[Any]:
        """A site's dp inputs as values ≥ 0 when honest, along the last axis: each entry Σzᵢzⱼ
        of clipped, centred rows within ±n·δᵢⱼ (δ: one row's largest rounded product,
        `product_sensitivity`), and each Σzᵢ² ≥ 0; the same arithmetic on secure arrays (every
        site's, one row each) or numpy object arrays (this party's own)."""
        pairs = self.dp_entries[1:]
        size, width = len(self.layout.groups), len(pairs)
        bound = np.array(
            [product_sensitivity(self.reach[i], self.reach[j]) for i, j in pairs] * size,
            dtype=object,
        )
        rows = n[..., np.repeat(np.arange(size), width)]
        checks = [rows * bound - gram, rows * bound + gram]
        squares = [g * width + e for g in range(size) for e, (i, j) in enumerate(pairs) if i == j]
        if squares:
            checks.append(gram[..., np.array(squares)])
        return checks

    def noisy_check_bits(self) -> int:
        """Every honest `noisy_checks` value is below 2**this (n < 2**30)."""
        pairs = self.dp_entries[1:]
        largest = max(product_sensitivity(self.reach[i], self.reach[j]) for i, j in pairs)
        return (largest << (MAX_ROWS.bit_length() + 1)).bit_length()

    def plain_noisy(
        self, summaries: list[LocalSummary], rng: np.random.Generator, threshold: int = 0
    ) -> NoisyGramOpened:
        """The plaintext twin of `compute_noisy` (tests only): the parties' summaries pooled
        and the same noise law drawn by numpy (`smpc.dp.sample`)."""
        size = len(self.layout.groups)
        specs = list(self.noise.values())
        width = len(specs) - 1
        opened = NoisyGramOpened(threshold, [None] * size, [None] * size)
        counts = sample(specs[0], size, rng)
        for g in range(size):
            n = sum(s.counts[g] for s in summaries) + counts[g]
            entries = [
                sum(s.vectors["gram"][g * width + e] for s in summaries) + sample(spec, 1, rng)[0]
                for e, spec in enumerate(specs[1:])
            ]
            if threshold <= 0 or n >= threshold:
                opened.counts[g] = n
                opened.entries[g] = [decode_moment(v) for v in entries]
        return opened

    async def open_sizes(self, mpc: Any, counts: Any, shift: Any) -> list[int]:
        """The released groups' n as the result publishes them: n + p, p the group's cell-key
        count perturbation (`smpc.cellkey`; the same as a `count` of the same rows gets)."""
        return [max(0, int(n)) for n in np.asarray(await mpc.output(counts + shift)).ravel()]

    async def screen(
        self,
        mpc: Any,
        job: PartyJob,
        counts: Any,
        small: list[Any] | None,
        shown: list[int],
        outcomes: list[GroupOutcome],
    ) -> tuple[list[int], dict[int, set[tuple[int, int]]]]:
        """The statistic's own disclosure rules on the released groups, decided in MPC: the
        groups still shown, and per group the outputs (pairs of columns) to hide."""
        return await self.without_small_cells(mpc, job, counts, shown, outcomes), {}

    async def without_small_cells(
        self, mpc: Any, job: PartyJob, counts: Any, shown: list[int], outcomes: list[GroupOutcome]
    ) -> list[int]:
        """The shown groups whose model has no small cell (`design.small_cells`: every indicator
        has at least T rows with it and T without, pooled; one bit per group). Without
        `group_by` a small cell refuses the query (`DisclosureRefused`, naming nothing); with
        it, the group's model is null (its n is shown)."""
        width = len(self.indicators)
        local = job.summary.vectors.get("indicators", [])
        fine = await small_cells(mpc, counts, local, shown, width, self.threshold)
        if not all(fine) and not self.layout.group_columns:
            raise DisclosureRefused(
                small_cells_refusal(self.name, self.threshold), {"rule": "cells"}
            )
        for g, ok in zip(shown, fine, strict=True):
            if not ok:
                outcomes[g].values = self.empty_values()
        return [g for g, ok in zip(shown, fine, strict=True) if ok]

    def compare_bits(self) -> int:
        """Bit length of values the statistic compares (0: none); compared in a small field."""
        return 0

    async def solve(
        self,
        mpc: Any,
        matrix: Any,
        n: int,
        compare: Any = None,
        hidden: set[tuple[int, int]] | None = None,
        pseudo: PseudoRow | None = None,
    ) -> dict[str, Any]:
        """Compute and open one group's outputs from its pooled, secret Gram matrix plus its
        cell-key pseudo-row (`pseudo`: the matrix itself is unperturbed, so that a singular
        design or a constant column is still found as such), leaving out the `hidden` outputs
        (`screen`). `compare` is the unperturbed matrix in the small field, when
        `compare_bits` asks for one."""
        raise NotImplementedError

    # ---- after the protocol -------------------------------------------------------------

    def finish(self, opened: GramOpened | NoisyGramOpened) -> dict[str, Any]:
        if isinstance(opened, NoisyGramOpened):
            return self.finish_noisy(opened)
        entries = []
        for outcome in opened.groups:
            if outcome.n is None:
                entries.append({"n": None, **self.empty_values()})
            else:
                entries.append({"n": outcome.n, **outcome.values})
        return self.assemble(entries)

    def finish_noisy(self, opened: NoisyGramOpened) -> dict[str, Any]:
        """Post-processing of the noisy values: n is max(0, ñ), the statistic's values come
        from the positive definite noisy Gram matrix (`noisy_gram`)."""
        entries = []
        for count, values in zip(opened.counts, opened.entries, strict=True):
            if count is None or values is None:
                entries.append({"n": None, **self.empty_values()})
                continue
            n = max(0, count)
            entries.append({"n": n, **self.noisy_values(self.noisy_gram(count, values), n)})
        return self.with_dp(self.assemble(entries))

    def noisy_gram(self, count: int, values: list[Fraction]) -> np.ndarray:
        """The full noisy Gram matrix (centred units) made positive definite: eigenvalues of
        the matrix scaled by the reaches M below the noise scale b raised to b."""
        k = len(self.names)
        gram = np.zeros((k, k))
        gram[0, 0] = count
        for (i, j), v in zip(self.dp_entries[1:], values, strict=True):
            gram[i, j] = gram[j, i] = float(v)
        for i in range(k):
            for j in range(i, k):
                source = self.fixed(i, j)
                if source is not None:
                    gram[i, j] = gram[j, i] = 0.0 if source == ZERO else gram[source]
        reach = np.maximum(self.reach, 2.0**-FRAC_BITS)
        outer = np.outer(reach, reach)
        floor = max(
            spec.scale / outer[i, j]
            for (i, j), spec in zip(self.dp_entries, self.noise.values(), strict=True)
        )
        eigen, vectors = np.linalg.eigh(gram / outer)
        if eigen.min() >= floor:
            return gram
        return (vectors * np.maximum(eigen, floor)) @ vectors.T * outer

    def noise_variance(self, i: int, j: int) -> tuple[int, float] | None:
        """The noise variable behind Gram entry (i, j) (its index in `dp_entries`) and its
        variance, or None for an entry without noise."""
        i, j = min(i, j), max(i, j)
        source = self.fixed(i, j)
        if source == ZERO:
            return None
        at = self.dp_entries.index(source or (i, j))
        return at, list(self.noise.values())[at].variance

    def noisy_values(self, gram: np.ndarray, n: int) -> dict[str, Any]:
        """The statistic's result keys from one group's positive definite noisy Gram matrix
        (centred units) and its released n."""
        raise NotImplementedError

    # ---- plaintext oracle ---------------------------------------------------------------

    def reference(self, frame: pd.DataFrame, min_count: int = 0) -> dict[str, Any]:
        """Pooled rows in plaintext (statsmodels, numpy); with `dp` the exact, noiseless result
        on the clipped rows (no small-cells rule, as the dp protocol) and the `dp` entry."""
        return self.with_dp(self.assemble(self.reference_entries(frame, min_count)))

    def reference_entries(self, frame: pd.DataFrame, min_count: int) -> list[dict[str, Any]]:
        """`reference`'s per-group entries (n and the result keys)."""
        data, groups = self.selected(frame)
        noisy = self.query.dp is not None
        if noisy:
            data = self.clipped(data)
        entries = []
        for g in range(len(self.layout.groups)):
            sub = data[groups == g]
            if len(sub) < min_count:
                entries.append({"n": None, **self.empty_values()})
            elif not noisy and not self.reference_cells_fine(sub, min_count):
                entries.append({"n": len(sub), **self.empty_values()})
            else:
                entries.append({"n": len(sub), **self.reference_values(sub)})
        return entries

    # ---- what the dry run says --------------------------------------------------------

    @property
    def perturbed(self) -> bool:
        return True  # n + p and a cell-key pseudo-row on each group's Gram matrix

    def expected_error(self, rules: AppliedRules) -> dict[str, str]:
        if self.query.dp is not None:
            return super().expected_error(rules)
        return {
            "n": N_PERTURBED,
            "other keys": (
                "computed from the group's Gram matrix plus one pseudo-row of weight up to "
                f"{2 * rules.magnitude:g} (2 × magnitude) at the low or high declared bound of "
                "each column (a column without bounds: the group's own smallest or largest "
                "value), then rounded to 25 significant bits: like adding up to "
                f"{2 * rules.magnitude:g} of a patient at a corner of the data"
            ),
        }

    # ---- the exact mode's plaintext twin (tests only) ----------------------------------

    def plain(self, summaries: list[LocalSummary], frames: list[pd.DataFrame]) -> Any:
        """What the exact-mode protocol opens, in plaintext from every party's summary: the
        same release (per-site floors), n, and the statistic computed exactly from the same
        cell-key perturbed Gram matrix (`plain_values`); which groups and outputs are null
        (small cells, constant columns) comes from the pooled `reference`. The MPC's values
        differ only by its rounding to 25 significant bits."""
        if self.query.dp is not None:
            return None
        import pandas as pd

        from smpc.protocol import plain_cell_perturbation, plain_release

        rules = self.rules
        assert rules is not None
        size = len(self.layout.groups)
        entries = self.reference_entries(pd.concat(frames, ignore_index=True), rules.threshold)
        outcomes = []
        for g in range(size):
            ok, n = plain_release(summaries, rules, g)
            if not ok:
                outcomes.append(GroupOutcome(None))
                continue
            p, _, _ = plain_cell_perturbation(summaries, size, [g])
            shown = self.plain_size(n, p)
            entry = {key: v for key, v in entries[g].items() if key != "n"}
            if entry != self.empty_values():
                entry = self.plain_values(self.plain_gram(summaries, g), shown, entry)
            outcomes.append(GroupOutcome(shown, entry))
        return GramOpened(rules.threshold, outcomes)

    def plain_size(self, n: int, p: int) -> int:
        """`open_sizes` in plaintext."""
        return max(0, n + p)

    def plain_gram(self, summaries: list[LocalSummary], g: int) -> list[list[Fraction]]:
        """Group g's pooled Gram matrix plus its cell-key pseudo-row (`pseudo_rows`), in value
        units, exactly."""
        k = len(self.names)
        width = triangle_size(k)
        index = symmetric_index(k)
        total = [sum(s.vectors["gram"][g * width + e] for s in summaries) for e in range(width)]
        omega, row = self.plain_pseudo_row(summaries, g)
        factor = self.pseudo_row_factor()
        return [
            [
                Fraction(total[index[i, j]] + omega * row[i] * row[j] * factor, SCALE)
                for j in range(k)
            ]
            for i in range(k)
        ]

    def plain_pseudo_row(self, summaries: list[LocalSummary], g: int) -> tuple[int, list[int]]:
        """`pseudo_rows` of group g in plaintext: ω and z̃ (scaled 2**8)."""
        from smpc.cellkey import plain_model_shift
        from smpc.protocol import plain_cell_keys

        size = len(self.layout.groups)
        omega, signs = plain_model_shift(*plain_cell_keys(summaries, size, [g]))
        _, bound_low, bound_high = self.corner_bounds
        low, high = list(bound_low), list(bound_high)
        free = len(self.free_terms)
        for f, j in enumerate(self.free_terms):
            at = 2 * (g * free + f)
            low[j] = min(s.vectors["corners"][at] for s in summaries)
            high[j] = max(s.vectors["corners"][at + 1] for s in summaries)
        row = [1 << LARGEST_SCALE_BITS]
        for j, term in enumerate(self.terms):
            row.append(low[j] if signs[sign_slot(term.name)] else high[j])
        return omega, row

    def plain_values(
        self, gram: list[list[Fraction]], n: int, entry: dict[str, Any]
    ) -> dict[str, Any]:
        """The statistic's result keys computed exactly from a perturbed Gram matrix (value
        units), with `entry`'s nulls (the pooled reference's) kept."""
        raise NotImplementedError

    def reference_cells_fine(self, sub: pd.DataFrame, min_count: int) -> bool:
        """The small-cells rule in plaintext (a group's model is null when it fails)."""
        if not self.indicators or min_count <= 0:
            return True
        counts = indicator_counts(sub, np.zeros(len(sub), dtype=int), 1, self.indicators)
        return all(min_count <= c <= len(sub) - min_count for c in counts)
