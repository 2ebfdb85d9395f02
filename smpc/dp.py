"""Differential privacy inside MPC: discrete Laplace noise that no party knows.

A query with ``dp: {"epsilon": ε, "delta": δ}`` (the statistics whose class sets `supports_dp`:
`count`, `sum`, `mean`, `variance`, `quantile`, `histogram`, `crosstab`, `correlation`,
`linear_regression`, with `where` and `group_by`, and `kaplan_meier`, on its per-step event and
censoring counts) gets calibrated noise added to its pooled, secret-shared cell values *before*
anything is opened. The noise is drawn jointly inside MPC from MPyC's pseudorandom secret
sharing (PRSS) and is never opened: no party, and no coalition of at most t parties (t < m/2,
the MPC threshold), learns it or any part of it.

Mechanism: the discrete Laplace (two-sided geometric) mechanism on the integer grid the value
is shared on. A pooled count is an integer (grid 1); a pooled sum is an integer multiple of
2⁻⁴⁰ (`smpc.encoding`'s fixed point; with `dp` each party rounds every clipped *row* to the
grid, so the grid value of the sum is exact and its sensitivity an exact integer). For an
integer-valued query f with L1 sensitivity Δ grid units, releasing f(D) + Z with
P(Z = k) = (1 − α)/(1 + α) · α^|k| and α = exp(−ε/Δ) is ε-differentially private, and since
value and noise live on the same grid there is no floating-point snapping problem (Mironov
2012's attack on the textbook continuous Laplace mechanism does not apply). It was chosen over
the Gaussian mechanism because it is pure ε-DP, its sampler needs only biased coins (no
transcendental function inside MPC), and for counts it is the optimal additive noise among
pure-DP mechanisms (Ghosh, Roughgarden & Sundararajan 2009).

Sampler: Z = X − Y with X, Y independent geometric variables, P(X = x) ∝ αˣ. The B binary
digits of a geometric variable restricted to [0, 2ᴮ) are *independent* Bernoulli variables,
digit i being 1 with probability pᵢ = α^(2ⁱ) / (1 + α^(2ⁱ)) (αˣ factorises over the digits).
So a sample needs 2B biased coins. Coin i is [r < cᵢ] for a secret uniform K-bit integer r
(K PRSS random bits) and the public cᵢ = round(pᵢ · 2ᴷ), compared by Toft's protocol directly
on r's secret bits (`biased_coins`). All coins of all cells of a query are drawn at once, in
one vectorised pass, in a small secure type (`COIN_BITS`: cheap random bits); their signed
digit sums, in chunks of `CHUNK_BITS` digits, are converted to the 128-bit type of the pooled
values (`convert`) and combined there (no interaction).

Fair low digits (sums only). On the 2⁻⁴⁰ grid Δ is huge (2⁴⁶ for a column bounded by 100) and
the low digits' pᵢ are within 2⁻²⁰ of ½, yet each would cost a K-bit coin. The sampler draws
the h lowest digits as plain fair random bits instead, with 2ʰ ≤ Δ/2¹⁰ (`FAIR_MARGIN_BITS`;
h = 0 for counts), and calibrates α = exp(−ε/(Δ + 2ʰ − 1)). Then X = 2ʰ·Q + U with Q geometric
of ratio α^(2ʰ) and U uniform on [0, 2ʰ), and P(X = x + d) ≥ α^(d + 2ʰ − 1)·P(X = x) for all
x, d ≥ 0; hence P(Z = z + d) / P(Z = z) lies in [e^−ε, e^ε] for |d| ≤ Δ (sum over Y, resp. X,
term by term): still pure ε-DP, on the fine grid, with a noise scale at most 2⁻¹⁰ wider. (Z is
a discrete Laplace on the grid 2ʰ·ℤ plus a triangular dither of width 2ʰ.) This halves the
coins of a sum to about a third.

Parameters, for a noisy value that spends ε_s with sensitivity Δ (L = ⌈log₂(1 + e^ε_s)⌉):

- h, the fair low digits: the largest h with 2ʰ ≤ Δ/2¹⁰, or 0;
- B, the digits per geometric: the least B with α^(2ᴮ) ≤ 2^−(67 + L) (the tail cut), of which
  B − h are biased coins;
- K, the bits per coin: K = 66 + L + ⌈log₂ B⌉ (coin probabilities rounded to 2⁻ᴷ);
- the coins' field has order p > 2^(K+32) (a coin's zero test errs with probability < 1/p);
- the query is refused (QueryInvalid) when B > `MAX_NOISE_BITS`, i.e. when ε is so small
  that the noise would not fit the secure integer range.

Exactness, the δ-like slack of the implementation: the truncated, rounded sampler is within
total variation η ≤ 2·α^(2ᴮ) + 2B·2^−(K+1) + 2B/p ≤ 2^−(64+L) of the ideal law, so a
noisy value is (ε_s, (1 + e^ε_s)·η)-DP with (1 + e^ε_s)·η ≤ 2⁻⁶⁴. A neighbouring dataset
changes at most two noisy values (a mean's count and sum), so the implementation is
(ε, 2⁻⁶³)-DP where the ideal mechanism is pure ε-DP. That 2⁻⁶³ ≈ 1.1e-19 is not drawn from
the query's δ: the mechanism uses no δ; the query's δ is reported with the result and charged
by the node's budget ledger as declared. As everywhere in Tessera, the MPC part is secure
against at most t semi-honest parties with MPyC's statistical masking (k = 30 bits) in
comparisons and conversions, and the PRSS randomness is pseudorandom (the noise is hidden
computationally).

Sensitivity and the ε split. Neighbouring datasets differ by adding or removing one row (of
the union of all parties' rows). A row lands in at most one cell, so cells compose in
parallel: the whole table, every group of a `group_by` and every bin included, spends ε once.

- count, histogram, crosstab: one noisy value per cell, the count, Δ = 1, ε_s = ε.
- kaplan_meier: one noisy count per group, grid step and kind (event or censoring); a row
  leaves at one step, as one kind: Δ = 1, ε_s = ε (`smpc.statistics.kaplan_meier`).
- sum, mean: two per cell, the count (Δ = 1) and Σx of x clipped to the declared [min, max]
  (Δ = max(|round(min·2⁴⁰)|, |round(max·2⁴⁰)|) grid units), ε_s = ε/2 each (sequential
  composition: ε/2 + ε/2 = ε).

- correlation, linear_regression: the noisy sufficient statistics, every distinct entry of the
  Gram matrix of [1, terms…] (the outcome last): n (Δ = 1) and each Σ zᵢzⱼ of terms clipped
  to their declared bounds, a numeric term centred at its range's midpoint first, each row's
  product rounded to the grid (Δ = round(Mᵢ·Mⱼ·2⁴⁰), Mᵢ the largest |value| of the clipped,
  centred term: half its declared range; 1 for a 0/1 term). Entries fixed by others are not
  noised (a 0/1 term's Σz² is its Σz; two levels of one categorical never meet: 0). ε is split
  evenly over the K noised entries, ε/K each (sequential composition): every entry's noise is
  then the same K/ε in units of its own sensitivity (`smpc.statistics.gram`).

Selection (quantile). A quantile is not released with additive noise but chosen among the
bins of the declared range by report-noisy-max: utilities u_j of sensitivity Δ, one-sided
geometric noise X_j (`discrete_laplace(..., one_sided=True)`, P(X = x) ∝ αˣ with
α = exp(−ε/(2Δ))) added to each inside MPC, and only the index of the largest noisy utility
(ties to the lowest index) opened. Proof: fix every X_k but X_i; bin i wins iff X_i ≥ r*, and
r* moves by at most 2Δ between neighbours (every u_k by at most Δ); P(X ≥ r + 2Δ) ≥
e^−ε·P(X ≥ r) for every integer r, so P(i) changes by at most e^ε either way. It is the
discrete analogue of report-noisy-max with exponential noise (McKenna & Sheldon 2020:
permute-and-flip, never worse than the exponential mechanism); details and the utility in
`smpc.statistics.quantile`.

Post-processing (no further ε): `min_count` compares the *noisy* count with the threshold
inside MPC; released counts are reported as max(0, ñ) and `n` is the sum of released counts;
a mean is the noisy Σx over the noisy n, clamped into [min, max]; a variance is clamped into
[0, ((max − min)/2)²·n/(n − 1)]; a noisy Gram matrix (correlation, linear_regression) has its
eigenvalues, in units of the terms' reaches, raised to at least the noise scale b = K/ε, so it
is positive definite before r or the coefficients are computed from it. The `noise_scale` reported
with a result is b = (Δ + 2ʰ − 1)/ε_s in the result's units (Δ/ε_s for counts), the scale of
the Laplace distribution the noise approximates (standard deviation √(2α)/(1 − α) ≈ √2·b).

Cost: 2(B − h) coins per noisy value, each K + 1 random bits and K secure multiplications in
⌈log₂(K + 1)⌉ rounds, plus 2h fair random bits, all vectorised: a count at ε = 1 takes 12
coins of K = 71 bits; the Σx of a column bounded by 100 at ε/2 = 0.5 takes 2·18 coins and 72
fair bits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction
from functools import cached_property
from typing import Any

import numpy as np

from smpc.encoding import FRAC_BITS, MOMENT_LIMIT
from tessera.errors import QueryInvalid
from tessera.schemas import ColumnSpec

MECHANISM = "discrete_laplace"
SLACK_BITS = 64  # each noisy value is (ε_s, 2^-SLACK_BITS)-DP; see the module docstring
MAX_NOISE_BITS = 80  # |noise| < 2^80 grid units: counts stay far inside the secure range
COMPARE_BITS = 84  # noisy counts and thresholds (capped at 2^81) fit in 84-bit comparisons
GRID = Fraction(1, 1 << FRAC_BITS)
COIN_BITS = 32  # the coins' secure type has max(COIN_BITS, K) bits (a field above 2^(K+32))
FAIR_MARGIN_BITS = 10  # fair low digits widen the noise by at most 2^-10 of its scale
CHUNK_BITS = 24  # digits summed in the small type before conversion (|sum| < 2^24)
COIN_BATCH = 4096  # coins drawn at once (about 300 000 random bits in memory)


def column_bounds(spec: ColumnSpec) -> tuple[float, float] | None:
    """The declared [min, max] of a numeric column (booleans are [0, 1]); None if undeclared."""
    if spec.type == "boolean":
        return (0.0, 1.0)
    if spec.min is None or spec.max is None:
        return None
    if not (math.isfinite(spec.min) and math.isfinite(spec.max)):
        return None
    return (float(spec.min), float(spec.max))


def grid_value(value: float) -> int:
    """A value on the fixed-point grid, as the party rounds each clipped row."""
    return round(math.ldexp(value, FRAC_BITS))


def grid_sum(values: np.ndarray) -> int:
    """Σ round(x · 2⁴⁰) over (clipped) rows, exactly; OverflowError outside the secure range."""
    grid = np.rint(np.ldexp(np.asarray(values, dtype=float), FRAC_BITS))
    total = sum(map(int, grid.tolist()))
    if abs(total) >= MOMENT_LIMIT << FRAC_BITS:
        raise OverflowError(  # the limit only: never a hospital's own sum in a message
            "a local sum is outside the secure fixed-point range; rescale the column"
        )
    return total


def sum_sensitivity(bounds: tuple[float, float]) -> int:
    """L1 sensitivity of a clipped, per-row-rounded sum, in grid units (at least 1)."""
    lo, hi = bounds
    return max(abs(grid_value(lo)), abs(grid_value(hi)), 1)


def product_sensitivity(first: float, second: float) -> int:
    """L1 sensitivity of Σ x·y over rows with |x| ≤ first and |y| ≤ second, each row's product
    rounded to the grid (rounding is monotone, so no row's |round(x·y·2⁴⁰)| exceeds it)."""
    return max(grid_value(abs(first) * abs(second)), 1)


def square_sensitivity(bounds: tuple[float, float]) -> int:
    """L1 sensitivity of a sum of clipped squares, each rounded to the grid (at least 1)."""
    lo, hi = bounds
    return max(grid_value(lo * lo), grid_value(hi * hi), 1)


@dataclass(frozen=True)
class NoiseSpec:
    """One kind of noisy value: ε spent on it, its sensitivity, and its grid."""

    epsilon: float
    sensitivity: int  # grid units
    unit: Fraction = Fraction(1)  # one grid unit in the result's units (counts 1, sums 2^-40)

    def __post_init__(self) -> None:
        self.bits  # noqa: B018  # refuses (QueryInvalid) an ε too small for the secure range

    @cached_property
    def fair_digits(self) -> int:
        """h: the low digits drawn as fair bits, 2^h ≤ Δ / 2^FAIR_MARGIN_BITS (0 for counts)."""
        return max(0, self.sensitivity.bit_length() - 1 - FAIR_MARGIN_BITS)

    @cached_property
    def width(self) -> int:
        """Δ + 2^h − 1: the shift the noise's law is calibrated for (Δ itself when h = 0)."""
        return self.sensitivity + (1 << self.fair_digits) - 1

    @cached_property
    def _slack(self) -> int:
        """L = ⌈log₂(1 + e^ε)⌉: the extra bits that keep (1 + e^ε)·η below 2^-64."""
        return math.ceil(self.epsilon / math.log(2) + math.log2(1 + math.exp(-self.epsilon)))

    @cached_property
    def bits(self) -> int:
        """B: binary digits per geometric variable (the tail beyond 2^B is cut)."""
        with localcontext() as ctx:
            ctx.prec = 60
            rate = Decimal(self.epsilon) / Decimal(self.width)  # -ln α
            need = Decimal(SLACK_BITS + 3 + self._slack) * Decimal(2).ln()  # -ln(tail)
            b = max(1, math.ceil(math.log2(float(need / rate))))
            while rate * (1 << b) < need:
                b += 1
            while b > 1 and rate * (1 << (b - 1)) >= need:
                b -= 1
        if b > MAX_NOISE_BITS:
            raise QueryInvalid(
                f"dp: epsilon {self.epsilon:g} is too small for a sensitivity of "
                f"{float(self.sensitivity * self.unit):g}: the noise would exceed the secure "
                "integer range",
                {"field": "dp.epsilon"},
            )
        return b

    @cached_property
    def precision(self) -> int:
        """K: random bits per coin (coin probabilities are rounded to multiples of 2^-K)."""
        return SLACK_BITS + 2 + self._slack + math.ceil(math.log2(self.bits))

    def thresholds(self, precision: int) -> list[int]:
        """cᵢ = round(pᵢ · 2^precision) for each biased digit i ≥ h: coin i is 1 iff r < cᵢ."""
        out = []
        with localcontext() as ctx:
            ctx.prec = precision // 3 + 40
            rate = Decimal(self.epsilon) / Decimal(self.width)
            for i in range(self.fair_digits, self.bits):
                a = (-(rate * (1 << i))).exp()
                p = a / (1 + a)
                out.append(int((p * (1 << precision)).to_integral_value(ROUND_HALF_EVEN)))
        return out

    @property
    def alpha(self) -> float:
        return math.exp(-self.epsilon / self.width)

    @property
    def scale(self) -> float:
        """b = (Δ + 2^h − 1)/ε in the result's units (the Laplace scale the noise approximates)."""
        return float(self.width * self.unit) / self.epsilon

    @property
    def variance(self) -> float:
        """Variance of the (untruncated) noise in the result's units.

        2·Var(X) with X = 2^h·Q + U: Q geometric of ratio β = α^(2^h), U uniform on [0, 2^h);
        2α/(1 − α)² when h = 0.
        """
        step = 1 << self.fair_digits
        beta = math.exp(-self.epsilon * step / self.width)
        geometric = beta / (-math.expm1(-self.epsilon * step / self.width)) ** 2
        return 2 * (step**2 * geometric + (step**2 - 1) / 12) * float(self.unit) ** 2


def noise_plan(
    epsilon: float, moments: Sequence[str], bounds: tuple[float, float] | None
) -> dict[str, NoiseSpec]:
    """The noisy values of each cell and the ε each spends (they add up to ε).

    Counts only: the count gets ε. With a sum: the count and Σx get ε/2 each; with a sum of
    squares too (the variance's sufficient statistics), the count, Σx and Σx² get ε/3 each
    (sequential composition within the cell; cells compose in parallel).
    """
    if not moments:
        return {"count": NoiseSpec(epsilon, 1)}
    if tuple(moments) not in (("sum",), ("sum", "sumsq")) or bounds is None:
        raise QueryInvalid("dp: only counts and bounded sums can be made differentially private")
    share = epsilon / (1 + len(moments))
    plan = {"count": NoiseSpec(share, 1), "sum": NoiseSpec(share, sum_sensitivity(bounds), GRID)}
    if "sumsq" in moments:
        plan["sumsq"] = NoiseSpec(share, square_sensitivity(bounds), GRID)
    return plan


def sample(spec: NoiseSpec, size: int, rng: np.random.Generator) -> list[int]:
    """The plaintext twin of `discrete_laplace` (tests only): `size` draws, in grid units, of
    X − Y with X = 2ʰ·Q + U, Q geometric of ratio α^(2ʰ) and U uniform on [0, 2ʰ) (the law the
    MPC sampler draws, without its 2⁻⁶⁴ truncation)."""
    step = 1 << spec.fair_digits
    success = -math.expm1(-spec.epsilon * step / spec.width)  # 1 − α^(2^h)
    out = []
    for _ in range(2):
        q = rng.geometric(success, size) - 1
        u = rng.integers(0, step, size) if step > 1 else np.zeros(size, dtype=np.int64)
        out.append([int(a) * step + int(b) for a, b in zip(q, u, strict=True)])
    return [x - y for x, y in zip(*out, strict=True)]


def describe(epsilon: float, delta: float, plan: dict[str, NoiseSpec]) -> dict[str, Any]:
    """The result's `dp` entry: what was applied."""
    return {
        "epsilon": epsilon,
        "delta": delta,
        "mechanism": MECHANISM,
        "epsilon_split": {name: spec.epsilon for name, spec in plan.items()},
        "noise_scale": {name: spec.scale for name, spec in plan.items()},
    }


def discrete_laplace(
    mpc: Any, sectype: Any, specs: Sequence[NoiseSpec], *, one_sided: bool = False
) -> Any:
    """One secret discrete Laplace sample per entry of `specs`, as a `sectype` array (not opened).

    With `one_sided`, X alone instead of X − Y: a geometric variable, P(X = x) ∝ αˣ for x ≥ 0
    (half the coins), whose survival function satisfies P(X ≥ t + d) ≥ e^−ε·P(X ≥ t) for all t
    and 0 ≤ d ≤ Δ: the noise of the quantile's report-noisy-max selection.

    Runs inside a party process with the MPyC runtime started; every party calls it with the
    same `specs`. The randomness is MPyC's PRSS random bits: no party knows any coin. The coins
    live in a small secure type (cheap random bits); their signed digit sums, in chunks of
    `CHUNK_BITS` digits, are converted to `sectype` and there combined into the samples.
    """
    if not specs:
        return sectype.array(np.zeros(0, dtype=object))
    sides = 1 if one_sided else 2
    precision = max(s.precision for s in specs)
    small = mpc.SecInt(max(COIN_BITS, precision))  # field order > 2^(K+32): see `biased_coins`
    kinds = {s: s.thresholds(precision) for s in dict.fromkeys(specs)}
    members = {s: [j for j, t in enumerate(specs) if t == s] for s in kinds}
    thresholds = np.concatenate(
        [np.tile(np.array(t * sides, dtype=object), len(members[s])) for s, t in kinds.items()]
    )
    coins = biased_coins(mpc, small, thresholds, precision)
    fair_total = sum(sides * s.fair_digits * len(members[s]) for s in kinds)
    fair = mpc.np_random_bits(small, fair_total) if fair_total else small.array(np.zeros(0))
    chunks, shapes, start, fair_start = [], [], 0, 0
    for s, t in kinds.items():
        rows, h = len(members[s]), s.fair_digits
        n_chunks = -(-s.bits // CHUNK_BITS)
        block = coins[start : start + rows * sides * len(t)].reshape((rows, sides * len(t)))
        chunk = block @ _digit_weights(range(h, s.bits), n_chunks, sides)
        start += rows * sides * len(t)
        if h:
            bits = fair[fair_start : fair_start + rows * sides * h].reshape((rows, sides * h))
            chunk = chunk + bits @ _digit_weights(range(h), n_chunks, sides)
            fair_start += rows * sides * h
        chunks.append(chunk.reshape(-1))
        shapes.append((rows, n_chunks))
    flat = mpc.np_concatenate(chunks) if len(chunks) > 1 else chunks[0]
    big = convert(mpc, flat, sectype)
    samples, at = [], 0
    for rows, n_chunks in shapes:
        scale = np.array([1 << (CHUNK_BITS * c) for c in range(n_chunks)], dtype=object)
        samples.append(big[at : at + rows * n_chunks].reshape((rows, n_chunks)) @ scale)
        at += rows * n_chunks
    noise = mpc.np_concatenate(samples) if len(samples) > 1 else samples[0]
    order = np.argsort(np.concatenate([np.array(members[s]) for s in kinds]), kind="stable")
    return noise[order]


def _digit_weights(digits: range, n_chunks: int, sides: int = 2) -> np.ndarray:
    """Public weights taking [X's digits, Y's digits] to the chunks of X − Y (CHUNK_BITS each);
    X's digits alone to X's chunks when `sides` is 1."""
    weights = np.zeros((sides * len(digits), n_chunks), dtype=object)
    for k, i in enumerate(digits):
        weights[k, i // CHUNK_BITS] = 1 << (i % CHUNK_BITS)
        if sides == 2:
            weights[len(digits) + k, i // CHUNK_BITS] = -(1 << (i % CHUNK_BITS))
    return weights


def convert(mpc: Any, values: Any, sectype: Any) -> Any:
    """A secure integer array in another secure integer type (|values| < 2^(l−1), l its bits).

    As MPyC's `convert`, but on arrays: one PRSS mask R < 2^(k+l) (k = MPyC's statistical
    security parameter) shared in both fields, x + 2^(l−1) + R opened in the source field and R
    subtracted in the target field. Reveals nothing but with statistical distance 2^−k.
    """
    from mpyc import asyncoro, thresha

    source = type(values).sectype
    n = values.size
    if mpc.options.no_prss:
        return sectype.array(np.array(mpc.convert(list(values), sectype), dtype=object))

    @asyncoro.mpc_coro
    async def run():  # type: ignore[no-untyped-def]  # MPyC reads a return annotation
        await asyncoro.returnType((sectype.array, True, (n,)))
        m, t = len(mpc.parties), mpc.threshold
        bits = source.bit_length
        bound = (1 << (mpc.options.sec_param + bits)) // math.comb(m, t) + 1
        prfs, uci = mpc.prfs(bound), mpc._prss_uci()
        mask_source = thresha.np_pseudorandom_share(source.field, m, mpc.pid, prfs, uci, n)
        mask_target = thresha.np_pseudorandom_share(sectype.field, m, mpc.pid, prfs, uci, n)
        x = (await mpc.gather(values)).value.reshape(-1)
        offset = 1 << (bits - 1)
        opened = await mpc.output(source.field.array(x + offset + mask_source.value))
        return sectype.field.array(opened.value - mask_target.value - offset)

    return run()


def biased_coins(mpc: Any, sectype: Any, thresholds: np.ndarray, precision: int) -> Any:
    """Secret coins, coin j being 1 with probability thresholds[j] / 2^precision (each ≥ 1).

    Coin j is [r < cⱼ] for a secret uniform r of `precision` random bits. The comparison with
    the public cⱼ is Toft's (as in MPyC's `np_sgn`, but on bits that are already secret, so no
    masked value is opened): with a secret random sign s and c' = cⱼ − 1, the product
    Πᵢ (s + rᵢ − c'ᵢ + 3·Σ_{k above i} (rₖ ⊕ c'ₖ)) · (s − 1 + 3·Σₖ (rₖ ⊕ c'ₖ)) is zero iff
    r ≤ c' when s = 1, and iff r > c' when s = −1. Only that zero test g is opened, and
    g = coin ⊕ [s = −1] is a uniform bit independent of the coin; then coin = g ? b : 1 − b
    where s = 2b − 1. Cost per coin: precision + 1 random bits and `precision` secure
    multiplications (in ⌈log₂(precision + 1)⌉ rounds), one opened bit. The zero test (MPyC's
    `np_is_zero_public`) masks the product with a random field element, which is zero, and the
    coin wrong, with probability 1/p: the caller picks a field with p > 2^(precision + 32).
    """
    from mpyc import asyncoro

    n = len(thresholds)
    limits = np.asarray(thresholds, dtype=object) - 1
    shifts = np.arange(precision - 1, -1, -1)

    @asyncoro.mpc_coro
    async def coins():  # type: ignore[no-untyped-def]  # MPyC reads a return annotation
        await asyncoro.returnType((sectype.array, True, (n,)))
        field = sectype.field
        out = []
        for start in range(0, n, COIN_BATCH):  # batches one after the other: bounded memory
            c = limits[start : start + COIN_BATCH]
            k = len(c)
            public = np.right_shift.outer(c, shifts).T & 1  # (precision, k), most significant first
            bits = (await mpc.np_random_bits(field, (precision + 1) * k)).value
            sign_bit = bits[-k:]
            secret = bits[: precision * k].reshape((precision, k))
            xor = public + secret - ((public * secret) << 1)
            above = np.cumsum(np.vstack((np.zeros((1, k), dtype=object), xor)), axis=0)
            sign = (sign_bit << 1) - 1
            terms = sign - np.vstack((public - secret, np.ones((1, k), dtype=object))) + 3 * above
            product = mpc.np_prod(sectype.array(field.array(terms)), axis=0)
            zero = await mpc.np_is_zero_public(product)
            out.append(np.where(zero, sign_bit, 1 - sign_bit))
        return field.array(np.concatenate(out))

    return coins()
