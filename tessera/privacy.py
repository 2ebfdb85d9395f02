"""Privacy-budget arithmetic, the same at the node (its ledger) and the coordinator (its view).

Amounts are the exact decimals people wrote: epsilon 0.1 is 0.1, not the binary float nearest
to it, so that ten queries of epsilon 0.1 spend exactly a budget of 1 (with floats, the sum is
0.9999999999999999 and a tenth query of a budget of 0.3 is refused). Composition is basic
sequential composition: what a study spent is the sum of its queries' epsilon, and the sum of
their delta; what is left is the limit less that, never below zero.
"""

from __future__ import annotations

import math
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


# ---- zero-concentrated DP: the node's ledger composes in rho ------------------------------
#
# A query's mechanism is pure epsilon-DP (`smpc.dp`), which is (epsilon^2 / 2)-zCDP; a DP
# generator spends the rho its own accounting gives it (`synth.accounting`). zCDP composes by
# adding rho, and rho-zCDP implies (epsilon, delta)-DP for every delta in (0, 1) with
#
#     epsilon(rho, delta) = rho + 2 * sqrt(rho * ln(1 / delta))          (Bun & Steinke 2016)
#
# so a budget given as (epsilon, delta) is the rho that solves it: with L = ln(1 / delta),
# sqrt(rho) = sqrt(L + epsilon) - sqrt(L), i.e. rho = (epsilon / (sqrt(L + epsilon) + sqrt(L)))^2
# (the same root, without the cancellation). A budget's delta of 0 (a pure-DP budget cannot be
# composed in zCDP) converts at CONVERSION_DELTA.

CONVERSION_DELTA = 1e-6


def conversion_delta(delta: float | None) -> float:
    """The delta a budget converts at: its own, or `CONVERSION_DELTA` where it gives none."""
    return float(delta) if delta else CONVERSION_DELTA


def rho_budget(epsilon: float | Decimal, delta: float | None) -> Decimal:
    """The rho whose zCDP guarantee is exactly (epsilon, delta)-DP by the conversion above."""
    eps = float(exact(epsilon))
    log_inv = math.log(1 / conversion_delta(delta))
    root = eps / (math.sqrt(log_inv + eps) + math.sqrt(log_inv))
    return Decimal(repr(root * root))


def epsilon_of(rho: float | Decimal, delta: float | None) -> float:
    """The epsilon that rho-zCDP gives at `delta` (0 for rho 0), by the conversion above."""
    r = float(exact(rho))
    if r == 0:
        return 0.0
    return r + 2 * math.sqrt(r * math.log(1 / conversion_delta(delta)))


def query_rho(epsilon: float | Decimal) -> Decimal:
    """The rho of a pure epsilon-DP query: epsilon^2 / 2 (exact in decimals: 0.1 -> 0.005)."""
    eps = exact(epsilon)
    return eps * eps / 2


def largest_epsilon(rho: float | Decimal) -> float:
    """The epsilon of the largest pure-DP query that `rho` still affords: sqrt(2 rho)."""
    return math.sqrt(2 * float(exact(rho)))
