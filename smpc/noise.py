"""Distributed Gaussian noise: each party adds its own share of discrete Gaussian noise to its
integer counts before they are secret-shared, so that only noisy sums are ever opened.

Why (measured, docs/performance.md): drawing Gaussian or Laplace noise *inside* MPC costs about
10 ms a cell at 3 parties and 33 ms at 5; the 45 two-way marginals of a 10-column table would
take minutes to tens of minutes. Summing integer vectors that already carry their noise costs a
secure addition a cell: milliseconds for thousands of cells, and nothing per row.

**The sampler** (`discrete_gaussian`) is the exact one of Canonne, Kamath and Steinke (NeurIPS
2020, Algorithms 1–3): rejection from a discrete Laplace, every coin a Bernoulli of a rational
probability drawn with integer arithmetic from the operating system's randomness. No floating
point touches a sample (Mironov's attack on floating-point noise does not apply), and the
variance parameter is a rational number, `Fraction(σ²)` rounded up to 1/1000.

**Calibration** (`share_variance`). With m parties and the MPC threshold t (MPyC's default
t = ⌊(m−1)/2⌋), a coalition of up to t parties knows its own noise shares and can subtract them
from an opened sum; what remains is the sum of the other h = m − t parties' shares. Each party
therefore draws its share with variance σ²/h, where σ is the Gaussian noise scale the privacy
budget calls for, so that the honest parties' noise alone is as wide as central noise would be.
The analyst and the coordinator, who hold no share, see noise of variance m·σ²/h: σ·√(m/h) in
all (√1.5 ≈ 1.22 σ at 3 parties, √(5/3) ≈ 1.29 σ at 5). That excess is the price of the
guarantee against coalitions; generators use the wider scale when they post-process.

**The guarantee** (`sum_rho`). A sum of h independent discrete Gaussians N_ℤ(0, s²) is not a
discrete Gaussian, but it is almost as private: by Kairouz, Liu and Steinke (ICML 2021,
"The distributed discrete Gaussian mechanism", Theorem on sums of discrete Gaussians), for
s ≥ ½ and an integer vector query of L2 sensitivity Δ in d dimensions, adding the sum is
ρ-zCDP with

    ρ = Δ² / (2·h·s²) + τ·d / 4,    τ = 10 · Σ_{k=1}^{h−1} exp(−2π²·s²·k/(k+1)).

The second term is the price of the sum not being exactly Gaussian; with s ≥ `MIN_SHARE_SIGMA`
(2.5) it is below 10⁻²⁵ per cell. A party's noise share never goes below that scale: a
measurement that would need less noise gets this much, and spends less than its share of ρ.

What this guards against: a coalition of at most t semi-honest parties together with the
coordinator and every analyst, across everything opened. A party that deviates (adds no noise,
or a wrong count) lowers no other party's guarantee below that of the honest parties' noise,
but can bias the sums: integrity against malicious parties is outside MPyC's semi-honest model,
as everywhere in Tessera (docs/threat-model.md).
"""

from __future__ import annotations

import math
import secrets
from fractions import Fraction

import numpy as np

MIN_SHARE_SIGMA = 2.5
VARIANCE_DENOMINATOR = 1000


def threshold(parties: int) -> int:
    """MPyC's default threshold: the largest coalition the secret sharing hides from."""
    return (parties - 1) // 2


def honest(parties: int) -> int:
    """How many parties' noise a coalition of at most `threshold` parties does not know."""
    return parties - threshold(parties)


def share_variance(sigma: float, parties: int) -> Fraction:
    """Each party's noise variance for a measurement whose honest parties' noise must have
    standard deviation at least `sigma` (rounded up to a multiple of 1/1000; never below
    `MIN_SHARE_SIGMA`²)."""
    if not sigma > 0:
        raise ValueError("sigma must be positive")
    wanted = max(sigma * sigma / honest(parties), MIN_SHARE_SIGMA**2)
    return Fraction(math.ceil(wanted * VARIANCE_DENOMINATOR), VARIANCE_DENOMINATOR)


def tau(share_var: Fraction | float, shares: int) -> float:
    """The Kairouz–Liu–Steinke slack of a sum of `shares` discrete Gaussians of variance
    parameter `share_var`."""
    s2 = float(share_var)
    return 10.0 * math.fsum(
        math.exp(-2.0 * math.pi**2 * s2 * k / (k + 1)) for k in range(1, shares)
    )


def sum_rho(
    share_var: Fraction | float, shares: int, cells: int, sensitivity: float = 1.0
) -> float:
    """The zCDP ρ of adding the sum of `shares` parties' discrete Gaussian noise (variance
    parameter `share_var` each) to a `cells`-dimensional integer query of L2 `sensitivity`."""
    s2 = float(share_var)
    if s2 < 0.25:
        raise ValueError("the bound needs noise shares of scale at least 1/2")
    return sensitivity**2 / (2.0 * shares * s2) + tau(s2, shares) * cells / 4.0


def opened_sigma(share_var: Fraction | float, parties: int) -> float:
    """The standard deviation of the noise in an opened sum (every party's share): about
    √(share_var · parties) (a discrete Gaussian's variance is at most its parameter)."""
    return math.sqrt(float(share_var) * parties)


# ---- the exact sampler (Canonne, Kamath and Steinke, 2020) ---------------------------------


def _bernoulli(p: Fraction) -> bool:
    return secrets.randbelow(p.denominator) < p.numerator


def _bernoulli_exp_at_most_one(gamma: Fraction) -> bool:
    """Bernoulli(exp(−γ)) for 0 ≤ γ ≤ 1."""
    k = 1
    while _bernoulli(gamma / k):
        k += 1
    return k % 2 == 1


def _bernoulli_exp(gamma: Fraction) -> bool:
    """Bernoulli(exp(−γ)) for γ ≥ 0."""
    whole = math.floor(gamma)
    for _ in range(whole):
        if not _bernoulli_exp_at_most_one(Fraction(1)):
            return False
    return _bernoulli_exp_at_most_one(gamma - whole)


def _discrete_laplace(t: int) -> int:
    """P(x) ∝ exp(−|x|/t) on the integers, for an integer t ≥ 1."""
    while True:
        u = secrets.randbelow(t)
        if not _bernoulli_exp(Fraction(u, t)):
            continue
        v = 0
        while _bernoulli_exp(Fraction(1)):
            v += 1
        x = u + t * v
        negative = secrets.randbelow(2) == 1
        if negative and x == 0:
            continue
        return -x if negative else x


def discrete_gaussian(variance: Fraction, size: int) -> np.ndarray:
    """`size` independent samples of N_ℤ(0, variance): P(x) ∝ exp(−x²/(2·variance))."""
    if variance <= 0:
        raise ValueError("the variance parameter must be positive")
    t = math.floor(math.sqrt(variance)) + 1
    out = np.empty(size, dtype=np.int64)
    for i in range(size):
        while True:
            y = _discrete_laplace(t)
            gamma = (abs(y) - variance / t) ** 2 / (2 * variance)
            if _bernoulli_exp(gamma):
                out[i] = y
                break
    return out
