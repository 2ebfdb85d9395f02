"""Ratios of secret big integers, opened only rounded to a published precision.

The statistics that solve equations (regressions, correlation, Welch's t) end with fractions
num / den of secret integers in a large Mersenne field (`smpc.exact`): minors of a Gram matrix,
hundreds to thousands of bits long. Opened exactly, such a fraction gives its reduced numerator
and denominator away, and with them pooled counts that the rules suppress (a t-test's group
sizes, an indicator's level count). `open_rounded_ratios` opens instead

    sign(num/den) · trunc₂₅(|num / den| + β),    0 < β < (2t + 6)·2**-64,

trunc₂₅ keeping 25 significant bits (`RATIO_BITS` + 1) toward zero: for 2**-36 ≤ |num/den|
< 2**40 a relative error below 2**-24 ≈ 6e-8. β is what is left of a bias added to the
approximate quotient so that a value on the 25-bit grid opens as itself; the output is the
same in every run unless |num/den| lies within β of the next grid point (then it is one of the
two, a difference below 2**-60 absolute). Smaller values keep an absolute precision of about
2**-60, values within (2t + 9)·2**-64 of 0 open as 0.0, values beyond 2**44 as None (between
2**40 and 2**44 None or the value). Nothing else is opened: not num, den or an intermediate.

How, inside MPC (all vectorised over the pairs; a denominator shared by several numerators is
handled once):

1. den = 0 is decided by one masked opening (the output is then None; nothing else opened);
2. each den is normalised: its bits (`_decompose`), the first set bit one-hot (`_leading`),
   moved to the big field (`convert`), gives 2**i with den·2**i in [2**(N−1), 2**N); N is
   the public bit bound;
3. a reciprocal w ≈ 2**(2P) / top of its top P = 122 bits (`shifted`, then six Newton steps
   from 2.9142 − 2b on [1/2, 1]: relative error 5e-69 before rounding);
4. the quotient y' ≈ (num/den + 2**40)·2**64 (nonnegative in range) from the lifted numerator's
   top bits times w, within t + 2 units (`shifted` errs by less than t + 1);
5. a range test, opened as one bit per ratio: ⌊y' / 2**105⌋ (approximately) in {0, …, t + 2},
   as a masked zero test of a product;
6. in range, y' moves to a small field (`convert`): its sign, the bits of |y| + (t + 4) (a
   bias larger than the error, so a value on the grid rounds to itself), that magnitude's
   leading bit, and its top 25 bits (`rounded_units`) are computed there and opened: sign,
   mantissa and the shift.

Randomness and bit-level work. MPyC's own random bits take a modular square root per bit
(about 1 ms in a 607-bit field, 0.2 s in a 4 423-bit one) and every operation on shares of a
thousands-of-bits field costs hundreds of microseconds, so bit-level work happens in a field of
about 180 bits (`small_type`) and this module draws its own randomness: a random bit is
(1 + Π s_j)/2 for t + 1 parties' random signs s_j, input in both fields (its weighted sum in the
big field is one dot product per row, `_paired_random_bits`); masks are sums of values that
t + 1 parties input, each uniform on its range, so at least one honest term masks with
`mpc.options.sec_param` bits of statistical margin. Comparisons and bit decompositions use
carry circuits with recursive pairing (Brent–Kung): about 3 multiplications per bit in
2·log₂(bits) rounds. Security as everywhere in Tessera: semi-honest parties, an honest
majority, statistical masking.

Cost for 15 ratios over 3 denominators of 1 400 bits (a linear regression with 7 coefficients):
about 3.6 s with 3 parties on this 2-core machine; most of it is the denominators' bits.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np

RATIO_BITS = 24  # an opened ratio keeps s + 1 = 25 significant bits (truncated toward zero)
RANGE_BITS = 40  # |ratio| < 2**40 ≈ 1.1e12 is reported (beyond it, null)
FINE_BITS = 64  # the approximate quotient's unit: 2**-64 (25 significant bits down to 2**-39)
PRECISION_BITS = RANGE_BITS + FINE_BITS + 18  # P: the top bits the reciprocal works with
NEWTON_STEPS = 6  # relative error 0.0858 → 7e-3 → 5e-5 → 3e-9 → 9e-18 → 7e-35 → 5e-69 on [1/2, 1]
NEWTON_START = 2.9142135623731  # 1 + √2 + 1/2: the best linear start for 1/b, b ∈ [1/2, 1]


def _ints(opened: Any) -> list[int]:
    """Opened values (a field array, or an array of field elements) as Python ints."""
    values = getattr(opened, "value", opened)
    return [int(v) for v in np.asarray(values).ravel()]


def _senders(mpc: Any) -> list[int]:
    return list(range(mpc.threshold + 1))


def _input_sum(mpc: Any, stype: Any, values: np.ndarray) -> tuple[Any, list[Any]]:
    """Each of the first t + 1 parties inputs its own `values`-shaped draw; the secret sum and
    the parts (every other party passes zeros of the same shape)."""
    parts = mpc.input(stype.array(values), senders=_senders(mpc))
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total, parts


def random_bits(mpc: Any, stype: Any, shape: tuple[int, ...]) -> Any:
    """Secret uniformly random bits that no coalition of t parties knows: the product of t + 1
    parties' random ±1 inputs, mapped to {0, 1}."""
    size = int(np.prod(shape))
    draws = np.array([2 * secrets.randbits(1) - 1 for _ in range(size)], dtype=object)
    parts = mpc.input(stype.array(draws.reshape(shape)), senders=_senders(mpc))
    product = parts[0]
    for part in parts[1:]:
        product = product * part
    return (product + 1) * stype.field(2).reciprocal()


def random_below(mpc: Any, stype: Any, shape: tuple[int, ...], bits: int) -> Any:
    """A secret sum of t + 1 parties' inputs, each uniform on [0, 2**bits)."""
    size = int(np.prod(shape))
    draws = np.array([secrets.randbits(bits) for _ in range(size)], dtype=object)
    total, _ = _input_sum(mpc, stype, draws.reshape(shape))
    return total


async def shifted(mpc: Any, x: Any, f: int, bits: int) -> Any:
    """x / 2**f for secret 0 ≤ x < 2**bits, with an error in (−1, t + 1): the parties open
    x + R for a secret mask R = Σ_j (σ_j·2**f + ρ_j) of t + 1 parties' inputs, σ_j uniform on
    [0, 2**(bits + k − f)) and ρ_j on [0, 2**f); the result is ⌊(x + R) / 2**f⌋ − Σ σ_j."""
    stype = type(x).sectype
    if f <= 0:
        return x * (1 << -f)
    k = mpc.options.sec_param
    high = random_below(mpc, stype, x.shape, bits + k - f)
    low = random_below(mpc, stype, x.shape, f)
    opened = await mpc.output(x + high * (1 << f) + low)
    top = np.array([v >> f for v in _ints(opened)], dtype=object)
    return stype.array(top.reshape(x.shape)) - high


async def _masked_low(mpc: Any, x: Any, bits: int, total: int) -> tuple[Any, np.ndarray]:
    """Secret random bits r (shape x.shape + (bits,)) and the public low bits of
    c = x − r + 2**bits·(1 + Σσ_j), opened, for secret 0 ≤ x < 2**total and t + 1 parties'
    σ_j uniform on [0, 2**(total − bits + k)): then x ≡ c + r (mod 2**bits)."""
    stype = type(x).sectype
    shape = (*x.shape, bits)
    r = random_bits(mpc, stype, shape)
    weights = np.array([1 << i for i in range(bits)], dtype=object)
    r_value = (r * weights).sum(axis=-1)
    high = random_below(mpc, stype, x.shape, total - bits + mpc.options.sec_param)
    c = await mpc.output(x - r_value + (high + 1) * (1 << bits))
    low = [v % (1 << bits) for v in _ints(c)]
    c_bits = np.array([[(v >> i) & 1 for i in range(bits)] for v in low], dtype=object)
    return r, c_bits.reshape(shape)


def _carry_out(mpc: Any, g: Any, p: Any) -> Any:
    """The carry out of an addition from its generate and propagate bits (last axis, least
    significant first), by a balanced tree: log₂(bits) vectorised rounds."""
    stype = type(g).sectype
    while g.shape[-1] > 1:
        if g.shape[-1] % 2:  # a neutral top position: generates nothing, propagates
            pad = (*g.shape[:-1], 1)
            g = mpc.np_concatenate((g, stype.array(np.zeros(pad, dtype=object))), axis=-1)
            p = mpc.np_concatenate((p, stype.array(np.ones(pad, dtype=object))), axis=-1)
        g_lo, g_hi, p_lo, p_hi = g[..., 0::2], g[..., 1::2], p[..., 0::2], p[..., 1::2]
        products = mpc.np_multiply(mpc.np_stack((p_hi, p_hi)), mpc.np_stack((g_lo, p_lo)))
        g, p = g_hi + products[0], products[1]
    return g[..., 0]


def _prefix_generate(mpc: Any, g: Any, p: Any) -> Any:
    """Inclusive prefix generate bits (the carry out of positions 0..i, for each i) by the
    recursive pairing prefix (Brent–Kung): about 3 multiplications per position in
    2·log₂(bits) vectorised rounds."""
    stype = type(g).sectype
    width = g.shape[-1]
    if width == 1:
        return g
    if width % 2:  # a neutral top position: generates nothing, propagates
        pad = (*g.shape[:-1], 1)
        g = mpc.np_concatenate((g, stype.array(np.zeros(pad, dtype=object))), axis=-1)
        p = mpc.np_concatenate((p, stype.array(np.ones(pad, dtype=object))), axis=-1)
    g_lo, g_hi, p_lo, p_hi = g[..., 0::2], g[..., 1::2], p[..., 0::2], p[..., 1::2]
    if g_lo.shape[-1] > 1:
        products = mpc.np_multiply(mpc.np_stack((p_hi, p_hi)), mpc.np_stack((g_lo, p_lo)))
        pair_g, pair_p = g_hi + products[0], products[1]
    else:
        pair_g, pair_p = g_hi + p_hi * g_lo, p_hi  # p unused above the last level
    prefix = _prefix_generate(mpc, pair_g, pair_p)  # through each pair's high position
    # a low position 2k: its own generate, or the prefix through pair k − 1 propagated
    carried = g_lo[..., 1:] + p_lo[..., 1:] * prefix[..., :-1]
    low = mpc.np_concatenate((g_lo[..., :1], carried), axis=-1)
    both = mpc.np_stack((low, prefix), axis=-1)  # interleave: 2k, 2k + 1
    return both.reshape(*both.shape[:-2], -1)[..., :width]


def _carries(mpc: Any, g: Any, p: Any) -> Any:
    """The carry into every position (0 into the lowest)."""
    stype = type(g).sectype
    prefix = _prefix_generate(mpc, g, p)
    zero = stype.array(np.zeros((*g.shape[:-1], 1), dtype=object))
    return mpc.np_concatenate((zero, prefix[..., :-1]), axis=-1)


def _generate_propagate(r: Any, c_bits: np.ndarray) -> tuple[Any, Any]:
    """Generate and propagate bits of secret bits r plus public bits c (both linear in r)."""
    return r * c_bits, r + c_bits - r * (2 * c_bits)


async def to_bits(mpc: Any, x: Any, bits: int) -> Any:
    """The bits of secret 0 ≤ x < 2**bits, least significant first (shape x.shape + (bits,)):
    x = c + r with c public and r secret random bits (`_masked_low`), added on shares."""
    r, c_bits = await _masked_low(mpc, x, bits, bits)
    g, p = _generate_propagate(r, c_bits)
    carries = _carries(mpc, g, p)
    return p + carries - p * carries * 2


async def floor_shift(mpc: Any, x: Any, f: int, bits: int) -> Any:
    """⌊x / 2**f⌋ exactly, for secret 0 ≤ x < 2**bits: x less x mod 2**f, over 2**f, where
    x mod 2**f = c + r − 2**f·carry_out(c + r)."""
    stype = type(x).sectype
    r, c_bits = await _masked_low(mpc, x, f, bits)
    g, p = _generate_propagate(r, c_bits)
    weights = np.array([1 << i for i in range(f)], dtype=object)
    low = (r * weights).sum(axis=-1) + (c_bits * weights).sum(axis=-1)
    low = low - _carry_out(mpc, g, p) * (1 << f)
    return (x - low) * stype.field(1 << f).reciprocal()


async def negative(mpc: Any, x: Any, bits: int) -> Any:
    """Secret bits [x < 0] for |x| < 2**bits: 1 − ⌊(x + 2**bits) / 2**bits⌋."""
    return 1 - await floor_shift(mpc, x + (1 << bits), bits, bits + 1)


def _scan(mpc: Any, x: Any, identity: int, combine: Any) -> Any:
    """Inclusive prefixes along the last axis (index 0 upward) of an associative, commutative
    operation on secret bits costing one multiplication (`combine`), by recursive pairing:
    about 2 multiplications per position in 2·log₂ N vectorised rounds."""
    stype = type(x).sectype
    width = x.shape[-1]
    if width == 1:
        return x
    if width % 2:
        pad = np.full((*x.shape[:-1], 1), identity, dtype=object)
        x = mpc.np_concatenate((x, stype.array(pad)), axis=-1)
    lo, hi = x[..., 0::2], x[..., 1::2]
    prefix = _scan(mpc, combine(lo, hi), identity, combine)  # through each pair's high
    low = mpc.np_concatenate((lo[..., :1], combine(prefix[..., :-1], lo[..., 1:])), axis=-1)
    both = mpc.np_stack((low, prefix), axis=-1)  # interleave: 2k, 2k + 1
    return both.reshape(*both.shape[:-2], -1)[..., :width]


def _prefix_or(mpc: Any, bits: Any) -> Any:
    """o_i = b_0 ∨ … ∨ b_i along the last axis."""
    return _scan(mpc, bits, 0, lambda a, b: a + b - a * b)


def _leading(mpc: Any, bits: Any) -> tuple[Any, Any]:
    """For bit vectors (least significant first) of length N: the leading zeros i (N for 0)
    and the one-hot vector of the leading one (at position N − 1 − i; all zeros for 0). From
    the prefix OR o_j of the bits from the top down (`_prefix_or`), both are linear:
    i = Σ_j (1 − o_j) and the one-hot's top-down entries o_j − o_(j−1)."""
    stype = type(bits).sectype
    width = bits.shape[-1]
    prefix = _prefix_or(mpc, np.flip(bits, axis=-1))  # from the top
    zero = stype.array(np.zeros((*prefix.shape[:-1], 1), dtype=object))
    before = mpc.np_concatenate((zero, prefix[..., :-1]), axis=-1)
    index = width - prefix.sum(axis=-1)
    return index, np.flip(prefix - before, axis=-1)


def _product_zero_candidates(values: Any, top: int) -> Any:
    """Π_(v = 0..top) (x − v): zero iff x ∈ {0, …, top} (for x below the field's order)."""
    product = values
    for v in range(1, top + 1):
        product = product * (values - v)
    return product


def small_type(mpc: Any) -> Any:
    """The secure type of the bit-level work: a field of about 180 bits, where each operation
    costs a fraction of one in the thousands-of-bits field of the exact solvers."""
    return mpc.SecInt(RANGE_BITS + FINE_BITS + 16)


async def convert(mpc: Any, x: Any, target: Any, bits: int) -> Any:
    """Secret 0 ≤ x < 2**bits moved to the field of `target` (a secure type): t + 1 parties
    each input one uniform ρ_j on [0, 2**(bits + k)) in both fields; x + Σρ_j is opened in
    x's field and Σρ_j subtracted in the target's (both fields hold every sum exactly)."""
    source = type(x).sectype
    draws = np.array(
        [secrets.randbits(bits + mpc.options.sec_param) for _ in range(x.size)], dtype=object
    ).reshape(x.shape)
    mask_source, _ = _input_sum(mpc, source, draws)
    mask_target, _ = _input_sum(mpc, target, draws)
    opened = np.array(_ints(await mpc.output(x + mask_source)), dtype=object)
    return target.array(opened.reshape(x.shape)) - mask_target


def _paired_random_bits(mpc: Any, small: Any, big: Any, shape: tuple[int, int]) -> tuple[Any, Any]:
    """Secret random bits r (rows × bits) in the small field, and each row's Σ r_i·2**i in the
    big one: t + 1 parties input the same random signs s_j in both fields; r = (1 + Π s_j)/2,
    and Σ 2**i·Π_j s_ji is a product of the first t and a weighted dot product with the last
    (one resharing per row and row, `mpc.np_matmul`)."""
    rows, width = shape
    draws = np.array(
        [2 * secrets.randbits(1) - 1 for _ in range(rows * width)], dtype=object
    ).reshape(shape)
    # (MPyC reduces an array it is given in place: each field gets its own copy)
    small_parts = mpc.input(small.array(draws.copy()), senders=_senders(mpc))
    big_parts = mpc.input(big.array(draws.copy()), senders=_senders(mpc))
    product = small_parts[0]
    for part in small_parts[1:]:
        product = product * part
    bits = (product + 1) * small.field(2).reciprocal()
    head = big_parts[0]
    for part in big_parts[1:-1]:
        head = head * part
    if len(big_parts) == 1:  # one party: its signs are the bits
        signed = (head * np.array([1 << i for i in range(width)], dtype=object)).sum(axis=-1)
    else:
        weights = np.array([1 << i for i in range(width)], dtype=object)
        weighted, last = head * weights, big_parts[-1]
        signed = mpc.np_fromlist(
            [mpc.np_matmul(weighted[j], last[j]) for j in range(rows)]  # one resharing each
        )
    value = (signed + ((1 << width) - 1)) * big.field(2).reciprocal()
    return bits, value


async def _decompose(mpc: Any, x: Any, bits: int, small: Any) -> Any:
    """The bits (least significant first) of a 1-D secure array 0 ≤ x < 2**bits of a big field,
    as a (len, bits) array of the small field: c = x − r + 2**bits·(1 + Σσ_j) is opened in the
    big field and c's low bits added to r on shares in the small one."""
    big = type(x).sectype
    rows = x.shape[0]
    r, r_value = _paired_random_bits(mpc, small, big, (rows, bits))
    high = random_below(mpc, big, x.shape, mpc.options.sec_param)
    c = await mpc.output(x - r_value + (high + 1) * (1 << bits))
    low = [v % (1 << bits) for v in _ints(c)]
    c_bits = np.array([[(v >> i) & 1 for i in range(bits)] for v in low], dtype=object)
    g, p = _generate_propagate(r, c_bits)
    carries = _carries(mpc, g, p)
    return p + carries - p * carries * 2


async def _power_of_two(mpc: Any, one_hot: Any, big: Any) -> Any:
    """2**i in the big field from the one-hot vector (small field, rows × N) of a leading bit
    at position N − 1 − i. With i = c·a + b (c ≈ √N), the one-hot vectors of a and of b are
    sums of the given one's entries (linear); only those ≈ 2√N bits are moved to the big
    field (`convert`), where 2**i = (Σ_a [a]·2**(c·a))·(Σ_b [b]·2**b): one multiplication."""
    rows, width = one_hot.shape
    chunk = math.isqrt(width - 1) + 1
    spans = -(-width // chunk)
    index = np.array([width - 1 - j for j in range(width)])  # i at each position
    high = np.zeros((width, spans), dtype=object)
    low = np.zeros((width, chunk), dtype=object)
    high[np.arange(width), index // chunk] = 1
    low[np.arange(width), index % chunk] = 1
    parts = mpc.np_hstack((one_hot @ high, one_hot @ low))
    moved = await convert(mpc, parts.reshape(-1), big, 1)
    moved = moved.reshape(rows, spans + chunk)
    high_powers = np.array([1 << (chunk * a) for a in range(spans)], dtype=object)
    low_powers = np.array([1 << b for b in range(chunk)], dtype=object)
    return (moved[:, :spans] * high_powers).sum(axis=-1) * (moved[:, spans:] * low_powers).sum(
        axis=-1
    )


async def _scaled_denominators(
    mpc: Any, denominators: Any, bits: int, small: Any
) -> tuple[Any, Any]:
    """For nonzero denominators below 2**bits: 2**i with den·2**i in [2**(N−1), 2**N), and an
    approximate reciprocal w ≈ 2**(2P) / top with top ≈ den·2**i / 2**(N−P) in [2**(P−1),
    2**P] (`shifted`, then Newton: w ← w·(2 − w·b) from 2.9142 − 2b on b ∈ [1/2, 1])."""
    big = type(denominators).sectype
    _, one_hot = _leading(mpc, await _decompose(mpc, denominators, bits, small))
    scale = await _power_of_two(mpc, one_hot, big)
    p = PRECISION_BITS
    top = await shifted(mpc, denominators * scale, bits - p, bits + 1)
    w = int(NEWTON_START * (1 << p)) - top * 2
    for _ in range(NEWTON_STEPS):
        error = (1 << (2 * p + 1)) - w * top  # 2**(2P)·(2 − w·b), w scaled 2**P
        w = await shifted(mpc, w * error, 2 * p, 3 * p + 4)
    return scale, w


async def approximate_quotients(
    mpc: Any, numerators: Any, denominators: Any, index: Sequence[int], bits: int, small: Any
) -> tuple[Any, Any]:
    """y' ≈ (num/den + 2**B)·2**F within t + 2 units, and per ratio a value that is zero iff
    y' < 2**(W+1)·(t + 3) (roughly: |num/den| below 2**B), in the big field."""
    pick = np.array(index)
    n_bits, p, wide = bits, PRECISION_BITS, RANGE_BITS + FINE_BITS
    scale, w = await _scaled_denominators(mpc, denominators, n_bits, small)
    # the numerator lifted to be nonnegative in range, scaled with its denominator's 2**i
    # (the product is below 2**(2N + B + 1))
    lifted = (numerators + denominators[pick] * (1 << RANGE_BITS)) * scale[pick]
    top = await shifted(mpc, lifted, n_bits - p, 2 * n_bits + RANGE_BITS + 2)
    shift = 2 * p - FINE_BITS
    y = await shifted(mpc, top * w[pick], shift, n_bits + RANGE_BITS + 2 * p + 4)
    coarse = await shifted(mpc, y, wide + 1, n_bits + RANGE_BITS + 2 * p + 4 - shift)
    return y, _product_zero_candidates(coarse, mpc.threshold + 2)


async def rounded_units(mpc: Any, y: Any, significant: int) -> tuple[Any, Any, Any]:
    """For y' ≈ (num/den + 2**B)·2**F below 2**(W+1)·(t + 3), in the small field: secret sign
    bits [num/den ≥ 0], mantissas q in [2**s, 2**(s+1)) and leading-zero counts i of
    |y| + bias, so that |num / den| ≈ q · 2**(L − 1 − s − i − F).

    Both candidate magnitudes, y − 2**W + bias and 2**W − y + bias (each offset by 2**L to be
    nonnegative), are decomposed together; the first one's bit L is the sign, which selects
    the bits of |y| + bias (a sign within the bias of 0 picks a magnitude below the bias: the
    result is 0.0 either way). The mantissa is the window of s + 1 bits under the leading one:
    the one-hot leading bit times each position's window, summed (one multiplication)."""
    wide = RANGE_BITS + FINE_BITS
    limit = magnitude_bits(mpc.threshold)
    bias = bias_units(mpc.threshold)
    offset = (1 << limit) + bias
    both = mpc.np_stack((y - (1 << wide) + offset, ((1 << wide) + offset) - y))
    bits = await to_bits(mpc, both, limit + 1)
    sign = bits[0, :, limit]
    chosen = bits[1, :, :limit] + sign.reshape(-1, 1) * (bits[0, :, :limit] - bits[1, :, :limit])
    leading, one_hot = _leading(mpc, chosen)
    # windows[:, j] = Σ_m bit[j − s + m]·2**m: the s + 1 bits ending at position j
    weights = np.zeros((limit, limit), dtype=object)
    for j in range(limit):
        for m in range(significant + 1):
            if j - significant + m >= 0:
                weights[j - significant + m, j] = 1 << m
    windows = chosen @ weights
    mantissa = (one_hot * windows).sum(axis=-1)
    return sign, mantissa, leading


async def open_nonnegative(mpc: Any, values: Any, bits: int) -> list[bool]:
    """Open only [x ≥ 0] for each x of a secure 1-D array of a big field with |x| < 2**bits:
    y = x + 2**bits is masked, c = y − r + 2**bits·(1 + Σσ_j) opened, and the top bit of y,
    ⌊c / 2**bits⌋ − 1 − Σσ_j + carry(c mod 2**bits + r), is computed in the small field."""
    big = type(values).sectype
    small = small_type(mpc)
    rows = values.shape[0]
    r, r_value = _paired_random_bits(mpc, small, big, (rows, bits))
    k = mpc.options.sec_param
    draws = np.array([secrets.randbits(k) for _ in range(rows)], dtype=object)
    high_big, _ = _input_sum(mpc, big, draws)
    high_small, _ = _input_sum(mpc, small, draws)
    c = _ints(await mpc.output(values + (1 << bits) - r_value + (high_big + 1) * (1 << bits)))
    c_bits = np.array([[(v >> i) & 1 for i in range(bits)] for v in c], dtype=object)
    g, p = _generate_propagate(r, c_bits)
    top = np.array([v >> bits for v in c], dtype=object) - 1 - high_small + _carry_out(mpc, g, p)
    return [bool(v) for v in _ints(await mpc.output(top))]


def bias_units(threshold: int) -> int:
    """Added to |y| before truncation: more than the approximation's error, below t + 2 units
    of 2**-F (the last approximate shift errs by less than t + 1, the reciprocal by 2**-10)."""
    return threshold + 4


def magnitude_bits(threshold: int) -> int:
    """Bits of |y| + bias where the range test passes: y' < 2**(W + 1)·(t + 3)."""
    return RANGE_BITS + FINE_BITS + 1 + (threshold + 3).bit_length()


def ratio_field_bits(bits: int) -> int:
    """The field size `open_rounded_ratios` needs for ratios of `bits`-bit integers (MPyC's
    statistical margin at its default of 30 bits included)."""
    return max(2 * bits + RANGE_BITS + 40, bits + RANGE_BITS + 3 * PRECISION_BITS + 40)


async def open_rounded_ratios(
    mpc: Any,
    numerators: Sequence[Any],
    denominators: Sequence[Any],
    bits: int,
    significant: int = RATIO_BITS,
) -> list[float | None]:
    """Open num_i / den_i rounded toward zero to `significant` + 1 significant bits: None where
    den_i = 0 or |num_i / den_i| ≥ about 2**RANGE_BITS, 0.0 below about 2**(5 − FINE_BITS).
    For secret integers with |num_i|, den_i < 2**bits and den_i ≥ 0 of one field type at least
    `ratio_field_bits(bits)` bits large. A denominator passed several times (the same secure
    object) is decomposed once."""
    if not numerators:
        return []
    stype = type(denominators[0])
    need = ratio_field_bits(bits) + mpc.options.sec_param - 30
    if stype.field.order.bit_length() < need:
        raise ValueError(f"a {need}-bit field is needed for ratios of {bits}-bit integers")
    distinct: dict[int, int] = {}
    for d in denominators:
        distinct.setdefault(id(d), len(distinct))
    unique = list({id(d): d for d in denominators}.values())
    zero = [bool(z) for z in await mpc.np_is_zero_public(mpc.np_fromlist(unique))]
    kept = [i for i, d in enumerate(denominators) if not zero[distinct[id(d)]]]
    out: list[float | None] = [None] * len(numerators)
    if not kept:
        return out
    used = sorted({distinct[id(denominators[i])] for i in kept})
    position = {u: j for j, u in enumerate(used)}
    nums = mpc.np_fromlist([numerators[i] for i in kept])
    dens = mpc.np_fromlist([unique[u] for u in used])
    index = [position[distinct[id(denominators[i])]] for i in kept]
    small = small_type(mpc)
    y, outside = await approximate_quotients(mpc, nums, dens, index, bits, small)
    # the range test first: nothing else is opened for a ratio out of range
    far = [not z for z in await mpc.np_is_zero_public(outside)]
    shown = [j for j in range(len(kept)) if not far[j]]
    if not shown:
        return out
    limit = magnitude_bits(mpc.threshold)
    moved = await convert(mpc, y[np.array(shown)], small, limit)
    sign, mantissa, leading = await rounded_units(mpc, moved, significant)
    opened = await mpc.output(mpc.np_hstack((sign, mantissa, leading)))
    values = _ints(opened)
    k = len(shown)
    zero_band = math.ldexp(2 * bias_units(mpc.threshold) + 1, -FINE_BITS)
    for j, s_bit, q, i in zip(shown, values[:k], values[k : 2 * k], values[2 * k :], strict=True):
        magnitude = math.ldexp(q, limit - 1 - significant - i - FINE_BITS)
        if magnitude < zero_band:  # within the approximation's error of 0: 0 exactly
            out[kept[j]] = 0.0
        else:
            out[kept[j]] = magnitude if s_bit else -magnitude
    return out
