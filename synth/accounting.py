"""Privacy accounting for the differentially private generators, in zero-concentrated DP.

A generator is given a target (ε, δ). `rho_for(epsilon, delta)` is the largest ρ whose zCDP
guarantee converts to (ε, δ)-DP; the generator then spends that ρ across its mechanisms,
recording each spend in a `ZCDPAccountant`, which refuses to spend beyond it. The ε a model
reports is `epsilon_for(accountant.spent, delta)`: converted from what was actually spent, not
copied from what was asked (a test recomputes it from the recorded noise scales).

Mechanisms, on the add/remove-one-record neighbouring relation:

- the Gaussian mechanism with L2 sensitivity Δ and noise σ is ρ = Δ² / (2σ²)-zCDP;
- the exponential mechanism with parameter ε (utility sensitivity Δ, probabilities
  ∝ exp(ε·u / (2Δ))) is ε²/8-zCDP (Cesar and Rogers, 2021);
- the distributed discrete Gaussian mechanism (a pooled measurement, `synth.pooled`): each of
  m parties adds discrete Gaussian noise of variance parameter s² to its integer counts, and a
  coalition of up to t parties knows its own; the other h = m − t parties' noise makes adding
  the sum ρ = Δ²/(2·h·s²) + τ·d/4 -zCDP, τ the Kairouz–Liu–Steinke slack of `smpc.noise`
  (d cells);
- zCDP composes by adding ρ.

The conversion from ρ-zCDP to (ε, δ)-DP is the tight one of Canonne, Kamath and Steinke
(2020, Proposition 12 via its Rényi-divergence form): δ = min over α > 1 of
exp((α−1)(αρ − ε)) / (α−1) · (1 − 1/α)^α. It is never worse than the classic
ε = ρ + 2√(ρ log(1/δ)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

from smpc.noise import honest, share_variance, sum_rho
from tessera.errors import InvalidRequest

_BISECTIONS = 200


def delta_for(rho: float, epsilon: float) -> float:
    """The smallest δ with ρ-zCDP ⇒ (ε, δ)-DP (the tight conversion of the module doc)."""
    if rho < 0 or epsilon < 0:
        raise ValueError("rho and epsilon must be non-negative")
    if rho == 0:
        return 0.0
    # The exponent is convex in α: bisect on its derivative.
    low, high = _bisect(
        lambda a: (2 * a - 1) * rho - epsilon + math.log1p(-1.0 / a) < 0,
        1.0 + 1e-9,
        max(2.0, (epsilon + 1.0) / (2.0 * rho) + 2.0),
    )
    alpha = (low + high) / 2
    exponent = (alpha - 1) * (alpha * rho - epsilon) + alpha * math.log1p(-1.0 / alpha)
    return min(1.0, math.exp(exponent) / (alpha - 1))


def epsilon_for(rho: float, delta: float) -> float:
    """The smallest ε with ρ-zCDP ⇒ (ε, δ)-DP."""
    if not 0 < delta < 1:
        raise ValueError("delta must lie in (0, 1)")
    if rho <= 0:
        return 0.0
    return _bisect(
        lambda eps: delta_for(rho, eps) > delta, 0.0, rho + 2 * math.sqrt(rho * math.log(1 / delta))
    )[1]


def rho_for(epsilon: float, delta: float) -> float:
    """The largest ρ whose zCDP guarantee gives (ε, δ)-DP."""
    if not epsilon > 0:
        raise InvalidRequest("epsilon must be positive")
    if not 0 < delta < 1:
        raise InvalidRequest("delta must lie strictly between 0 and 1")
    return _bisect(lambda rho: epsilon_for(rho, delta) <= epsilon, 0.0, epsilon + 1.0)[0]


def _bisect(below: Callable[[float], bool], low: float, high: float) -> tuple[float, float]:
    """The bracket [low, high] around where `below` turns from true to false, after
    `_BISECTIONS` halvings (`below(low)` stays true, `below(high)` false), or as soon as no
    float lies between them: a halving then changes nothing, so stopping gives the very bracket
    the remaining halvings would (in about 60 steps instead of 200, at every level of the
    nested searches of `rho_for`)."""
    for _ in range(_BISECTIONS):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if below(middle):
            low = middle
        else:
            high = middle
    return low, high


def gaussian_sigma(rho: float, sensitivity: float = 1.0) -> float:
    """The noise σ of a Gaussian mechanism that spends exactly `rho`."""
    if rho <= 0:
        raise ValueError("rho must be positive")
    return sensitivity / math.sqrt(2 * rho)


def gaussian_rho(sigma: float, sensitivity: float = 1.0) -> float:
    return sensitivity**2 / (2 * sigma**2)


def exponential_epsilon(rho: float) -> float:
    """The ε of an exponential mechanism that spends exactly `rho` (ρ = ε²/8)."""
    return math.sqrt(8 * rho)


def exponential_rho(epsilon: float) -> float:
    return epsilon**2 / 8


@dataclass(frozen=True)
class Spend:
    """One mechanism run: what it measured, how, with which parameter, and its ρ."""

    mechanism: str  # "gaussian", "exponential" or "distributed-gaussian"
    measured: str  # e.g. "marginal age" or "select pair 3"
    rho: float
    sigma: float | None = None  # gaussian: the noise scale
    epsilon: float | None = None  # exponential: its parameter
    sensitivity: float = 1.0
    # distributed-gaussian: each party's variance parameter (a fraction, as text), the parties
    # whose noise a coalition does not know, and the cells of the measurement
    share_variance: str | None = None
    honest_parties: int | None = None
    cells: int | None = None


@dataclass
class ZCDPAccountant:
    """What a generator may spend (`budget`, ρ) and what it spent, mechanism by mechanism."""

    budget: float
    spends: list[Spend] = field(default_factory=list)

    @property
    def spent(self) -> float:
        return math.fsum(s.rho for s in self.spends)

    @property
    def remaining(self) -> float:
        return max(0.0, self.budget - self.spent)

    def _spend(self, entry: Spend) -> None:
        if entry.rho <= 0:
            raise ValueError("a mechanism must spend a positive rho")
        if self.spent + entry.rho > self.budget * (1 + 1e-9):
            raise RuntimeError(
                f"{entry.measured}: spending rho {entry.rho:.3g} would exceed the budget "
                f"({self.spent:.3g} of {self.budget:.3g} spent)"
            )
        self.spends.append(entry)

    def gaussian(self, measured: str, rho: float, sensitivity: float = 1.0) -> float:
        """Record a Gaussian measurement spending `rho`; returns its noise σ."""
        sigma = gaussian_sigma(rho, sensitivity)
        self._spend(Spend("gaussian", measured, rho, sigma=sigma, sensitivity=sensitivity))
        return sigma

    def distributed_gaussian(
        self, measured: str, rho: float, parties: int, cells: int
    ) -> tuple[Fraction, float]:
        """Record a pooled measurement of `cells` counts (sensitivity 1) by `parties` parties,
        each adding its own discrete Gaussian share (`smpc.noise`), spending at most `rho`.
        Returns each party's variance parameter and σ, the scale the honest parties' noise
        alone reaches. The spend records what it actually costs (a share never goes below
        `smpc.noise.MIN_SHARE_SIGMA`, so it may cost less than `rho`)."""
        sigma = gaussian_sigma(rho)
        variance = share_variance(sigma, parties)
        shares = honest(parties)
        spent = sum_rho(variance, shares, cells)
        self._spend(
            Spend(
                "distributed-gaussian",
                measured,
                spent,
                sigma=math.sqrt(shares * float(variance)),
                share_variance=str(variance),
                honest_parties=shares,
                cells=cells,
            )
        )
        return variance, math.sqrt(shares * float(variance))

    def exponential(self, measured: str, rho: float, sensitivity: float = 1.0) -> float:
        """Record an exponential-mechanism selection spending `rho`; returns its ε."""
        epsilon = exponential_epsilon(rho)
        self._spend(Spend("exponential", measured, rho, epsilon=epsilon, sensitivity=sensitivity))
        return epsilon

    def to_json(self) -> dict[str, Any]:
        return {"budget_rho": self.budget, "spends": [asdict(s) for s in self.spends]}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ZCDPAccountant:
        return cls(raw["budget_rho"], [Spend(**s) for s in raw.get("spends", [])])


def rho_of_spends(spends: list[dict[str, Any]]) -> float:
    """ρ recomputed from recorded mechanisms' own parameters (σ, ε, Δ), not their `rho`
    field: what an auditor checks a model's reported ε against."""
    total = 0.0
    for s in spends:
        if s["mechanism"] == "gaussian":
            total += gaussian_rho(s["sigma"], s.get("sensitivity", 1.0))
        elif s["mechanism"] == "exponential":
            total += exponential_rho(s["epsilon"])
        elif s["mechanism"] == "distributed-gaussian":
            total += sum_rho(
                Fraction(s["share_variance"]),
                s["honest_parties"],
                s["cells"],
                s.get("sensitivity", 1.0),
            )
        else:
            raise ValueError(f"unknown mechanism {s['mechanism']!r}")
    return total
