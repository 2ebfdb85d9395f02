"""The secure part: pool the parties' summaries, apply `min_count` inside MPC, open the rest.

Runs inside a party process with an MPyC runtime `mpc` already started. Steps (all parties in
lock step, each a constant number of rounds, independent of the number of rows):

1. every party inputs its policy floor; the floors are opened (they are public policy) and the
   threshold is T = max(query.min_count, every floor), so no query can lower a node's floor;
2. every party inputs its per-cell counts; the pooled counts are summed locally on shares;
3. if T > 0, the comparison `pooled >= T` is computed on shares and only its bit is opened;
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
import operator
from typing import Any

import numpy as np

from smpc.dp import COMPARE_BITS, discrete_laplace
from smpc.encoding import KEY_BITS, MOMENT_BITS, decode_moment, from_order_key
from smpc.job import PartyJob
from smpc.statistics.base import Opened, SecureStatistic


def _array(secure_type: Any, values: list[int]) -> Any:
    return secure_type.array(np.array(values, dtype=object))


def pooled(mpc: Any, secure_type: Any, values: list[int]) -> Any:
    """Every party inputs its vector; the sum is computed on shares (nothing is opened)."""
    shares = mpc.input(_array(secure_type, values))
    return functools.reduce(operator.add, shares)


async def release(mpc: Any, counts: Any, threshold: int) -> list[bool]:
    """Which pooled counts reach the threshold: compared inside MPC, only the bits opened."""
    if threshold <= 0:
        return [True] * len(counts)
    flags = await mpc.output(counts >= threshold)
    return [bool(int(f)) for f in np.asarray(flags).ravel()]


async def combine_cells(mpc: Any, statistic: SecureStatistic, job: PartyJob) -> Opened:
    """The shared cell protocol behind count, sum, mean, variance, min, max and histogram."""
    if statistic.query.dp is not None:
        return await combine_noisy_cells(mpc, statistic, job)
    secint = mpc.SecInt(KEY_BITS)
    summary = job.summary
    size = statistic.layout.size
    if len(summary.counts) != size:
        raise ValueError(f"local summary has {len(summary.counts)} cells, layout needs {size}")

    threshold = statistic.threshold
    counts = pooled(mpc, secint, summary.counts)
    released = await release(mpc, counts, threshold)
    open_cells = np.flatnonzero(released)

    opened = Opened(threshold=threshold, released=released, counts=[None] * size)
    if open_cells.size:
        values = await mpc.output(counts[open_cells])
        for c, v in zip(open_cells, np.asarray(values).ravel(), strict=True):
            opened.counts[c] = int(v)

    if statistic.moments:
        secmoment = mpc.SecInt(MOMENT_BITS)
        for name in statistic.moments:
            sums = pooled(mpc, secmoment, summary.moments[name])
            column: list[Any] = [None] * size
            if open_cells.size:
                values = await mpc.output(sums[open_cells])
                for c, v in zip(open_cells, np.asarray(values).ravel(), strict=True):
                    column[c] = decode_moment(int(v))
            opened.moments[name] = column

    if statistic.extreme is not None:
        assert summary.extremes is not None
        shares = mpc.input(_array(secint, summary.extremes))
        opened.extremes = [None] * size
        if open_cells.size:
            pick = mpc.np_minimum if statistic.extreme == "min" else mpc.np_maximum
            best = functools.reduce(pick, [s[open_cells] for s in shares])
            values = await mpc.output(best)
            for c, v in zip(open_cells, np.asarray(values).ravel(), strict=True):
                opened.extremes[c] = from_order_key(int(v))

    if all(released):
        opened.total = int(await mpc.output(mpc.sum(list(counts)) if size > 1 else counts[0]))
    return opened


async def noisy_release(mpc: Any, counts: Any, threshold: int) -> list[bool]:
    """Which noisy counts reach the threshold (compared inside MPC, only the bits opened)."""
    if threshold <= 0:
        return [True] * len(counts)
    below = mpc.np_sgn(counts - min(threshold, 1 << (COMPARE_BITS - 3)), l=COMPARE_BITS, LT=True)
    return [not int(f) for f in np.asarray(await mpc.output(below)).ravel()]


async def combine_noisy_cells(mpc: Any, statistic: SecureStatistic, job: PartyJob) -> Opened:
    """The cell protocol with `dp`: noise on every pooled count (and Σx) before anything opens.

    Opens the release bits of the noisy counts, then the released noisy counts and noisy sums;
    never a noiseless value, never the noise.
    """
    secint = mpc.SecInt(MOMENT_BITS)
    summary = job.summary
    size = statistic.layout.size
    if len(summary.counts) != size:
        raise ValueError(f"local summary has {len(summary.counts)} cells, layout needs {size}")
    plan = statistic.noise
    names = list(plan)  # "count", then "sum" if the statistic has one
    noise = discrete_laplace(mpc, secint, [plan[name] for name in names for _ in range(size)])

    threshold = statistic.threshold
    values = {"count": pooled(mpc, secint, summary.counts)}
    if "sum" in plan:
        values["sum"] = pooled(mpc, secint, summary.moments["sum"])
    noisy = {name: values[name] + noise[k * size : (k + 1) * size] for k, name in enumerate(names)}
    released = await noisy_release(mpc, noisy["count"], threshold)
    open_cells = np.flatnonzero(released)

    opened = Opened(threshold=threshold, released=released, counts=[None] * size)
    column: list[Any] = [None] * size
    if open_cells.size:
        shown = await mpc.output(noisy["count"][open_cells])
        for c, v in zip(open_cells, np.asarray(shown).ravel(), strict=True):
            opened.counts[c] = max(0, int(v))
        if "sum" in noisy:
            shown = await mpc.output(noisy["sum"][open_cells])
            for c, v in zip(open_cells, np.asarray(shown).ravel(), strict=True):
                column[c] = decode_moment(int(v))
    if "sum" in noisy:
        opened.moments["sum"] = column
    if all(released):
        opened.total = sum(c for c in opened.counts if c is not None)
    return opened
