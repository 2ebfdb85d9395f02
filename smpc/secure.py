"""Generic building blocks of MPC protocols on MPyC, shared by the statistics.

Each runs inside a party process with the MPyC runtime `mpc` started (every party calls it in
lock step with the same public arguments) and states what it opens:

- `prefix_lengths`: per row of a secret matrix whose rows fall below a public threshold from
  some point on, how long each row's leading run at or above it is (a binary search: opens the
  comparison bit at each probed point, a function of the answer);
- `look_up`: f(public + s) for a secret small integer s in [0, spread] and public tables f,
  through the Lagrange basis (opens nothing);
- `to_fixed`: secure integers scaled by 2^scale as secure fixed-point numbers (opens nothing);
- `quadratic_form`: zᵀ V⁻¹ z by Gaussian elimination with a secret "every pivot is at least
  `floor`" bit (opens nothing; the caller opens what it must);
- `rounded_division`: exact integer division rounded half up, in plaintext, for the public
  parts of such computations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np


async def prefix_lengths(
    mpc: Any, values: Any, threshold: int, rows: int, length: int, bits: int
) -> list[int]:
    """Per row r of the secret `values` (flat, `rows` × `length`, each row non-increasing,
    |entry − threshold| < 2**bits), how many leading entries are ≥ `threshold`: a binary
    search per row, all rows probed in one round each. Opens only the bit [entry ≥ threshold]
    at each probed point."""
    low, high = [0] * rows, [length] * rows
    while True:
        active = [r for r in range(rows) if low[r] < high[r]]
        if not active:
            return low
        middle = {r: (low[r] + high[r] + 1) // 2 for r in active}
        probe = np.array([r * length + middle[r] - 1 for r in active], dtype=int)
        below = await mpc.output(mpc.np_sgn(values[probe] - threshold, l=bits, LT=True))
        for r, bit in zip(active, np.asarray(below).ravel(), strict=True):
            if not int(bit):
                low[r] = middle[r]
            else:
                high[r] = middle[r] - 1


def rounded_division(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half up, exactly (positive denominator)."""
    return (2 * numerator + denominator) // (2 * denominator)


def look_up(
    mpc: Any,
    secint: Any,
    s: Any,
    spread: int,
    public: list[int],
    tables: tuple[Callable[[int], int], ...],
) -> list[Any]:
    """Per point i, secret f(public[i] + s_i) for each f in `tables`, s_i secret in [0, spread].

    Through the 0/1 indicator e_j(s) = Π_{i≠j}(s − i) / Π_{i≠j}(j − i) (the Lagrange basis on
    0..spread), in field arithmetic: the suffix products of (s − i) first, then one j at a
    time a running prefix product, e_j, and Σ_j e_j·f(R + j) with public f values (local).
    About 3·spread secure products per point; memory for spread + 1 rows of points.
    """
    points = len(public)
    if spread == 0:
        return [secint.array(np.array([f(r) for r in public], dtype=object)) for f in tables]
    modulus = secint.field.modulus
    suffix: list[Any] = [None] * spread  # suffix[j] = Π_{i>j} (s − i), for j < spread
    suffix[spread - 1] = s - spread
    for j in range(spread - 2, -1, -1):
        suffix[j] = suffix[j + 1] * (s - (j + 1))
    totals: list[Any] = [None] * len(tables)
    prefix: Any = None  # Π_{i<j} (s − i); None stands for the empty product 1
    for j in range(spread + 1):
        if prefix is None:
            product = suffix[j]
        elif j == spread:
            product = prefix
        else:
            product = prefix * suffix[j]
        if j < spread:
            suffix[j] = None
        scale = math.factorial(j) * math.factorial(spread - j) * (-1) ** (spread - j)
        indicator = product * pow(scale % modulus, -1, modulus)
        for k, f in enumerate(tables):
            values = indicator * np.array([f(r + j) for r in public], dtype=object)
            totals[k] = values if totals[k] is None else totals[k] + values
        if j < spread:
            prefix = s if prefix is None else prefix * (s - j)
    assert all(t is not None and t.shape == (points,) for t in totals)
    return totals


def to_fixed(
    mpc: Any, values: Any, scale: int, width: int, fraction_bits: int, fixed_bits: int
) -> list[Any]:
    """Secure integers scaled by 2^scale (|value| < 2^width) as secure fixed-point numbers of
    `fixed_bits` bits, keeping `fraction_bits` fractional bits of the integers' scale."""
    secfxp = mpc.SecFxp(fixed_bits)
    shifted = mpc.np_trunc(values, f=scale - fraction_bits, l=width)
    converted = mpc.convert(mpc.np_tolist(shifted), secfxp)
    return [v * 2.0**-fraction_bits for v in converted]


def quadratic_form(mpc: Any, z: list[Any], v: list[list[Any]], floor: float) -> tuple[Any, Any]:
    """zᵀ V⁻¹ z by Gaussian elimination (V symmetric positive semi-definite, secure fixed
    point), and the secret bit "every pivot ≥ `floor`" (V regular enough to trust the form)."""
    z = list(z)
    v = [list(row) for row in v]
    size = len(z)
    statistic = None
    regular = None
    for k in range(size):
        pivot = v[k][k]
        ok = pivot >= floor
        regular = ok if regular is None else regular * ok
        inverse = 1 / pivot
        term = z[k] * z[k] * inverse
        statistic = term if statistic is None else statistic + term
        for j in range(k + 1, size):
            factor = v[j][k] * inverse
            z[j] = z[j] - factor * z[k]
            for c in range(k + 1, size):
                v[j][c] = v[j][c] - factor * v[k][c]
    return statistic, regular
