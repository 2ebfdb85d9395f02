"""Privacy-budget arithmetic, the same at the node (its ledger) and the coordinator (its view).

Amounts are the exact decimals people wrote: epsilon 0.1 is 0.1, not the binary float nearest
to it, so that ten queries of epsilon 0.1 spend exactly a budget of 1 (with floats, the sum is
0.9999999999999999 and a tenth query of a budget of 0.3 is refused).

Two accountants run over the same sequence of charges (`Composed`): basic sequential composition
(the sum of the charges' epsilon and the sum of their delta) and zero-concentrated DP (the sum of
their rho). A sequence is within a limit (epsilon_L, delta_L) when at least one of them is:
sum epsilon <= epsilon_L and sum delta <= delta_L, or sum rho <= rho_L, the rho that converts to
(epsilon_L, delta_L) (`rho_budget`). Each accountant is a valid bound on the privacy loss of the
same composed mechanism, so whichever of them is within the limit proves that the whole
sequence is (epsilon_L, delta_L)-DP; see docs/leakage.md, "Accounting".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


# ---- the better of two accountants ----------------------------------------------------------


@dataclass(frozen=True)
class Composed:
    """What a sequence of charges spent by each accountant: zCDP's `rho` (the sum of the
    charges' rho) and basic composition's (`epsilon`, `delta`) (the sums of the (epsilon,
    delta) each charge was asked and is calibrated to meet: a query's epsilon and declared
    delta, a synthesis' request). `epsilon` and `delta` are None where some charge records no
    (epsilon, delta): basic composition then bounds nothing and only zCDP applies."""

    rho: Decimal = ZERO
    epsilon: Decimal | None = ZERO
    delta: Decimal | None = ZERO

    def plus(
        self,
        rho: float | Decimal,
        epsilon: float | Decimal | None,
        delta: float | Decimal | None,
    ) -> Composed:
        """The sequence with one more charge."""
        basic = self.epsilon is not None and self.delta is not None
        basic = basic and epsilon is not None and delta is not None
        return Composed(
            self.rho + exact(rho),
            exact(self.epsilon) + exact(epsilon) if basic else None,  # type: ignore[arg-type]
            exact(self.delta) + exact(delta) if basic else None,  # type: ignore[arg-type]
        )

    def basic_within(
        self, epsilon_limit: float | Decimal, delta_limit: float | None, slack: float = 0.0
    ) -> bool:
        """Whether basic composition proves the sequence (epsilon_limit, delta_limit)-DP."""
        if self.epsilon is None or self.delta is None:
            return False
        tolerance = exact(slack)
        return (
            self.epsilon <= exact(epsilon_limit) + tolerance
            and self.delta <= exact(delta_limit or 0.0) + tolerance
        )

    def zcdp_within(self, rho_limit: float | Decimal, slack: float = 0.0) -> bool:
        """Whether zCDP proves it: its rho is at most the limit's."""
        return self.rho <= exact(rho_limit) + exact(slack)

    def within(
        self,
        epsilon_limit: float | Decimal,
        delta_limit: float | None,
        rho_limit: float | Decimal,
        slack: float = 0.0,
    ) -> bool:
        """Whether at least one accountant proves the sequence within the limit."""
        return self.basic_within(epsilon_limit, delta_limit, slack) or self.zcdp_within(
            rho_limit, slack
        )

    def basic_left(self, epsilon_limit: float | Decimal, delta_limit: float | None) -> Decimal:
        """The epsilon basic composition still affords one more pure query: epsilon_limit less
        what is spent while the delta spent is within delta_limit, else (or where basic
        composition does not apply) 0."""
        if self.epsilon is None or not self.basic_within(epsilon_limit, delta_limit):
            return ZERO
        return left(epsilon_limit, self.epsilon)

    def delta_left(self, delta_limit: float | None) -> Decimal:
        """The delta basic composition has left (0 where it does not apply)."""
        if self.delta is None:
            return ZERO
        return left(delta_limit or 0.0, self.delta)

    def epsilon_remaining(
        self, epsilon_limit: float | Decimal, delta_limit: float | None, rho_limit: float | Decimal
    ) -> float:
        """The largest epsilon one more pure query may have: the better of basic composition's
        `basic_left` and zCDP's sqrt(2 (rho_limit - rho))."""
        return max(
            float(self.basic_left(epsilon_limit, delta_limit)),
            largest_epsilon(left(rho_limit, self.rho)),
        )
