"""Generic building blocks of MPC protocols on MPyC, shared by the statistics.

Each runs inside a party process with the MPyC runtime `mpc` started (every party calls it in
lock step with the same public arguments) and states what it opens:

- `to_fixed`: secure integers scaled by 2^scale as secure fixed-point numbers (opens nothing);
- `quadratic_form`: zᵀ V⁻¹ z by Gaussian elimination with a secret "every pivot is at least
  `floor`" bit (opens nothing; the caller opens what it must).
"""

from __future__ import annotations

from typing import Any


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
