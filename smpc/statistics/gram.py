"""`GramStatistic`: statistics computed from the pooled Gram matrix of [1, columns…] per group.

Each party secret-shares, per group, its row count and the upper triangle of its fixed-point
Gram matrix (see `smpc.statistics.design`). Inside MPC the counts are pooled and compared with
the threshold T (only the comparison bit is opened; a group below T reveals nothing else); for
released groups the group's n is opened and its Gram matrix is pooled, as a secret, in an exact
prime field large enough for everything the statistic computes from it. Subclasses then compute
and open only their outputs (`smpc.exact`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from smpc.job import LocalSummary, PartyJob
from smpc.statistics.base import SecureStatistic
from smpc.statistics.design import (
    Indicator,
    Term,
    complete_rows,
    design,
    encode_gram,
    indicator_counts,
    indicators,
    small_cells,
    small_cells_refusal,
    symmetric_index,
    terms,
    triangle_size,
)

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class GroupOutcome:
    n: int | None  # None: suppressed
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class GramOpened:
    threshold: int
    groups: list[GroupOutcome]


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
        from smpc.frames import conform, select

        data = conform(frame, self.schema, self.query.referenced_columns())
        mask = select(data, self.query.where, self.schema)
        mask &= complete_rows(data, self.query.statistic_columns())
        data = data[mask]
        groups = self.layout.group_codes(data)
        keep = groups >= 0
        return data[keep], groups[keep]

    # ---- local part ---------------------------------------------------------------------

    def local_input(self, frame: pd.DataFrame) -> LocalSummary:
        data, groups = self.selected(frame)
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
        return LocalSummary(counts=[int(c) for c in counts], vectors=vectors)

    # ---- the secure part ----------------------------------------------------------------

    def field_bits(self) -> int:
        """Bits of the largest |numerator| · denominator the statistic opens."""
        raise NotImplementedError

    async def compute(self, mpc: Any, job: PartyJob) -> GramOpened:
        from smpc.exact import exact_type
        from smpc.protocol import pooled, release

        threshold = self.threshold
        size = len(self.layout.groups)
        counts, released = await release(mpc, self, job.summary.counts)
        shown = [g for g in range(size) if released[g]]
        outcomes = [GroupOutcome(None) for _ in range(size)]
        if not shown:
            return GramOpened(threshold, outcomes)
        sizes = await self.open_sizes(mpc, counts[np.array(shown)])
        for g, n in zip(shown, sizes, strict=True):
            outcomes[g].n = n
        k = len(self.names)
        width = triangle_size(k)
        index = symmetric_index(k).ravel()
        small = None
        if self.compare_bits():  # the same matrix in a small field, for cheap comparisons
            small = pooled(mpc, mpc.SecInt(self.compare_bits()), job.summary.vectors["gram"])
            small = [small[g * width : (g + 1) * width][index].reshape(k, k) for g in range(size)]
        shown, hidden = await self.screen(mpc, job, counts, small, shown, outcomes)
        if not shown:
            return GramOpened(threshold, outcomes)
        stype = exact_type(mpc, self.field_bits())
        gram = pooled(mpc, stype, job.summary.vectors["gram"])
        for g in shown:
            matrix = gram[g * width : (g + 1) * width][index].reshape(k, k)
            compare = None if small is None else small[g]
            outcomes[g].values = await self.solve(
                mpc, matrix, outcomes[g].n or 0, compare, hidden.get(g, set())
            )
        return GramOpened(threshold, outcomes)

    async def open_sizes(self, mpc: Any, counts: Any) -> list[int]:
        """The released groups' n as the result publishes them (here exactly: the model's
        degrees of freedom need it)."""
        return [int(n) for n in np.asarray(await mpc.output(counts)).ravel()]

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
        from tessera.errors import DisclosureRefused

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
    ) -> dict[str, Any]:
        """Compute and open one group's outputs from its pooled, secret Gram matrix (and the
        same matrix in the small comparison field when `compare_bits` asks for one), leaving
        out the `hidden` outputs (`screen`)."""
        raise NotImplementedError

    # ---- after the protocol -------------------------------------------------------------

    def finish(self, opened: GramOpened) -> dict[str, Any]:
        entries = []
        for outcome in opened.groups:
            if outcome.n is None:
                entries.append({"n": None, **self.empty_values()})
            else:
                entries.append({"n": outcome.n, **outcome.values})
        return self.assemble(entries)

    # ---- plaintext oracle ---------------------------------------------------------------

    def reference(self, frame: pd.DataFrame, min_count: int = 0) -> dict[str, Any]:
        data, groups = self.selected(frame)
        entries = []
        for g in range(len(self.layout.groups)):
            sub = data[groups == g]
            if len(sub) < min_count:
                entries.append({"n": None, **self.empty_values()})
            elif not self.reference_cells_fine(sub, min_count):
                entries.append({"n": len(sub), **self.empty_values()})
            else:
                entries.append({"n": len(sub), **self.reference_values(sub)})
        return self.assemble(entries)

    def reference_cells_fine(self, sub: pd.DataFrame, min_count: int) -> bool:
        """The small-cells rule in plaintext (a group's model is null when it fails)."""
        if not self.indicators or min_count <= 0:
            return True
        counts = indicator_counts(sub, np.zeros(len(sub), dtype=int), 1, self.indicators)
        return all(min_count <= c <= len(sub) - min_count for c in counts)
