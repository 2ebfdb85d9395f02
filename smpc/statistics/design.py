"""Design matrices and Gram matrices: the shared local part of correlation and the regressions.

A *term* is one column of the design: a numeric or boolean column as it is, or, for a
categorical column, one indicator per level except the first in schema order (treatment
coding, named ``column[level]`` as patsy and statsmodels formulas do). Rows with a missing
value in any column the statistic reads are dropped (listwise deletion), at every party alike.

Each party computes its local Gram matrix ZᵀZ of Z = [1, terms…] per group in float64 and
rounds each entry once to the 2⁻⁴⁰ fixed-point grid, so the pooled matrix is exact to about
1e-12 relative per entry whatever the number of rows. A local entry must satisfy
|entry| < 2**50 ≈ 1.1e15 (for example Σx² over 10⁶ rows with |x| < 3·10⁴); larger values are
refused with a clear error asking to rescale the column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from smpc.encoding import FRAC_BITS
from smpc.query import QueryBase
from tessera.errors import QueryInvalid
from tessera.schemas import ColumnName

if TYPE_CHECKING:
    import pandas as pd

    from tessera.schemas import DatasetSchema

LOCAL_ENTRY_BITS = 50  # |a local Gram entry| < 2**50 ≈ 1.1e15 in value units
MAX_PARTY_BITS = 4  # at most 16 parties
ENTRY_BITS = LOCAL_ENTRY_BITS + MAX_PARTY_BITS + 1 + FRAC_BITS  # pooled, scaled (+1: a pseudo-row)
SCALE = 1 << FRAC_BITS
MAX_TERMS = 20  # the secure solver's practical limit on a regression's terms (see docs/queries)


class RegressionQuery(QueryBase):
    """The parameters of a regression: an outcome and its predictors (categorical predictors
    enter as treatment-coded indicators)."""

    outcome: ColumnName
    predictors: list[ColumnName] = Field(min_length=1, max_length=50)

    def statistic_columns(self) -> list[str]:
        return [self.outcome, *self.predictors]


@dataclass(frozen=True)
class Term:
    name: str
    column: str
    level: str | None = None  # the indicator of this categorical level


def terms(schema: DatasetSchema, columns: list[str], statistic: str) -> list[Term]:
    out: list[Term] = []
    for name in columns:
        spec = schema.column(name)
        assert spec is not None
        if spec.type == "categorical":
            levels = spec.group_levels()
            if len(levels) < 2:
                raise QueryInvalid(
                    f"{statistic}: categorical column {name!r} has fewer than two levels",
                    {"column": name},
                )
            out += [Term(f"{name}[{level}]", name, level) for level in levels[1:]]
        else:
            out.append(Term(name, name))
    return out


def check_terms(columns: list[Term], statistic: str) -> None:
    if len(columns) > MAX_TERMS:
        raise QueryInvalid(
            f"{statistic}: {len(columns)} terms (a categorical predictor counts one per level "
            f"but the first); the secure solver supports at most {MAX_TERMS}",
            {"terms": len(columns), "max_terms": MAX_TERMS},
        )


def design(data: pd.DataFrame, columns: list[Term], constant: bool = True) -> np.ndarray:
    """The float64 design matrix [1, terms…] of already selected, complete rows."""
    parts: list[np.ndarray] = [np.ones(len(data))] if constant else []
    for term in columns:
        if term.level is None:
            parts.append(data[term.column].to_numpy(dtype=float))
        else:
            parts.append((data[term.column] == term.level).to_numpy(dtype=float))
    return np.column_stack(parts) if parts else np.empty((len(data), 0))


def triangle_size(k: int) -> int:
    return k * (k + 1) // 2


def encode_gram(matrix: np.ndarray, statistic: str, names: list[str]) -> list[int]:
    """The upper triangle (row-major, diagonal included) as fixed-point integers."""
    k = matrix.shape[0]
    out: list[int] = []
    limit = float(1 << LOCAL_ENTRY_BITS)
    for i in range(k):
        for j in range(i, k):
            v = float(matrix[i, j])
            if not math.isfinite(v) or abs(v) >= limit:
                # The message names the limit, never this hospital's own sum (it may be sent
                # to the coordinator as the node's reason).
                raise QueryInvalid(
                    f"{statistic}: the values of {names[j]!r} are too large for the secure "
                    f"fixed-point range (a local sum of products must stay below {limit:.3g}); "
                    "rescale the column",
                    {"column": names[j]},
                )
            out.append(round(math.ldexp(v, FRAC_BITS)))
    return out


def symmetric_index(k: int) -> np.ndarray:
    """Indices into the upper-triangle vector that rebuild the full k × k matrix."""
    index = np.zeros((k, k), dtype=np.int64)
    position = 0
    for i in range(k):
        for j in range(i, k):
            index[i, j] = index[j, i] = position
            position += 1
    return index


def complete_rows(data: pd.DataFrame, columns: list[str]) -> Any:
    return data[columns].notna().all(axis=1).to_numpy()


# ---- small cells behind a model ---------------------------------------------------------------


@dataclass(frozen=True)
class Indicator:
    """A 0/1 column a model's predictors hold: one level of a categorical predictor (the
    reference level too), or a boolean predictor (level None: the value true)."""

    column: str
    level: str | None


def indicators(schema: DatasetSchema, predictors: list[str]) -> list[Indicator]:
    out: list[Indicator] = []
    for name in predictors:
        spec = schema.column(name)
        assert spec is not None
        if spec.type == "categorical":
            out += [Indicator(name, level) for level in spec.group_levels()]
        elif spec.type == "boolean":
            out.append(Indicator(name, None))
    return out


def indicator_counts(
    data: pd.DataFrame, groups: np.ndarray, size: int, cells: list[Indicator]
) -> list[int]:
    """Per group (outer) and indicator (inner), this party's number of rows where it is 1."""
    out: list[int] = []
    columns = []
    for cell in cells:
        if cell.level is None:
            columns.append(data[cell.column].to_numpy(dtype=float) == 1.0)
        else:
            columns.append((data[cell.column] == cell.level).to_numpy())
    for g in range(size):
        mine = groups == g
        out += [int((column & mine).sum()) for column in columns]
    return out


async def small_cells(
    mpc: Any, counts: Any, local: list[int], shown: list[int], width: int, threshold: int
) -> list[bool]:
    """Per shown group, whether every indicator has at least `threshold` rows with it and at
    least `threshold` without it, pooled over all parties: compared inside MPC, one bit opened
    per group (nothing about which indicator, nor any count)."""
    if not width or threshold <= 0 or not shown:
        return [True] * len(shown)
    from smpc.protocol import COUNT_BITS, at_least, pooled

    ones = pooled(mpc, type(counts).sectype, local)  # in the pooled counts' field
    bits = []
    for g in shown:
        with_it = ones[g * width : (g + 1) * width]
        without = with_it * -1 + counts[g]
        fine = at_least(mpc, with_it, threshold, COUNT_BITS)
        fine = fine * at_least(mpc, without, threshold, COUNT_BITS)
        bits.append(mpc.prod(mpc.np_tolist(fine)))
    opened = await mpc.output(bits)
    return [bool(int(b)) for b in opened]


def small_cells_refusal(statistic: str, threshold: int) -> str:
    return (
        f"{statistic}: a categorical level or boolean predictor has fewer than {threshold} rows "
        f"with it, or fewer than {threshold} without it, over the selected rows of all sites "
        "together (min_count: a model's coefficients would disclose a small cell's rows); which "
        "one, and which site, are not revealed"
    )


def singular_refusal(statistic: str) -> str:
    return (
        f"{statistic}: the design is singular: a predictor (or a categorical level) is (nearly) "
        "a linear combination of the constant and the other predictors over the selected rows "
        "of all sites together; which one, and which site, are not revealed"
    )


# ---- each site's Gram entries against the declared bounds ------------------------------------

BOUND_PAD_BITS = 20  # declared bounds widened by 2**-20 · max(1, |bound|) per row (rounding)


@dataclass(frozen=True)
class EntryLimit:
    """What one site's Gram entries of one term must satisfy, per row of the site's n, on the
    2**-40 grid: low·n ≤ Σx ≤ high·n and 0 ≤ Σx² ≤ square·n (`sum_at`, `square_at`: the
    entries' positions in a group's upper triangle)."""

    sum_at: int
    square_at: int
    low: int
    high: int
    square: int
    width: int  # bits of the largest declared |x|, padded
    term: int = 0  # the term's column in [1, terms…]
    lowest: int = 0  # the declared bounds, padded, scaled 2**8 (rounded outwards)
    highest: int = 0


@dataclass(frozen=True)
class CrossLimit:
    """What one site's Σ xᵢxⱼ of two terms with declared bounds must satisfy, per row of its
    n, on the 2**-40 grid: low·n ≤ Σ xᵢxⱼ ≤ high·n (`at`: the entry's position in a group's
    upper triangle); low and high are the least and greatest products of the padded bounds."""

    at: int
    low: int
    high: int


def cross_limits(limits: list[EntryLimit], terms: int) -> list[CrossLimit]:
    """Per pair of terms in `limits` (of a design [1, terms…]), the limits of their cross
    product: the corners' products of the padded bounds (each scaled 2**40, so a product is
    divided by 2**40 once more), rounded outwards."""
    index = symmetric_index(terms + 1)
    out = []
    for a, first in enumerate(limits):
        for second in limits[a + 1 :]:
            corners = [x * y for x in (first.low, first.high) for y in (second.low, second.high)]
            out.append(
                CrossLimit(
                    at=int(index[first.term, second.term]),
                    low=min(corners) // SCALE,
                    high=-(-max(corners) // SCALE),
                )
            )
    return out


def entry_limits(schema: DatasetSchema, columns: list[Term]) -> list[EntryLimit]:
    """Per term with declared finite bounds (a 0/1 indicator or boolean: [0, 1]) of a design
    [1, terms…], its limits. Each bound is widened by 2**-20·max(1, |bound|) per row: room for
    the local float64 sums and their one rounding, far below any value that moves a result."""
    from smpc.dp import column_bounds

    index = symmetric_index(len(columns) + 1)
    out = []
    for j, term in enumerate(columns, start=1):
        spec = schema.column(term.column)
        assert spec is not None
        bounds = (0.0, 1.0) if term.level is not None else column_bounds(spec)
        if bounds is None:
            continue
        top = max(abs(bounds[0]), abs(bounds[1]))
        pad = Fraction(max(1.0, top)) / (1 << BOUND_PAD_BITS)
        low, high, reach = Fraction(bounds[0]) - pad, Fraction(bounds[1]) + pad, top + pad
        out.append(
            EntryLimit(
                sum_at=int(index[0, j]),
                square_at=int(index[j, j]),
                low=math.floor(low * SCALE),
                high=math.ceil(high * SCALE),
                square=math.ceil(reach * reach * SCALE),
                width=max(1, math.ceil(math.log2(reach + 1))),
                term=j,
                lowest=math.floor(low * 256),
                highest=math.ceil(high * 256),
            )
        )
    return out
