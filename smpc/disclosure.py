"""Disclosure rules: what each node's policy demands of every result it takes part in.

A node's policy sets, per dataset, a disclosure *mode* and the rules below; they are public
policy (the coordinator shows them, the dry-run predicts with them). Each party hands its own
rules to its party process; at the start of every protocol the parties open every party's
rules (`agree_rules`) and apply the strictest of each, so no query and no other node can relax
a node's rule. A node's own floor also applies to its own contribution to every cell
(`smpc.protocol.release`), so the floors are kept per party.

The rules, with their DataSHIELD counterparts and defaults (as DataSHIELD's):

- `min_count` (DataSHIELD's `nfilter.tab`; node config, default 5): a released cell has at
  least T pooled rows, and every site's contribution is 0 or at least that site's own floor;
- `subset_min` (`nfilter.subset`, 3): a `where` selection and its complement each hold at
  least this many rows;
- `glm_ratio` (`nfilter.glm`, 0.33): a model's parameters are at most glm_ratio · n;
- `levels_max` (`nfilter.levels.max`, 40): a grouping or categorical column has at most this
  many levels, and `levels_density` (`nfilter.levels.density`, 0.33) at most that share of n;
- `noise` (`nfilter.noise`, 0.25): extremes and quantiles move by up to noise · spread;
- `magnitude` (the ABS TableBuilder's, 0.25): sums move by up to magnitude · the cell's largest
  contribution.

`mode` is `exact` (the rules above, with cell-key perturbation: `smpc.cellkey`) or `dp` (every
query must carry `dp`; the node refuses the rest, before any protocol runs).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tessera.errors import DisclosureRefused
from tessera.schemas import MAX_ROWS, MAX_THRESHOLD, MODES, DatasetSchema, DisclosureRules, Mode

if TYPE_CHECKING:
    from smpc.job import PartyJob
    from smpc.statistics.base import SecureStatistic

__all__ = [
    "MAX_THRESHOLD",
    "MODES",
    "AppliedRules",
    "DisclosureRules",
    "Mode",
    "agree_rules",
    "prelude",
]

_POOLED_BITS = MAX_ROWS.bit_length()  # a site's selection counts are below 2**30
_SCALE = 1_000_000  # ratios travel as integers in millionths (DisclosureRules.vector)


@dataclass(frozen=True)
class AppliedRules:
    """The rules every party applies in one run: the strictest of every party's, and each
    party's own floor (for the per-site rule). Public: every party opened the same."""

    threshold: int  # T = max(query min_count, every floor)
    floors: tuple[int, ...]  # party i's own floor
    subset_min: int
    glm_ratio: float
    levels_max: int
    levels_density: float
    noise: float
    magnitude: float

    @classmethod
    def strictest(
        cls, query_min_count: int | None, floors: list[int], vectors: list[list[int]]
    ) -> AppliedRules:
        from smpc.query import applied_threshold

        return cls(
            threshold=applied_threshold(query_min_count, floors),
            floors=tuple(floors),
            subset_min=max(v[0] for v in vectors),
            glm_ratio=min(v[1] for v in vectors) / _SCALE,
            levels_max=min(v[2] for v in vectors),
            levels_density=min(v[3] for v in vectors) / _SCALE,
            noise=max(v[4] for v in vectors) / _SCALE,
            magnitude=max(v[5] for v in vectors) / _SCALE,
        )

    @classmethod
    def local(
        cls, query_min_count: int | None, floors: list[int], rules: list[DisclosureRules]
    ) -> AppliedRules:
        """The same combination in plaintext (oracles, the coordinator's prediction)."""
        return cls.strictest(query_min_count, floors, [r.vector() for r in rules])

    def describe(self) -> dict[str, Any]:
        return {
            "min_count": self.threshold,
            "site_floors": list(self.floors),
            "subset_min": self.subset_min,
            "glm_ratio": self.glm_ratio,
            "levels_max": self.levels_max,
            "levels_density": self.levels_density,
            "noise": self.noise,
            "magnitude": self.magnitude,
        }


async def agree_rules(mpc: Any, job: PartyJob, query_min_count: int | None) -> AppliedRules:
    """Open every party's floor and rules (public policy, one round) and combine them."""
    from smpc.encoding import KEY_BITS

    secint = mpc.SecInt(KEY_BITS)
    mine = [job.min_count_floor, *job.rules.vector()]
    shares = mpc.input([secint(v) for v in mine])
    opened = await mpc.output([x for party in shares for x in party])
    width = len(mine)
    vectors = [[int(v) for v in opened[i : i + width]] for i in range(0, len(opened), width)]
    floors = [v[0] for v in vectors]
    return AppliedRules.strictest(query_min_count, floors, [v[1:] for v in vectors])


async def prelude(mpc: Any, statistic: SecureStatistic, job: PartyJob) -> AppliedRules:
    """What every protocol does first: agree on the rules (`agree_rules`), then decide inside
    MPC, on the parties' pooled `selection` counts (`SecureStatistic.selection`), whether the
    query may run at all. Opens one bit per rule, the same at every party; raises
    `DisclosureRefused` naming the rule (never a node, a count or a value) when one fails.

    - inputs rule, decided first: every site's selection is consistent and within the row
      count it declared for the dataset (`selection_declared`); the other rules' bits are
      computed alongside and opened only when it passed, so they show nothing when it fails;
    - row rule: no selected row at any site breaks the statistic's own row rule (an outcome
      not 0/1, a time off the grid): the pooled number of such rows is 0;
    - subset rule (with `where`): the selection and its complement each hold ≥ subset_min rows;
    - levels rule: the statistic's largest number of levels ≤ levels_max (public) and
      ≤ levels_density · n (n: the rows entering the statistic);
    - model rule: the model's parameters ≤ glm_ratio · n.
    """
    from smpc.encoding import KEY_BITS
    from smpc.protocol import at_least
    from smpc.soon import soon

    rules = await agree_rules(mpc, job, statistic.query.min_count)
    levels = statistic.level_count()
    if levels > rules.levels_max:
        raise DisclosureRefused(
            f"{statistic.name}: a grouping or categorical column has {levels} levels; the "
            f"nodes' policy allows at most {rules.levels_max} (levels_max)",
            {"rule": "levels_max"},
        )
    secint = mpc.SecInt(KEY_BITS)
    selection = job.summary.selection or [0, 0, 0, 0]
    shares = mpc.input(secint.array(np.array(selection, dtype=object)))
    inputs = soon(lambda: selection_declared(mpc, secint, shares, selection, statistic.schema))
    rows, selected, entering, broken = functools.reduce(operator.add, shares)
    # the rows rule is a zero test of the pooled broken rows; every other rule is
    # [value ≥ bound] on the pooled selection: one vectorised comparison, its bits computed
    # alongside the inputs' check; nothing is opened unless that check passed
    values, bounds, names = [], [], []
    if statistic.query.where:
        values += [selected, rows - selected]
        bounds += [rules.subset_min, rules.subset_min]
        names.append("subset")
    if levels > 1:
        values.append(entering)
        bounds.append(math.ceil(levels / rules.levels_density))
        names.append("levels")
    parameters = statistic.parameters()
    if parameters:
        values.append(entering)
        bounds.append(math.ceil(parameters / rules.glm_ratio))
        names.append("model")
    bits = None
    if values:
        # checked pooled counts are below 2**width; a bound beyond it is clamped to it (a
        # count fails it either way), so |value − bound| ≤ 2**width
        width = _POOLED_BITS + len(mpc.parties).bit_length()
        clamped = np.array([min(b, 1 << width) for b in bounds], dtype=object)
        bits = at_least(mpc, mpc.np_fromlist(values), clamped, width + 1)
        if "subset" in names:  # the selection and its complement: one rule, both must hold
            bits = mpc.np_concatenate((bits[:1] * bits[1:2], bits[2:]))
    if not await inputs:
        if bits is not None:  # every party ends the comparisons it started, nothing opened
            await mpc.gather(bits)
        raise DisclosureRefused(_REFUSALS["inputs"](statistic, rules), {"rule": "inputs"})
    if not await mpc.is_zero_public(broken):
        if bits is not None:
            await mpc.gather(bits)
        raise DisclosureRefused(_REFUSALS["rows"](statistic, rules), {"rule": "rows"})
    if bits is not None:
        for name, bit in zip(names, await mpc.output(bits), strict=True):
            if not int(bit):
                raise DisclosureRefused(_REFUSALS[name](statistic, rules), {"rule": name})
    statistic.rules = rules
    return rules


def declared_rows(schema: DatasetSchema) -> int:
    """The row count this party declares for its dataset (`DatasetSchema.rows`); an
    undeclared one counts as `MAX_ROWS`, the most the secure comparisons are sized for."""
    return MAX_ROWS if schema.rows is None else schema.rows


async def selection_declared(
    mpc: Any, secint: Any, sites: list[Any], own: list[int], schema: DatasetSchema
) -> bool:
    """Whether every site's `selection` is consistent and within its declared rows: per site
    0 ≤ broken ≤ entering ≤ selected ≤ rows ≤ that site's declared row count (each party
    inputs its own `declared_rows`), each difference shown in [0, 2**30) by the bits its site
    inputs (`smpc.ranges`). Opens the challenge and the check value (0 unless a site's
    selection breaks its declaration)."""
    from smpc.ranges import all_in_range

    declared = declared_rows(schema)
    limits = mpc.input(secint(declared))

    def differences(limit: Any, rows: Any, selected: Any, entering: Any, broken: Any) -> list[Any]:
        return [limit - rows, rows - selected, selected - entering, entering - broken, broken]

    values = [
        mpc.np_fromlist(differences(limit, *(site[k] for k in range(4))))
        for site, limit in zip(sites, limits, strict=True)
    ]
    mine = np.array(differences(declared, *own), dtype=object)
    return await all_in_range(mpc, secint, values, mine, _POOLED_BITS)


def inputs_refusal(name: str, what: str) -> str:
    """The refusal of a site's inputs that break its declaration (naming no site)."""
    return (
        f"{name}: a site's inputs break its declared schema ({what}; checked inside MPC over "
        "every site's inputs together; which site is not revealed)"
    )


_REFUSALS: dict[str, Callable[[SecureStatistic, AppliedRules], str]] = {
    "inputs": lambda s, r: inputs_refusal(
        s.name,
        "its selected rows are inconsistent or exceed the row count it declared for the dataset",
    ),
    "rows": lambda s, r: (
        f"{s.name}: {s.row_rule} (checked over every site's selected rows "
        "together; which site and which rows are not revealed)"
    ),
    "subset": lambda s, r: (
        f"{s.name}: the 'where' selection, or the rows it leaves out, holds "
        f"fewer than {r.subset_min} rows over all sites (subset_min: a selection and its "
        "complement must each be large enough that comparing them reveals no individual)"
    ),
    "levels": lambda s, r: (
        f"{s.name}: a grouping or categorical column has more levels than "
        f"{r.levels_density:g} of the rows (levels_density)"
    ),
    "model": lambda s, r: (
        f"{s.name}: the model has {s.parameters()} parameters, more than "
        f"{r.glm_ratio:g} of the rows (glm_ratio)"
    ),
}
