"""What a query costs, from the query and the declared schema alone (no data): its cells and
its secure comparisons.

The coordinator bounds the work one query may ask of every hospital (`docs/api.md`, "Limits")
with these two numbers, before any node is asked; a node could bound its own work the same way.
They are estimates derived from the protocols' code (each statistic's `cost`, beside its
protocol), not measurements:

- **cells**: the values the protocol computes for the result and may open, over every group:
  a histogram's groups × bins, a mean's groups × (n, Σx), a regression's groups × (n,
  coefficients, standard errors, R²), a survival curve's groups × its perturbed tree of node
  sums. Output size, and the number of per-cell protocol steps that follow.
- **comparisons**: the secure comparisons and their equivalents, the non-linear steps that
  dominate a run's CPU and rounds: one comparison with a public or secret value
  (`smpc.protocol.at_least`, MPyC's `np_sgn`, a secure min or max), one bit decomposition of a
  value (`smpc.rounded.low_bits`, `smpc.cellkey.floor_bits`: cell keys, rounding), one biased
  coin of the discrete Laplace sampler (`smpc.dp`), one Legendre PRF bit (`smpc.prf`), one
  rounded ratio's numerator or distinct denominator (`smpc.rounded`). Range proofs by input
  bits (`smpc.ranges`) and linear work are not counted: they are cheap per value. Counted as
  if every cell were released (the worst case: which cells are is known only inside MPC).

The models' field arithmetic (Gauss–Jordan in fields of thousands of bits) is bounded by their
own term limits and not counted here; a logistic regression's Newton steps are counted at
`NEWTON_STEPS_ESTIMATE` (typical; at most 35).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smpc.dp import NoiseSpec
    from smpc.statistics.base import SecureStatistic

NEWTON_STEPS_ESTIMATE = 8  # a logistic regression's usual iterations (statsmodels: 4–8)


@dataclass(frozen=True)
class QueryCost:
    """A query's estimated cost (module docstring): cells and secure comparisons."""

    cells: int
    comparisons: int

    def to_json(self) -> dict[str, int]:
        return {"cells": self.cells, "comparisons": self.comparisons}


def prelude_comparisons(statistic: SecureStatistic) -> int:
    """The prelude's rule comparisons (`smpc.disclosure.prelude`): the selection and its
    complement with `where`, the levels rule, the model rule."""
    return (
        2 * bool(statistic.query.where)
        + (statistic.level_count() > 1)
        + (statistic.parameters() > 0)
    )


def key_decompositions(units: int) -> int:
    """Cell-key perturbation of `units` cells or unions (`smpc.protocol.cell_perturbation`):
    the bit decomposition of each one's two pooled key sums."""
    return 2 * units


def noise_coins(spec: NoiseSpec, values: int, one_sided: bool = False) -> int:
    """Biased coins of `values` discrete Laplace samples of one kind (`smpc.dp`): B − h per
    geometric variable, two variables a sample (one when one-sided)."""
    return values * (1 if one_sided else 2) * (spec.bits - spec.fair_digits)


def rounded_ratios(numerators: int, denominators: int) -> int:
    """Ratios opened rounded (`smpc.rounded.open_rounded_ratios`): one normalisation per
    distinct denominator, one rounding per numerator."""
    return numerators + denominators
