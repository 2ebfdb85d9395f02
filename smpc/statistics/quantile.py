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

Numeric limits: exact for every finite float64 (an infinite quantile is reported as null: JSON
has no infinity); missing values are skipped. At most 99 levels q per query.

Reveals: per released group the pooled n and each requested quantile (exact data values);
which groups are suppressed (below `min_count`); the overall n only when no group is.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, field_validator

from smpc.disclosure import AppliedRules
from smpc.encoding import MOMENT_BITS, from_order_key
from smpc.job import LocalSummary, PartyJob
from smpc.query import ColumnQuery
from smpc.statistics.base import Opened, SecureStatistic, number

if TYPE_CHECKING:
    import pandas as pd

KEY_SPACE_BITS = 64
ROUND_COMPARISONS = 256  # the widest split whose comparisons per round stay within this
_SIGN = np.int64(-(2**63))
_MAGNITUDE = np.int64(2**63 - 1)


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
    query_model = QuantileQuery
    numeric_column = True
    result_fields = {"quantiles": dict[str, float | None]}
    intermediates = (
        "the search's comparison bits, each [quantile ≤ a public cut point], all determined by "
        "the quantiles themselves"
    )
    query: QuantileQuery

    # ---- local part ----------------------------------------------------------------------

    def local_input(self, frame: pd.DataFrame) -> LocalSummary:
        """Per-group row counts (shared) and this party's own selected values with their group
        (`rows`: read only by this party's own process, to count values below cut points)."""
        from smpc.cellkey import key_sums

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

    def plain(self, summaries: list[LocalSummary], frames: list[pd.DataFrame]) -> QuantileOpened:
        """`compute`'s opened values in plaintext (the tests' oracle)."""
        from smpc.protocol import plain_cell_perturbation, plain_release, range_shift

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

    def reference_values(self, sub: pd.DataFrame) -> dict[str, Any]:
        assert self.column is not None
        values = sub[self.column].to_numpy(dtype=float)
        if not len(values):
            return self.empty_values()
        found = np.quantile(values, self.query.q, method="inverted_cdf")
        return {
            "quantiles": {
                quantile_key(q): number(v) for q, v in zip(self.query.q, found, strict=True)
            }
        }
