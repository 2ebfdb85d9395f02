"""Privacy-budget arithmetic, the same at the node (its ledger) and the coordinator (its view).

Amounts are the exact decimals people wrote: epsilon 0.1 is 0.1, not the binary float nearest
to it, so that ten queries of epsilon 0.1 spend exactly a budget of 1 (with floats, the sum is
0.9999999999999999 and a tenth query of a budget of 0.3 is refused). Composition is basic
sequential composition: what a study spent is the sum of its queries' epsilon, and the sum of
their delta; what is left is the limit less that, never below zero.
"""

from __future__ import annotations

from decimal import Decimal

ZERO = Decimal(0)


def exact(value: float | Decimal) -> Decimal:
    """The decimal a person wrote (`repr` of the float), checked to be finite and >= 0."""
    number = value if isinstance(value, Decimal) else Decimal(repr(float(value)))
    if not number.is_finite() or number < 0:
        raise ValueError(f"a privacy amount is a finite number >= 0, not {value!r}")
    return number


def left(limit: float | Decimal, spent: float | Decimal) -> Decimal:
    """What is left of `limit` once `spent` is spent (never below zero)."""
    return max(ZERO, exact(limit) - exact(spent))


def text(number: float | Decimal) -> str:
    """An amount as people write it: 1, 0.25, 0.000001 (no exponent, no trailing zeros)."""
    value = exact(number)
    return format(value.normalize(), "f") if value else "0"
