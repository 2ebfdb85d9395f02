"""How far the `exact` mode's cell-key perturbation (`smpc.cellkey`) may move a released value
from the true one: the bounds the MPC tests hold `simulate`'s results to, next to the exact
plaintext oracle `smpc.statistics.reference_parties`.

With the default rules (`DisclosureRules`: magnitude and noise 0.25), per released cell:

- a count n' = n + p with p in [−3, 3] (an empty cell stays 0), never below 0;
- a sum Σ' = Σx + u·0.25·M, u in (−1, 1), M the cell's largest |x| (rounded up to 1/256),
  rounded down to 2⁻¹⁶;
- a mean Σ'/n': so mean'·n' is within the sum's bound of Σx;
- a variance (n·Σx² − (Σx)² + u_b·0.25·M²·n) / (n'(n' − 1)), the numerator rounded down to
  2⁻¹⁶: so variance'·n'(n' − 1) is within 0.25·M²·n + 2⁻¹⁶ of n(n − 1)·variance;
- a minimum or maximum moved by u_b·0.25·(declared max − min), rounded down to 2⁻¹⁶;
- quantiles: the midpoint of the fine-grid bin (2¹² bins of the declared range) holding each
  level's value, all levels of a group moved together by u_b·0.25·(declared max − min),
  rounded down to 2⁻¹⁶.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from smpc.statistics.quantile import GRID_BITS
from tessera.errors import TesseraError

COUNT_SHIFT = 3
MAGNITUDE = NOISE = 0.25  # DisclosureRules' defaults
ROUNDING = 2.0**-16
_LARGEST_STEP = 1 / 256  # a cell's largest |x| travels rounded up to 1/256
_SLACK = 1e-9  # fixed-point encoding (2⁻⁴⁰ per party) and float arithmetic


def _values(values: Any) -> np.ndarray:
    out = np.asarray(values, dtype=float)
    return out[~np.isnan(out)]


def largest(values: Any) -> float:
    """The cell's largest |x| as the parties input it: rounded up to 1/256."""
    v = _values(values)
    top = float(np.abs(v).max()) if len(v) else 0.0
    return math.ceil(top / _LARGEST_STEP) * _LARGEST_STEP


def sum_bound(values: Any, magnitude: float = MAGNITUDE) -> float:
    """|Σ' − Σx| is at most this."""
    return magnitude * largest(values) + ROUNDING + _SLACK


def check_count(released: int | None, true: int) -> None:
    assert released is not None, f"a count of {true} was suppressed"
    assert released >= 0 and abs(released - true) <= COUNT_SHIFT, (released, true)
    if true == 0:
        assert released == 0, "an empty cell stays 0"


def check_sum(released: float | None, values: Any, magnitude: float = MAGNITUDE) -> None:
    true = math.fsum(_values(values))
    assert released is not None
    assert abs(released - true) <= sum_bound(values, magnitude), (released, true)


def check_mean(mean: float | None, n: int | None, values: Any) -> None:
    """mean' = Σ'/n', with n' the released count and Σ' within the sum's bound."""
    v = _values(values)
    check_count(n, len(v))
    assert mean is not None and n
    true_sum = math.fsum(v)
    slack = sum_bound(v) + 1e-12 * (abs(true_sum) + 1)
    assert abs(mean * n - true_sum) <= slack, (mean, n, true_sum)
    # so the mean itself is within (sum bound + |mean|·3) / (n − 3) of the true mean
    true_mean = true_sum / len(v)
    if len(v) > COUNT_SHIFT:
        bound = (sum_bound(v) + abs(true_mean) * COUNT_SHIFT) / (len(v) - COUNT_SHIFT)
        assert abs(mean - true_mean) <= bound + 1e-12, (mean, true_mean, bound)


def check_variance(result: dict[str, Any], values: Any, magnitude: float = MAGNITUDE) -> None:
    """A variance result ({"n", "mean", "variance", "std"}, maybe inside a group) against the
    cell's true values."""
    v = _values(values)
    n = len(v)
    check_mean(result["mean"], result["n"], v)
    released = result["n"]
    variance = result["variance"]
    assert variance is not None and variance >= 0
    assert result["std"] == math.sqrt(variance)
    true = n * (n - 1) * float(np.var(v, ddof=1)) if n > 1 else 0.0
    bound = magnitude * largest(v) ** 2 * n + ROUNDING
    scaled = variance * released * (released - 1)
    assert abs(scaled - true) <= bound * (1 + 1e-9) + 1e-9 * (true + 1), (variance, scaled, true)


def check_extreme(
    released: float | None, values: Any, which: str, spread: float, noise: float = NOISE
) -> None:
    """Moved by at most noise·(the column's declared range, `spread`)."""
    v = _values(values)
    true = float(v.min() if which == "min" else v.max())
    assert released is not None
    bound = noise * spread + ROUNDING + _SLACK
    assert abs(released - true) <= bound, (released, true, bound)


def check_quantiles(
    released: dict[str, float | None], expected: dict[str, float], bounds: tuple[float, float]
) -> None:
    """Every level is the midpoint of the fine-grid bin (2^12 bins of the declared range) that
    holds the exact quantile, all moved by the same shift s, |s| at most noise·(declared
    range), then clamped to the declared bounds: so each level's move from the exact value is
    s within half a bin."""
    assert list(released) == list(expected)
    low, high = bounds
    half = (high - low) / 2**GRID_BITS / 2
    inside = [k for k in expected if low < released[k] < high]  # type: ignore[operator]
    shifts = [released[k] - expected[k] for k in inside]  # type: ignore[operator]
    scale = 1e-9 * (1 + max(abs(v) for v in expected.values())) + half
    if shifts:
        # each level's bin midpoint within half a bin of its value, and rounded on its own
        assert max(shifts) - min(shifts) <= 2 * scale + ROUNDING, (shifts, half)
        assert abs(shifts[0]) <= NOISE * (high - low) + ROUNDING + scale, (shifts[0], bounds)
    for k in expected:  # a level at a bound: moved beyond it by a shift within the limit
        if k not in inside:
            assert released[k] in (low, high)
            moved = (shifts[0] if shifts else released[k] - expected[k]) + expected[k]
            limit = 2 * scale + ROUNDING
            assert (moved <= low + limit) if released[k] == low else (moved >= high - limit)


def released_cells(
    site_counts: Sequence[Sequence[int]], threshold: int, floors: Sequence[int]
) -> list[bool]:
    """The per-site threshold rule, per cell: pooled count ≥ T and every site's count 0 or at
    least that site's own floor. `site_counts[i][c]`: party i's count in cell c."""
    cells = zip(*site_counts, strict=True)
    return [
        sum(sites) >= threshold
        and all(c == 0 or c >= f for c, f in zip(sites, floors, strict=True))
        for sites in cells
    ]


def refused(error: TesseraError, rule: str) -> bool:
    """`simulate` failed on a disclosure rule. Every party opens the same refusal bit and
    raises it, but `simulate` reports party 0's error, and party 0 sometimes sees the others
    exit before its own refusal (then it reports a timeout; seen in about 1 run of 3). Until
    the library reports the parties' refusal whichever exits first, accept that timeout."""
    if error.code == "timeout":
        return "timed out" in error.message
    return error.code == "disclosure_refused" and rule in error.message
