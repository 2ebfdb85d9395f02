"""The secure part: pool the parties' summaries, apply `min_count` inside MPC, open the rest.

Runs inside a party process with an MPyC runtime `mpc` already started. Steps (all parties in
lock step, each a constant number of rounds, independent of the number of rows):

1. every party inputs its policy floor; the floors are opened (they are public policy) and the
   threshold is T = max(query.min_count, every floor), so no query can lower a node's floor;
2. every party inputs its per-cell counts; every site's are checked inside MPC to be ≥ 0 and
   to sum to at most its declared row count (`check_counts`: a range proof, one bit opened);
   the pooled counts are summed locally on shares;
3. if T > 0, the comparison `pooled >= T` is computed on shares, each site with a floor
   inputs its own cells' floor bits (0 or at least its floor), and only the AND per cell is
   opened;
4. for released cells only: the pooled counts and moments are opened, and the extremes are
   combined with m − 1 vectorised secure comparisons before only the winner is opened;
5. the overall count is opened only if no cell was suppressed.

With `dp` (`combine_noisy_cells`), discrete Laplace noise drawn inside MPC (`smpc.dp`) is added
to every pooled count and Σx on shares before step 3, so the threshold is compared with the
*noisy* count, only noisy values are opened, and the overall count is the sum of the released
noisy counts (nothing else is opened). Released noisy counts are reported as max(0, ñ).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from smpc.cellkey import (
    COUNT_NOISE_BITS,
    KEY_FIELD_BITS,
    LARGEST_SCALE_BITS,
    MAGNITUDE_BITS,
    MAGNITUDE_SCALE_BITS,
    SUM_PRECISION_BITS,
    Perturbation,
    count_perturbation,
    floor_bits,
    perturbation,
    scale_factor,
)
from smpc.disclosure import declared_rows, inputs_refusal
from smpc.dp import COMPARE_BITS, discrete_laplace
from smpc.encoding import (
    FRAC_BITS,
    KEY_BITS,
    MOMENT_BITS,
    MOMENT_LIMIT,
    decode_moment,
    encode_moment,
)
from smpc.job import LocalSummary, PartyJob
from smpc.statistics.base import Opened, SecureStatistic
from tessera.errors import DisclosureRefused
from tessera.schemas import MAX_ROWS


def _array(secure_type: Any, values: list[int]) -> Any:
    return secure_type.array(np.array(values, dtype=object))


def pooled(mpc: Any, secure_type: Any, values: list[int]) -> Any:
    """Every party inputs its vector; the sum is computed on shares (nothing is opened)."""
    shares = mpc.input(_array(secure_type, values))
    return functools.reduce(operator.add, shares)


WIDE_BITS = 2 * MOMENT_BITS + 16  # variance's centred second moment n·Σx² − (Σx)², scaled 2**80
SITE_COUNT_BITS = MAX_ROWS.bit_length()  # a site's count is below 2**30 (a billion rows)
COUNT_BITS = SITE_COUNT_BITS + 4  # pooled counts: at most 16 sites


def at_least(mpc: Any, values: Any, bound: int | Any, bits: int) -> Any:
    """Secret bits [value ≥ bound] for |value − bound| < 2**bits (one secure comparison each)."""
    return 1 - mpc.np_sgn(values - bound, l=bits, LT=True)


def moved_counts(mpc: Any, counts: Any, noise: Any, threshold: int, bits: int) -> Any:
    """Secret counts plus their cell-key perturbation; with no threshold (T < 1) an empty
    count stays 0 (one secure comparison each; |count| < 2**bits). Opened, each is floored at
    0 (`plain_moved_count`)."""
    if threshold < 1:
        noise = noise * at_least(mpc, counts, 1, bits)
    return counts + noise


def plain_moved_count(n: int, p: int, threshold: int) -> int:
    """`moved_counts` of one count in plaintext, floored at 0 as every opened count is."""
    return max(0, n + (p if threshold >= 1 or n >= 1 else 0))


def secure_max(mpc: Any, a: Any, b: Any, bits: int) -> Any:
    return a + (b - a) * at_least(mpc, b, a, bits)


def secure_min(mpc: Any, a: Any, b: Any, bits: int) -> Any:
    return a + (b - a) * at_least(mpc, a, b, bits)


async def release(
    mpc: Any,
    statistic: SecureStatistic,
    local_counts: list[int],
    secint: Any = None,
    threshold: int | None = None,
    sites: list[Any] | None = None,
    pending: Sequence[tuple[Any, DisclosureRefused]] = (),
) -> tuple[Any, list[bool]]:
    """Every party inputs its per-cell counts; the pooled counts (secret) and which cells are
    released: the pooled count reaches `threshold` (default T) and every site's count is 0 or
    at least that site's own floor (DataSHIELD's nfilter.tab at every site). Decided on
    shares; only one bit per cell is opened, after `check_counts` opened its one bit. Counts
    are below 2**30 per site (`SITE_COUNT_BITS`, which `check_counts` shows). `pending`:
    the caller's own input checks, started alongside (`smpc.soon`: futures of a bool) with
    the refusal each raises; all are awaited before anything is refused or opened."""
    rules = statistic.rules
    assert rules is not None
    secint = secint or mpc.SecInt(KEY_BITS)
    site_counts = sites or mpc.input(_array(secint, local_counts))
    counts = functools.reduce(operator.add, site_counts)
    threshold = rules.threshold if threshold is None else threshold
    # computed alongside the check (the comparison sees a linear function of the inputs
    # only), opened after it passes
    ok = release_flags(mpc, rules, counts, local_counts, secint, threshold)
    fitting = await counts_in_range(mpc, statistic, secint, site_counts, local_counts)
    verdicts = [await future for future, _ in pending]
    if not fitting:
        raise counts_refusal(statistic)
    for passed, (_, refusal) in zip(verdicts, pending, strict=True):
        if not passed:
            raise refusal
    if ok is None:
        return counts, [True] * len(local_counts)
    return counts, [bool(int(f)) for f in np.asarray(await mpc.output(ok)).ravel()]


def release_flags(
    mpc: Any, rules: Any, counts: Any, own_counts: list[int], secint: Any, threshold: int
) -> Any | None:
    """Secret bits, per cell: the pooled count reaches `threshold` (one secure comparison; no
    test at 0) and every site's count is 0 or at least that site's floor. A site's floor
    protects that site's own rows, so each site with a floor above 1 decides its bits on its
    own counts, as a DataSHIELD server applies nfilter.tab to its own table, and inputs them
    secretly: a site that lied would give up only its own rows' protection. The AND of all
    is MPyC's product tree (`np_prod`); None when no rule applies. `counts` are the pooled
    counts of checked site counts (each below 2**30)."""
    size = counts.shape[0]
    tests = []
    if threshold > 0:
        bits = SITE_COUNT_BITS + len(mpc.parties).bit_length() + 1
        tests.append(at_least(mpc, counts, threshold, bits))
    senders = [i for i, floor in enumerate(rules.floors) if floor > 1]
    if senders:
        floor = rules.floors[mpc.pid] if mpc.pid in senders else 0
        own = [int(c == 0 or c >= floor) for c in own_counts]
        tests += mpc.input(_array(secint, own), senders=senders)
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]
    return mpc.np_prod(mpc.np_vstack(tests).reshape(len(tests), size), axis=0)


async def counts_in_range(
    mpc: Any,
    statistic: SecureStatistic,
    secint: Any,
    site_counts: list[Any],
    own_counts: list[int],
) -> bool:
    """Whether every site's counts are in [0, 2**30) and sum to at most the row count it
    declared for the dataset (`smpc.disclosure.declared_rows`; each party inputs its own):
    each site shows its counts and its spare rows (declared − Σ counts) in range by the bits it
    inputs (`smpc.ranges`). The challenge and one bit are opened."""
    from smpc.ranges import all_in_range

    declared = declared_rows(statistic.schema)
    limits = mpc.input(secint(declared))
    values = [
        mpc.np_concatenate((c, mpc.np_fromlist([limit - mpc.np_sum(c)])))
        for c, limit in zip(site_counts, limits, strict=True)
    ]
    own = np.array([*(int(c) for c in own_counts), declared - sum(int(c) for c in own_counts)])
    return await all_in_range(mpc, secint, values, own.astype(object), SITE_COUNT_BITS)


def counts_refusal(statistic: SecureStatistic) -> DisclosureRefused:
    what = "a count is negative, or the counts exceed the row count it declared"
    return DisclosureRefused(inputs_refusal(statistic.name, what), {"rule": "inputs"})


async def check_counts(
    mpc: Any,
    statistic: SecureStatistic,
    secint: Any,
    site_counts: list[Any],
    own_counts: list[int],
) -> None:
    """`counts_in_range`, decided inside MPC before anything about the counts is opened; a
    failure is refused naming no site."""
    if not await counts_in_range(mpc, statistic, secint, site_counts, own_counts):
        raise counts_refusal(statistic)


async def check_histograms(
    mpc: Any,
    statistic: SecureStatistic,
    secint: Any,
    site_counts: list[Any],
    site_bins: list[Any],
    own_bins: list[int] | None = None,
) -> None:
    """Every site's histogram (a block of bins per cell, in cell order) adds up, per cell, to
    that site's count for the cell (the sum of the squared differences tested for 0), and with
    `own_bins` (this party's own histogram) every bin is ≥ 0 (shown in [0, 2**30) by the bits
    its site inputs, `smpc.ranges`: 30 inputs per bin, so for coarse histograms only): decided
    inside MPC before anything of the statistic is opened. Opens one bit (and a random
    challenge); a failure is refused naming no site."""
    from smpc.ranges import all_in_range

    cells = site_counts[0].shape[0]
    fitting = True
    if own_bins is not None:
        own = np.array(own_bins, dtype=object)
        fitting = await all_in_range(mpc, secint, site_bins, own, SITE_COUNT_BITS)
    differences = [
        b.reshape((cells, -1)).sum(axis=1) - c for b, c in zip(site_bins, site_counts, strict=True)
    ]
    squares = functools.reduce(operator.add, [mpc.np_sum(d * d) for d in differences])
    adding_up = await mpc.is_zero_public(squares)
    if not (fitting and adding_up):
        what = "a histogram count is negative, or a histogram does not add up to its count"
        raise DisclosureRefused(inputs_refusal(statistic.name, what), {"rule": "inputs"})


def cell_perturbation(
    mpc: Any, secint: Any, keys: list[int], size: int, cells: np.ndarray, whole: bool
) -> Perturbation:
    """Every party inputs its key sums (`smpc.cellkey.key_sums`); the perturbations of the
    given cells, and with `whole` last that of the total n (its key: the sum of every cell's)."""
    unions = [[int(c)] for c in cells] + ([list(range(size))] if whole else [])
    return union_perturbation(mpc, secint, keys, size, unions)


def union_perturbation(
    mpc: Any, secint: Any, keys: list[int], size: int, unions: list[list[int]]
) -> Perturbation:
    """Every party inputs its key sums (`smpc.cellkey.key_sums`); the perturbation of each
    union of cells, its key the sum of its cells' keys: what a `count` of their rows together
    gets (a t-test's group: both levels)."""
    pooled_keys = functools.reduce(operator.add, mpc.input(_array(secint, keys)))
    select = np.zeros((size, len(unions)), dtype=object)
    for u, cells in enumerate(unions):
        select[np.array(cells, dtype=int), u] = 1
    both = mpc.np_concatenate((pooled_keys[:size] @ select, pooled_keys[size:] @ select))
    return perturbation(mpc, both, len(unions))


async def combine_cells(mpc: Any, statistic: SecureStatistic, job: PartyJob) -> Opened:
    """The shared cell protocol behind count, sum, mean, variance, min, max, histogram and
    crosstab, in the `exact` mode: the per-site threshold rule, then cell-key perturbation
    (`smpc.cellkey`) of every released count, sum, second moment and extreme, rounded inside
    MPC before it is opened."""
    if statistic.query.dp is not None:
        return await combine_noisy_cells(mpc, statistic, job)
    rules = statistic.rules
    assert rules is not None
    wide = "sumsq" in statistic.moments
    secint = mpc.SecInt(WIDE_BITS if wide else MOMENT_BITS)
    summary = job.summary
    size = statistic.layout.size
    if len(summary.counts) != size or len(summary.vectors.get("keys", ())) != 2 * size:
        raise ValueError(f"local summary does not fit the layout's {size} cells")

    site_counts = mpc.input(_array(secint, summary.counts))
    counts, released = await release(mpc, statistic, summary.counts, secint, sites=site_counts)
    cells = np.flatnonzero(released)
    opened = Opened(threshold=rules.threshold, released=released, counts=[None] * size)
    if statistic.moments:
        opened.moments = {name: [None] * size for name in statistic.moments}
    if statistic.extreme is not None:
        opened.extremes = [None] * size
    whole = bool(all(released))
    if not cells.size:
        return opened

    k = len(cells)
    inputs = SiteInputs.of(mpc, secint, statistic, job, cells, site_counts)
    await inputs.check(mpc, statistic)  # before any value, the counts included, is opened
    shift = cell_perturbation(mpc, secint, summary.vectors["keys"], size, cells, whole)

    n = counts[cells]
    if whole:
        n = mpc.np_concatenate((n, mpc.np_sum(counts, keepdims=True)))
    moved = moved_counts(mpc, n, shift.count, rules.threshold, COUNT_BITS)
    shown = [int(v) for v in np.asarray(await mpc.output(moved)).ravel()]
    for c, v in zip(cells, shown, strict=False):
        opened.counts[c] = max(0, v)
    if whole:
        opened.total = max(0, shown[-1])

    if statistic.moments:
        await _perturbed_moments(mpc, statistic, inputs, n[:k], shift, opened)
    if statistic.extreme is not None:
        await _perturbed_extremes(mpc, statistic, inputs, shift, opened)
    return opened


@dataclass
class SiteInputs:
    """Each site's secret inputs to a cell statistic's values, for the released cells."""

    cells: np.ndarray
    counts: list[Any]
    moments: dict[str, list[Any]]
    largest: list[Any]
    extreme: list[Any]
    own: LocalSummary  # this party's own summary (the plaintext of its site's inputs)

    @classmethod
    def of(
        cls,
        mpc: Any,
        secint: Any,
        statistic: SecureStatistic,
        job: PartyJob,
        cells: np.ndarray,
        site_counts: list[Any],
    ) -> SiteInputs:
        summary = job.summary

        def shares(values: list[int]) -> list[Any]:
            return [s[cells] for s in mpc.input(_array(secint, values))]

        moments = {name: shares(summary.moments[name]) for name in statistic.moments}
        # the exact mode's magnitude perturbation needs each cell's largest |x| (dp: no)
        exact = statistic.query.dp is None
        largest = shares(summary.vectors["largest"]) if statistic.moments and exact else []
        extreme = shares(summary.vectors["extreme"]) if statistic.extreme is not None else []
        counts = [c[cells] for c in site_counts]
        return cls(cells, counts, moments, largest, extreme, summary)

    def pooled(self, name: str) -> Any:
        return functools.reduce(operator.add, self.moments[name])

    async def check(self, mpc: Any, statistic: SecureStatistic) -> None:
        """Every site's inputs within the column's declared bounds [lo, hi], decided inside MPC
        before any value is opened: n·lo ≤ Σx ≤ n·hi, 0 ≤ Σx² ≤ n·max(lo², hi²), the largest
        |x| ≤ max(|lo|, |hi|), the extreme in [lo, hi] (each local sum rounded once: ±1 on
        the 2**-40 grid). Each difference is a function of one site's own inputs, so that site
        shows it non-negative by the bits it inputs (`smpc.ranges`, private: only one bit is
        opened, besides the random challenge), all in one batch: a few rounds, where a secure
        comparison per difference cost a party 40 ms for one mean. A failure is refused naming
        no site. Columns without declared bounds are not checked (nothing is declared)."""
        from smpc.ranges import all_in_range

        bounds = statistic.clip_bounds or statistic.declared_bounds
        if bounds is None or not (self.moments or self.extreme):
            return
        lo, hi = (encode_moment(b) for b in bounds)
        top = max(abs(bounds[0]), abs(bounds[1]))
        width = max(1, math.ceil(math.log2(top + 1)))  # bits of the largest declared |x|
        bits = 0  # each difference is below 2**bits when honest (the widest one sets it)
        if "sum" in self.moments:
            bits = FRAC_BITS + SITE_COUNT_BITS + width + 2
        if "sumsq" in self.moments:
            bits = max(bits, FRAC_BITS + SITE_COUNT_BITS + 2 * width + 2)
        if self.largest:
            bits = max(bits, LARGEST_SCALE_BITS + width + 2)
        if self.extreme:
            bits = max(bits, FRAC_BITS + width + 3)
        largest_bound = math.ceil(top * (1 << LARGEST_SCALE_BITS))
        square_bound = encode_moment(top * top)

        def differences(n: Any, sums: Any, squares: Any, largest: Any, extreme: Any) -> list[Any]:
            out = []
            if "sum" in self.moments:
                out += [sums - n * lo + 1, n * hi - sums + 1]
            if "sumsq" in self.moments:
                out += [squares + 1, n * square_bound - squares + 1]
            if self.largest:
                out.append(largest_bound - largest)
            if self.extreme:
                out += [extreme - lo, hi - extreme]
            return out

        def site(i: int) -> Any:
            parts = differences(
                self.counts[i],
                self.moments["sum"][i] if "sum" in self.moments else None,
                self.moments["sumsq"][i] if "sumsq" in self.moments else None,
                self.largest[i] if self.largest else None,
                self.extreme[i] if self.extreme else None,
            )
            return mpc.np_concatenate(parts)

        own = self.own

        def mine(key: str, vectors: bool = False) -> Any:
            source = own.vectors if vectors else own.moments
            if key not in source:
                return None
            return np.array(source[key], dtype=object)[self.cells]

        plain = differences(
            np.array(own.counts, dtype=object)[self.cells],
            mine("sum"),
            mine("sumsq"),
            mine("largest", vectors=True),
            mine("extreme", vectors=True),
        )
        secint = type(self.counts[0]).sectype
        values = [site(i) for i in range(len(self.counts))]
        if not await all_in_range(mpc, secint, values, np.concatenate(plain), bits, private=True):
            raise DisclosureRefused(
                f"{statistic.name}: a site's inputs break the declared bounds of "
                f"{statistic.column!r} (checked inside MPC over every site's sums together; "
                "which site is not revealed)",
                {"rule": "inputs"},
            )


async def _perturbed_moments(
    mpc: Any,
    statistic: SecureStatistic,
    inputs: SiteInputs,
    n: Any,
    shift: Perturbation,
    opened: Opened,
) -> None:
    """Σx + u_a·magnitude·M (M: the cell's largest |x|), and for the variance the centred
    n·Σx² − (Σx)² + u_b·magnitude·M²·n, each rounded down inside MPC before it is opened."""
    rules = statistic.rules
    assert rules is not None
    cells = inputs.cells
    k = len(cells)
    # M (scaled 2**8) compared between sites: sized by the declared bounds where the inputs
    # were checked against them, by the moments' range otherwise
    bounds = statistic.clip_bounds or statistic.declared_bounds
    top = max(abs(bounds[0]), abs(bounds[1])) if bounds else float(MOMENT_LIMIT)
    bits = LARGEST_SCALE_BITS + max(1, math.ceil(math.log2(top + 1))) + 2
    largest = functools.reduce(lambda x, y: secure_max(mpc, x, y, bits), inputs.largest)
    magnitude = scale_factor(rules.magnitude)
    # scales: u 2**12, magnitude 2**8, M 2**8 → 2**28; Σx is scaled 2**40
    sums = inputs.pooled("sum")
    unit = MAGNITUDE_BITS + MAGNITUDE_SCALE_BITS + LARGEST_SCALE_BITS
    shifted = sums + shift.magnitude_a[:k] * largest * (magnitude << (FRAC_BITS - unit))
    drop = FRAC_BITS - SUM_PRECISION_BITS
    values = await mpc.output(await floor_bits(mpc, shifted, drop))
    for c, v in zip(cells, np.asarray(values).ravel(), strict=True):
        opened.moments["sum"][c] = decode_moment(int(v))
    if "sumsq" not in statistic.moments:
        return
    squares = inputs.pooled("sumsq")
    centred = n * squares * (1 << FRAC_BITS) - sums * sums  # scaled 2**80
    # u 2**12, magnitude 2**8, M² 2**16 → 2**36
    unit = MAGNITUDE_BITS + MAGNITUDE_SCALE_BITS + 2 * LARGEST_SCALE_BITS
    spread = shift.magnitude_b[:k] * largest * largest * n * (magnitude << (2 * FRAC_BITS - unit))
    values = await mpc.output(await floor_bits(mpc, centred + spread, 2 * FRAC_BITS - 16))
    opened.moments["centred"] = [None] * len(opened.counts)
    for c, v in zip(cells, np.asarray(values).ravel(), strict=True):
        opened.moments["centred"][c] = Fraction(int(v), 1 << (2 * FRAC_BITS))


async def _perturbed_extremes(
    mpc: Any, statistic: SecureStatistic, inputs: SiteInputs, shift: Perturbation, opened: Opened
) -> None:
    """The cell's minimum or maximum (m − 1 secure comparisons, sized by the declared range:
    the inputs were checked within it) moved by u_b·noise·(the declared range), rounded down
    inside MPC: never a child's exact value."""
    assert statistic.rules is not None and statistic.declared_range is not None
    pick = secure_min if statistic.extreme == "min" else secure_max
    bits = FRAC_BITS + max(1, math.ceil(math.log2(statistic.declared_range + 1))) + 2
    value = functools.reduce(lambda x, y: pick(mpc, x, y, bits), inputs.extreme)
    moved = value * (1 << EXTREME_UNIT) + shift.magnitude_b[: len(inputs.cells)] * extreme_step(
        statistic
    )
    values = await mpc.output(await floor_bits(mpc, moved, EXTREME_DROP))
    for c, v in zip(inputs.cells, np.asarray(values).ravel(), strict=True):
        opened.extremes[c] = float(Fraction(int(v), 1 << (FRAC_BITS + EXTREME_UNIT)))


EXTREME_UNIT = MAGNITUDE_BITS + MAGNITUDE_SCALE_BITS  # u 2**12, noise 2**8
EXTREME_DROP = FRAC_BITS + EXTREME_UNIT - SUM_PRECISION_BITS


def extreme_step(statistic: SecureStatistic) -> int:
    """noise·(declared range) as a public integer: scaled 2**8 (noise) and 2**40 (range)."""
    assert statistic.rules is not None and statistic.declared_range is not None
    return scale_factor(statistic.rules.noise) * encode_moment(statistic.declared_range)


async def noisy_release(mpc: Any, counts: Any, threshold: int) -> list[bool]:
    """Which noisy counts reach the threshold (compared inside MPC, only the bits opened)."""
    if threshold <= 0:
        return [True] * len(counts)
    below = mpc.np_sgn(counts - min(threshold, 1 << (COMPARE_BITS - 3)), l=COMPARE_BITS, LT=True)
    return [not int(f) for f in np.asarray(await mpc.output(below)).ravel()]


async def combine_noisy_cells(mpc: Any, statistic: SecureStatistic, job: PartyJob) -> Opened:
    """The cell protocol with `dp`: noise on every pooled count (and Σx) before anything opens.

    First, as in the exact mode, every site's counts are checked against its declared rows
    (`check_counts`) and its clipped sums against the column's bounds (`SiteInputs.check`),
    inside MPC, one bit each. Then opens the release bits of the noisy counts, then the
    released noisy counts and noisy sums; never a noiseless value, never the noise.
    """
    secint = mpc.SecInt(MOMENT_BITS)
    summary = job.summary
    size = statistic.layout.size
    if len(summary.counts) != size:
        raise ValueError(f"local summary has {len(summary.counts)} cells, layout needs {size}")
    plan = statistic.noise
    names = list(plan)  # "count", then the statistic's sums ("sum", "sumsq")
    site_counts = mpc.input(_array(secint, summary.counts))
    inputs = SiteInputs.of(mpc, secint, statistic, job, np.arange(size), site_counts)
    await check_counts(mpc, statistic, secint, site_counts, summary.counts)
    await inputs.check(mpc, statistic)
    noise = discrete_laplace(mpc, secint, [plan[name] for name in names for _ in range(size)])

    threshold = statistic.threshold
    values = {"count": functools.reduce(operator.add, site_counts)}
    for name in names[1:]:
        values[name] = inputs.pooled(name)
    noisy = {name: values[name] + noise[k * size : (k + 1) * size] for k, name in enumerate(names)}
    released = await noisy_release(mpc, noisy["count"], threshold)
    open_cells = np.flatnonzero(released)

    opened = Opened(threshold=threshold, released=released, counts=[None] * size)
    opened.moments = {name: [None] * size for name in names[1:]}
    if open_cells.size:
        shown = await mpc.output(noisy["count"][open_cells])
        for c, v in zip(open_cells, np.asarray(shown).ravel(), strict=True):
            opened.counts[c] = max(0, int(v))
        for name in names[1:]:
            shown = await mpc.output(noisy[name][open_cells])
            for c, v in zip(open_cells, np.asarray(shown).ravel(), strict=True):
                opened.moments[name][c] = decode_moment(int(v))
    if all(released):
        opened.total = sum(c for c in opened.counts if c is not None)
    return opened


# ---- the same arithmetic in plaintext (the tests' oracle) ------------------------------------


def plain_perturbation(key_a: int, key_b: int) -> tuple[int, int, int]:
    """`smpc.cellkey.perturbation` of one cell, in plaintext: (p, u_a, u_b)."""

    def bits(key: int) -> list[int]:
        return [(key >> j) & 1 for j in range(KEY_FIELD_BITS)]

    def magnitude(b: list[int]) -> int:
        window = b[COUNT_NOISE_BITS : COUNT_NOISE_BITS + MAGNITUDE_BITS]
        return sum(2 * (1 << j) * v for j, v in enumerate(window)) + 1 - (1 << MAGNITUDE_BITS)

    a, b = bits(key_a), bits(key_b)
    return int(count_perturbation(np.array([a]))[0]), magnitude(a), magnitude(b)


def plain_release(
    summaries: list[Any], rules: Any, cell: int, threshold: int | None = None
) -> tuple[bool, int]:
    """`release` of one cell in plaintext: whether it is released, and its pooled count."""
    sites = [s.counts[cell] for s in summaries]
    n = sum(sites)
    per_site = all(v == 0 or v >= f or f <= 1 for v, f in zip(sites, rules.floors, strict=True))
    return n >= (rules.threshold if threshold is None else threshold) and per_site, n


def plain_cell_keys(summaries: list[Any], size: int, cells: list[int]) -> tuple[int, int]:
    """The pooled key sums (A, B) of the cells taken together, modulo 2²⁴, in plaintext."""
    mask = (1 << KEY_FIELD_BITS) - 1
    a, b = (
        sum(s.vectors["keys"][field * size + c] for s in summaries for c in cells) & mask
        for field in (0, 1)
    )
    return a, b


def plain_cell_perturbation(summaries: list[Any], size: int, cells: list[int]) -> tuple[int, ...]:
    """`cell_perturbation` in plaintext for the cells taken together (one cell, or all of
    them for the total n): (p, u_a, u_b)."""
    return plain_perturbation(*plain_cell_keys(summaries, size, cells))


def plain_cells(statistic: SecureStatistic, summaries: list[Any], rules: Any) -> Opened:
    """What `combine_cells` opens, computed in plaintext from every party's local summary:
    the exact integers the MPC must produce (tests compare the two)."""
    size = statistic.layout.size
    opened = Opened(threshold=rules.threshold, released=[False] * size, counts=[None] * size)
    if statistic.moments:
        opened.moments = {name: [None] * size for name in statistic.moments}
    if statistic.extreme is not None:
        opened.extremes = [None] * size
    for c in range(size):
        ok, n = plain_release(summaries, rules, c)
        opened.released[c] = ok
        if not ok:
            continue
        p, u_a, u_b = plain_cell_perturbation(summaries, size, [c])
        opened.counts[c] = plain_moved_count(n, p, rules.threshold)
        if statistic.moments:
            largest = max(s.vectors["largest"][c] for s in summaries)
            magnitude = scale_factor(rules.magnitude)
            total = sum(s.moments["sum"][c] for s in summaries)
            unit = MAGNITUDE_BITS + MAGNITUDE_SCALE_BITS + LARGEST_SCALE_BITS
            shifted = total + u_a * largest * (magnitude << (FRAC_BITS - unit))
            drop = 1 << (FRAC_BITS - SUM_PRECISION_BITS)
            opened.moments["sum"][c] = decode_moment(shifted - shifted % drop)
            if "sumsq" in statistic.moments:
                squares = sum(s.moments["sumsq"][c] for s in summaries)
                centred = n * squares * (1 << FRAC_BITS) - total * total
                unit = MAGNITUDE_BITS + MAGNITUDE_SCALE_BITS + 2 * LARGEST_SCALE_BITS
                centred += u_b * largest * largest * n * (magnitude << (2 * FRAC_BITS - unit))
                drop = 1 << (2 * FRAC_BITS - 16)
                opened.moments.setdefault("centred", [None] * size)
                opened.moments["centred"][c] = Fraction(
                    centred - centred % drop, 1 << (2 * FRAC_BITS)
                )
        if statistic.extreme is not None:
            pick = min if statistic.extreme == "min" else max
            moved = pick(s.vectors["extreme"][c] for s in summaries) * (1 << EXTREME_UNIT)
            moved += u_b * extreme_step(statistic)
            drop = 1 << EXTREME_DROP
            opened.extremes[c] = float(
                Fraction(moved - moved % drop, 1 << (FRAC_BITS + EXTREME_UNIT))
            )
    if all(opened.released) and size:
        n = sum(sum(s.counts) for s in summaries)
        p, _, _ = plain_cell_perturbation(summaries, size, list(range(size)))
        opened.total = plain_moved_count(n, p, rules.threshold)
    return opened
