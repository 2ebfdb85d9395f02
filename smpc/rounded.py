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

1. den = 0 is decided by one masked opening (the output is then None; nothing else opened),
   unless the caller has shown every den nonzero (`nonzero`);
2. each den is normalised: its bits (`_decompose`), the first set bit one-hot (`_leading`),
   moved to the big field (`convert`), gives 2**i with den·2**i in [2**(N−1), 2**N); N is
   the public bit bound;
3. a reciprocal w ≈ 2**(2P) / top of its top P = 122 bits (`shifted`, then five Newton steps
   from 2.9142 − 2b on [1/2, 1]: relative error 7e-35 before rounding, where 2**-110 would
   do; `Precision` lets a caller with smaller ratios or a coarser unit work with fewer);
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
about 150 bits (`small_type`) and this module draws its own randomness: a random bit is
(1 + Π s_j)/2 for t + 1 parties' random signs s_j; a row of random bits reaches the big field
as a few chunks of their weighted sum (`_paired_random_bits`, `convert`), not bit by bit;
masks are sums of values that t + 1 parties input, each uniform on its range, so at least one
honest term masks with `mpc.options.sec_param` bits of statistical margin (the masks of
`_masked_low` narrowed by log₂(t + 1) bits, as MPyC's own). Comparisons and bit decompositions
use carry circuits with recursive pairing (Brent–Kung): about 3 multiplications per bit in
2·log₂(bits) rounds, written on this party's shares (`_prefix_generate`, `_prefix_or`,
`_carry_out_shares`) with one resharing per level instead of MPyC's per-slice coroutines.
Security as everywhere in Tessera: semi-honest parties, an honest majority, statistical
masking.

Cost (this 2-core machine): 3 ratios over 3 distinct denominators of 425 bits about 0.15 s
with 3 parties, 0.35 s with 5; most of it is the denominators' bits and the quotients' bits
(`benchmarks/disclosure_cost.py` times whole statistics).

The same normalisation and Newton iteration give `risk_reciprocals`: secret fixed-point
reciprocals 2**F / r and 2**F / (r²(r − 1)) of many small secret integers at once (a survival
table's pooled risk sets, for the log-rank terms), nothing opened but masked values.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RATIO_BITS = 24  # an opened ratio keeps s + 1 = 25 significant bits (truncated toward zero)
RANGE_BITS = 40  # |ratio| < 2**40 ≈ 1.1e12 is reported (beyond it, null)
FINE_BITS = 64  # the approximate quotient's unit: 2**-64 (25 significant bits down to 2**-39)
NEWTON_START = 2.9142135623731  # 1 + √2 + 1/2: the best linear start for 1/b, b ∈ [1/2, 1]
NEWTON_START_ERROR = 0.0858  # its largest relative error on [1/2, 1]; each step squares it


@dataclass(frozen=True)
class Precision:
    """What a caller's ratios need: |ratio| below about 2**range_bits, the approximate quotient
    in units of 2**-fine_bits. The reciprocal then works with P = range + fine + 18 top bits
    and as many Newton steps as bring its relative error below 2**-(range + fine + 6) (the
    quotient within a unit of 2**-fine before the shifts' own errors): 5 steps by default
    (7e-35 against 2**-110). A smaller range is a smaller field (a correlation's r²: range
    2**1, 607 bits instead of 1 279); a coarser unit, fewer steps, but a bias of (t + 4) units
    that is a larger share of a published grid."""

    range_bits: int = RANGE_BITS
    fine_bits: int = FINE_BITS

    @property
    def wide(self) -> int:
        return self.range_bits + self.fine_bits

    @property
    def precision_bits(self) -> int:
        return self.wide + 18

    @property
    def newton_steps(self) -> int:
        error, steps = NEWTON_START_ERROR, 0
        while error > 2.0 ** -(self.wide + 6):
            error, steps = error * error, steps + 1
        return steps

    def magnitude_bits(self, threshold: int) -> int:
        """Bits of |y| + bias where the range test passes: y' < 2**(W + 1)·(t + 3)."""
        return self.wide + 1 + (threshold + 3).bit_length()

    def field_bits(self, bits: int) -> int:
        """The field size `open_rounded_ratios` needs for ratios of `bits`-bit integers
        (MPyC's statistical margin at its default of 30 bits included)."""
        return max(
            2 * bits + self.range_bits + 40, bits + self.range_bits + 3 * self.precision_bits + 40
        )


DEFAULT_PRECISION = Precision()


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
    σ_j, their sum below 2**(total − bits + k) (each summand's range narrowed by log₂(t + 1)
    bits, as MPyC's own masks are): then x ≡ c + r (mod 2**bits). The field holds c when its
    prime exceeds 2**(total + k + 1) (MPyC's SecInt(total) does)."""
    stype = type(x).sectype
    shape = (*x.shape, bits)
    r = random_bits(mpc, stype, shape)
    weights = np.array([1 << i for i in range(bits)], dtype=object)
    r_value = (r * weights).sum(axis=-1)
    spread = mpc.threshold.bit_length()  # t + 1 summands below 2**spread each
    high = random_below(mpc, stype, x.shape, total - bits + mpc.options.sec_param - spread)
    c = await mpc.output(x - r_value + (high + 1) * (1 << bits))
    low = [v % (1 << bits) for v in _ints(c)]
    c_bits = np.array([[(v >> i) & 1 for i in range(bits)] for v in low], dtype=object)
    return r, c_bits.reshape(shape)


async def _shares(mpc: Any, x: Any) -> np.ndarray:
    """This party's shares of a secure array (an object array of field values)."""
    return (await mpc.gather(x)).value


def _secure(like: Any, shares: np.ndarray) -> Any:
    """A secure array of `like`'s type holding the given shares."""
    return type(like)(type(like).sectype.field.array(shares, check=False))


async def _multiply(mpc: Any, field: Any, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Shares of the elementwise product of two shared arrays (one resharing)."""
    product = field.array((a * b) % field.modulus, check=False)
    return (await mpc._reshare(product)).value


def _pad(shares: np.ndarray, value: int) -> np.ndarray:
    """One more position on the last axis holding the public `value` (every share is it)."""
    pad = np.full((*shares.shape[:-1], 1), value, dtype=object)
    return np.concatenate((shares, pad), axis=-1)


def _interleave(even: np.ndarray, odd: np.ndarray, width: int) -> np.ndarray:
    """Positions 2k from `even` and 2k + 1 from `odd` along the last axis, cut to `width`."""
    both = np.stack((even, odd), axis=-1)
    return both.reshape(*both.shape[:-2], -1)[..., :width]


# The circuits below work on this party's shares (object arrays modulo the field's prime) and
# reshare only the products, one `mpc._reshare` per level: the same secure multiplications as
# MPyC's array operations, without a coroutine for every slice, stack and concatenation.


async def _carry_out_shares(mpc: Any, field: Any, g: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The carry out of an addition from its generate and propagate bits (last axis, least
    significant first), by a balanced tree: log₂(bits) resharings."""
    modulus = field.modulus
    while g.shape[-1] > 1:
        if g.shape[-1] % 2:  # a neutral top position: generates nothing, propagates
            g, p = _pad(g, 0), _pad(p, 1)
        g_lo, g_hi, p_lo, p_hi = g[..., 0::2], g[..., 1::2], p[..., 0::2], p[..., 1::2]
        products = await _multiply(mpc, field, np.stack((p_hi, p_hi)), np.stack((g_lo, p_lo)))
        g, p = (g_hi + products[0]) % modulus, products[1]
    return g[..., 0]


async def _prefix_generate(mpc: Any, field: Any, g: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Inclusive prefix generate bits (the carry out of positions 0..i, for each i) by the
    recursive pairing prefix (Brent–Kung): about 3 multiplications per position in
    2·log₂(bits) resharings."""
    modulus = field.modulus
    width = g.shape[-1]
    if width == 1:
        return g
    if width % 2:
        g, p = _pad(g, 0), _pad(p, 1)
    g_lo, g_hi, p_lo, p_hi = g[..., 0::2], g[..., 1::2], p[..., 0::2], p[..., 1::2]
    if g_lo.shape[-1] > 1:
        products = await _multiply(mpc, field, np.stack((p_hi, p_hi)), np.stack((g_lo, p_lo)))
        pair_g, pair_p = (g_hi + products[0]) % modulus, products[1]
    else:  # p is unused above the last level
        pair_g, pair_p = (g_hi + await _multiply(mpc, field, p_hi, g_lo)) % modulus, p_hi
    prefix = await _prefix_generate(mpc, field, pair_g, pair_p)  # through each pair's high
    low = g_lo[..., :1]
    if g_lo.shape[-1] > 1:  # a low position 2k: its own generate, or pair k − 1's propagated
        carried = await _multiply(mpc, field, p_lo[..., 1:], prefix[..., :-1])
        low = np.concatenate((low, (g_lo[..., 1:] + carried) % modulus), axis=-1)
    return _interleave(low, prefix, width)


async def _prefix_or(mpc: Any, field: Any, bits: np.ndarray) -> np.ndarray:
    """o_i = b_0 ∨ … ∨ b_i along the last axis, by recursive pairing: about 2
    multiplications per position in 2·log₂(bits) resharings."""
    modulus = field.modulus
    width = bits.shape[-1]
    if width == 1:
        return bits
    if width % 2:
        bits = _pad(bits, 0)
    lo, hi = bits[..., 0::2], bits[..., 1::2]
    pair = (lo + hi - await _multiply(mpc, field, lo, hi)) % modulus
    prefix = await _prefix_or(mpc, field, pair)  # through each pair's high
    low = lo[..., :1]
    if lo.shape[-1] > 1:
        a, b = prefix[..., :-1], lo[..., 1:]
        both = (a + b - await _multiply(mpc, field, a, b)) % modulus
        low = np.concatenate((low, both), axis=-1)
    return _interleave(low, prefix, width)


def _generate_propagate(r: Any, c_bits: np.ndarray) -> tuple[Any, Any]:
    """Generate and propagate bits of secret bits r plus public bits c (both linear in r)."""
    return r * c_bits, r + c_bits - r * (2 * c_bits)


async def _sum_bits(mpc: Any, r: Any, c_bits: np.ndarray) -> Any:
    """The bits of secret bits r plus public bits c, modulo 2**bits (last axis, least
    significant first): p_i ⊕ carry_i with the carries of `_prefix_generate`."""
    field = type(r).sectype.field
    g, p = _generate_propagate(r, c_bits)
    g, p = await _shares(mpc, g), await _shares(mpc, p)
    prefix = await _prefix_generate(mpc, field, g, p)
    carries = np.concatenate((np.zeros((*g.shape[:-1], 1), dtype=object), prefix[..., :-1]), -1)
    twice = await _multiply(mpc, field, p, carries)
    return _secure(r, (p + carries - 2 * twice) % field.modulus)


async def _carry_out(mpc: Any, r: Any, c_bits: np.ndarray) -> Any:
    """The carry out of secret bits r plus public bits c (last axis)."""
    field = type(r).sectype.field
    g, p = _generate_propagate(r, c_bits)
    g, p = await _shares(mpc, g), await _shares(mpc, p)
    return _secure(r, await _carry_out_shares(mpc, field, g, p))


async def to_bits(mpc: Any, x: Any, bits: int) -> Any:
    """The bits of secret 0 ≤ x < 2**bits, least significant first (shape x.shape + (bits,)):
    x = c + r with c public and r secret random bits (`_masked_low`), added on shares."""
    r, c_bits = await _masked_low(mpc, x, bits, bits)
    return await _sum_bits(mpc, r, c_bits)


def low_bits(mpc: Any, x: Any, bits: int) -> Any:
    """The low `bits` bits of each x of a secure integer array (x mod 2**bits, two's
    complement for negative x), least significant first: what MPyC's `np_to_bits(x, l=bits)`
    computes, by `_masked_low` and the carries of `_prefix_generate` (random bits from t + 1
    parties' signs, not MPyC's modular square roots; one resharing per level, not a coroutine
    per slice). For SecInt(L) values, |x| < 2**(L − 1), bits < L. Returns the
    secure array at once (an MPyC coroutine)."""
    from mpyc import asyncoro

    stype = type(x).sectype
    size = stype.bit_length

    @asyncoro.mpc_coro
    async def run():  # type: ignore[no-untyped-def]  # MPyC reads a return annotation
        await asyncoro.returnType((stype.array, True, (*x.shape, bits)))
        r, c_bits = await _masked_low(mpc, x + (1 << (size - 1)), bits, size)
        return await mpc.gather(await _sum_bits(mpc, r, c_bits))

    return run()


async def _leading(mpc: Any, bits: Any) -> tuple[Any, Any]:
    """For bit vectors (least significant first) of length N: the leading zeros i (N for 0)
    and the one-hot vector of the leading one (at position N − 1 − i; all zeros for 0). From
    the prefix OR o_j of the bits from the top down (`_prefix_or`), both are linear:
    i = Σ_j (1 − o_j) and the one-hot's top-down entries o_j − o_(j−1)."""
    field = type(bits).sectype.field
    width = bits.shape[-1]
    shares = np.flip(await _shares(mpc, bits), axis=-1)  # from the top
    prefix = await _prefix_or(mpc, field, np.ascontiguousarray(shares))
    before = np.concatenate((np.zeros((*prefix.shape[:-1], 1), dtype=object), prefix[..., :-1]), -1)
    index = (width - prefix.sum(axis=-1)) % field.modulus
    one_hot = np.flip((prefix - before) % field.modulus, axis=-1)
    return _secure(bits, index), _secure(bits, np.ascontiguousarray(one_hot))


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


async def _paired_random_bits(
    mpc: Any, small: Any, big: Any, shape: tuple[int, int]
) -> tuple[Any, Any]:
    """Secret random bits r (rows × bits) in the small field (`random_bits`), and each row's
    Σ r_i·2**i in the big one: the row's bits are summed in chunks of `_chunk_bits` bits in the
    small field (linear), each chunk moved to the big field (`convert`) and the chunks summed
    there. The big field sees one value per chunk, not one per bit."""
    rows, width = shape
    bits = random_bits(mpc, small, shape)
    chunk = _chunk_bits(mpc, small)
    spans = -(-width // chunk)
    weights = np.zeros((width, spans), dtype=object)
    for i in range(width):
        weights[i, i // chunk] = 1 << (i % chunk)
    parts = await convert(mpc, (bits @ weights).reshape(-1), big, chunk)
    scales = np.array([1 << (chunk * c) for c in range(spans)], dtype=object)
    return bits, (parts.reshape(rows, spans) * scales).sum(axis=-1)


def _chunk_bits(mpc: Any, small: Any) -> int:
    """The widest x that `convert` moves out of the small field: x + Σρ_j, with t + 1 masks
    below 2**(bits + k), stays below its prime."""
    margin = mpc.options.sec_param + (mpc.threshold + 2).bit_length() + 1
    return small.field.order.bit_length() - 1 - margin


async def _decompose(mpc: Any, x: Any, bits: int, small: Any) -> Any:
    """The bits (least significant first) of a 1-D secure array 0 ≤ x < 2**bits of a big field,
    as a (len, bits) array of the small field: c = x − r + 2**bits·(1 + Σσ_j) is opened in the
    big field and c's low bits added to r on shares in the small one."""
    big = type(x).sectype
    rows = x.shape[0]
    r, r_value = await _paired_random_bits(mpc, small, big, (rows, bits))
    high = random_below(mpc, big, x.shape, mpc.options.sec_param)
    c = await mpc.output(x - r_value + (high + 1) * (1 << bits))
    low = [v % (1 << bits) for v in _ints(c)]
    c_bits = np.array([[(v >> i) & 1 for i in range(bits)] for v in low], dtype=object)
    return await _sum_bits(mpc, r, c_bits)


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


async def _normalised(mpc: Any, x: Any, bits: int, small: Any) -> tuple[Any, Any]:
    """For secret 0 ≤ x < 2**bits: the one-hot vector of x's leading one (small field, all
    zeros for 0) and 2**i with x·2**i in [2**(bits−1), 2**bits) in x's field (0 for 0)."""
    _, one_hot = await _leading(mpc, await _decompose(mpc, x, bits, small))
    return one_hot, await _power_of_two(mpc, one_hot, type(x).sectype)


async def _scaled_denominators(
    mpc: Any, denominators: Any, bits: int, small: Any, precision: Precision
) -> tuple[Any, Any]:
    """For nonzero denominators below 2**bits: 2**i with den·2**i in [2**(N−1), 2**N), and an
    approximate reciprocal w ≈ 2**(2P) / top with top ≈ den·2**i / 2**(N−P) in [2**(P−1),
    2**P] (`shifted`, then Newton: w ← w·(2 − w·b) from 2.9142 − 2b on b ∈ [1/2, 1])."""
    _, scale = await _normalised(mpc, denominators, bits, small)
    p = precision.precision_bits
    top = await shifted(mpc, denominators * scale, bits - p, bits + 1)
    w = int(NEWTON_START * (1 << p)) - top * 2
    return scale, await _newton(mpc, top, w, p, precision.newton_steps, 4)


async def _newton(mpc: Any, top: Any, w: Any, p: int, steps: int, spare: int) -> Any:
    """Newton's iteration w ← w·(2 − w·b) for w ≈ 2**(2P) / top (b = top / 2**P, w scaled
    2**P) from the start w; w stays below 2**(P + spare − 2)."""
    for _ in range(steps):
        error = (1 << (2 * p + 1)) - w * top  # 2**(2P)·(2 − w·b)
        w = await shifted(mpc, w * error, 2 * p, 3 * p + spare)
    return w


RECIPROCAL_BITS = 80  # P of `risk_reciprocals`: relative error about 2**-76
# linear starts α − β·b for 1/b with β a multiple of 1/16: on [1/2, 1] (β = 1.875, α = 2.8125,
# relative error 0.0625) and on [1/16, 1] (β = 5.8125, α = 6.1758, relative error 0.64);
# seven steps bring both below 2**-80
_STARTS = ((2.8125, 30), (6.17578125, 93))
_RECIPROCAL_STEPS = 7


async def risk_reciprocals(mpc: Any, risk: Any, bits: int, scale: int) -> tuple[Any, Any]:
    """For secret integers 0 ≤ r < 2**bits of a secure integer array (a survival table's
    pooled risk sets): u ≈ 2**scale / r and y ≈ 2**scale / (r²·(r − 1)), each within a
    relative error of about 2**-74, u = 0 where r = 0 and y = 0 where r ≤ 1. Needs
    scale ≥ P + 3·bits and a field of at least 3P + 8 + k bits (P = `RECIPROCAL_BITS`).

    r is normalised as the ratios' denominators are (`_normalised`): R = r·2**i in
    [2**(bits−1), 2**bits), and q = r²(r − 1) with the same 2**(3i): q' = R²·(R − 2**i), in
    [2**(3·bits − 4), 2**(3·bits)) for r ≥ 2. Both reciprocals
    then take Newton's iteration in one vector from linear starts (`_STARTS`); an r of 0 (or
    1, for y) gets a stand-in in range, and its result is multiplied by 0. Opens only masked
    values."""
    p = RECIPROCAL_BITS
    if scale < p + 3 * bits:
        raise ValueError(f"a scale of 2**{scale} is below 2**{p + 3 * bits}")
    big = type(risk).sectype
    small = small_type(mpc)
    size = risk.shape[0]
    one_hot, power = await _normalised(mpc, risk, bits, small)
    nonzero = one_hot.sum(axis=-1)  # [r ≥ 1]: the one-hot's position 0 is r's lowest bit
    flags = await convert(mpc, mpc.np_concatenate((nonzero, nonzero - one_hot[:, 0])), big, 1)
    positive, several = flags[:size], flags[size:]  # [r ≥ 1], [r ≥ 2]
    normal = risk * power
    top_u = normal * (1 << (p - bits)) + (1 - positive) * (1 << (p - 1))
    cubed = normal * normal * (normal - power) + (1 - several) * (1 << (3 * bits - 1))
    top_q = await shifted(mpc, cubed, 3 * bits - p, 3 * bits + 1)
    top = mpc.np_concatenate((top_u, top_q))
    alpha = np.array([int(a * (1 << p)) for a, _ in _STARTS for _ in range(size)], dtype=object)
    beta = np.array([b for _, b in _STARTS for _ in range(size)], dtype=object)
    w = alpha - await shifted(mpc, top * beta, 4, p + 8)
    w = await _newton(mpc, top, w, p, _RECIPROCAL_STEPS, 8)
    u = w[:size] * power * (1 << (scale - p - bits)) * positive
    y = w[size:] * (power * power * power) * (1 << (scale - p - 3 * bits)) * several
    return u, y


async def approximate_quotients(
    mpc: Any,
    numerators: Any,
    denominators: Any,
    index: Sequence[int],
    bits: int,
    small: Any,
    precision: Precision = DEFAULT_PRECISION,
) -> tuple[Any, Any]:
    """y' ≈ (num/den + 2**B)·2**F within t + 2 units, and per ratio a value that is zero iff
    y' < 2**(W+1)·(t + 3) (roughly: |num/den| below 2**B), in the big field."""
    pick = np.array(index)
    n_bits, p, wide = bits, precision.precision_bits, precision.wide
    lift, fine = precision.range_bits, precision.fine_bits
    scale, w = await _scaled_denominators(mpc, denominators, n_bits, small, precision)
    # the numerator lifted to be nonnegative in range, scaled with its denominator's 2**i
    # (the product is below 2**(2N + B + 1))
    lifted = (numerators + denominators[pick] * (1 << lift)) * scale[pick]
    top = await shifted(mpc, lifted, n_bits - p, 2 * n_bits + lift + 2)
    shift = 2 * p - fine
    y = await shifted(mpc, top * w[pick], shift, n_bits + lift + 2 * p + 4)
    coarse = await shifted(mpc, y, wide + 1, n_bits + lift + 2 * p + 4 - shift)
    return y, _product_zero_candidates(coarse, mpc.threshold + 2)


async def rounded_units(
    mpc: Any, y: Any, significant: int, precision: Precision = DEFAULT_PRECISION
) -> tuple[Any, Any, Any]:
    """For y' ≈ (num/den + 2**B)·2**F below 2**(W+1)·(t + 3), in the small field: secret sign
    bits [num/den ≥ 0], mantissas q in [2**s, 2**(s+1)) and leading-zero counts i of
    |y| + bias, so that |num / den| ≈ q · 2**(L − 1 − s − i − F).

    Both candidate magnitudes, y − 2**W + bias and 2**W − y + bias (each offset by 2**L to be
    nonnegative), are decomposed together; the first one's bit L is the sign, which selects
    the bits of |y| + bias (a sign within the bias of 0 picks a magnitude below the bias: the
    result is 0.0 either way). The mantissa is the window of s + 1 bits under the leading one:
    the one-hot leading bit times each position's window, summed (one multiplication)."""
    wide = precision.wide
    limit = precision.magnitude_bits(mpc.threshold)
    bias = bias_units(mpc.threshold)
    offset = (1 << limit) + bias
    both = mpc.np_stack((y - (1 << wide) + offset, ((1 << wide) + offset) - y))
    bits = await to_bits(mpc, both, limit + 1)
    sign = bits[0, :, limit]
    upper, lower = bits[0, :, :limit], bits[1, :, :limit]
    chosen = lower + sign.reshape(-1, 1) * (upper - lower)
    leading, one_hot = await _leading(mpc, chosen)
    # windows[:, j] = Σ_m bit[j − s + m]·2**m: the s + 1 bits ending at position j
    weights = np.zeros((limit, limit), dtype=object)
    for j in range(limit):
        for m in range(significant + 1):
            if j - significant + m >= 0:
                weights[j - significant + m, j] = 1 << m
    windows = chosen @ weights
    mantissa = (one_hot * windows).sum(axis=-1)
    return sign, mantissa, leading


async def grid_units(mpc: Any, y: Any, grid: int, precision: Precision = DEFAULT_PRECISION) -> Any:
    """For y' ≈ (num/den + 2**B)·2**F below 2**L (L = `Precision.magnitude_bits`), in the
    small field: q = ⌊(y' + bias) / 2**(F − grid)⌋ exactly, so that q·2**-grid − 2**B is
    num/den rounded down to the grid 2**-grid (after the bias, as in `rounded_units`). The low
    F − grid bits of y' + bias are not decomposed: their sum is c + r less 2**(F − grid) times
    the carry out (`_masked_low`, `_carry_out`: log₂ of those bits in resharings)."""
    stype = type(y).sectype
    drop = precision.fine_bits - grid
    limit = precision.magnitude_bits(mpc.threshold)
    z = y + bias_units(mpc.threshold)
    r, c_bits = await _masked_low(mpc, z, drop, limit)
    weights = np.array([1 << i for i in range(drop)], dtype=object)
    low = (r * weights).sum(axis=-1) + (c_bits * weights).sum(axis=-1)
    low = low - await _carry_out(mpc, r, c_bits) * (1 << drop)
    return (z - low) * stype.field(1 << drop).reciprocal()


async def nonnegative_bits(mpc: Any, values: Any, bits: int) -> Any:
    """Secret bits [x ≥ 0], in the small field (`small_type`), for each x of a secure 1-D
    array of a big field with |x| < 2**bits: y = x + 2**bits is masked,
    c = y − r + 2**bits·(1 + Σσ_j) opened, and the top bit of y,
    ⌊c / 2**bits⌋ − 1 − Σσ_j + carry(c mod 2**bits + r), is computed in the small field."""
    big = type(values).sectype
    small = small_type(mpc)
    rows = values.shape[0]
    r, r_value = await _paired_random_bits(mpc, small, big, (rows, bits))
    k = mpc.options.sec_param
    draws = np.array([secrets.randbits(k) for _ in range(rows)], dtype=object)
    high_big, _ = _input_sum(mpc, big, draws)
    high_small, _ = _input_sum(mpc, small, draws)
    c = _ints(await mpc.output(values + (1 << bits) - r_value + (high_big + 1) * (1 << bits)))
    c_bits = np.array([[(v >> i) & 1 for i in range(bits)] for v in c], dtype=object)
    carry = await _carry_out(mpc, r, c_bits)
    return np.array([v >> bits for v in c], dtype=object) - 1 - high_small + carry


async def open_nonnegative(mpc: Any, values: Any, bits: int) -> list[bool]:
    """Open only [x ≥ 0] for each x of a secure 1-D array of a big field with |x| < 2**bits
    (`nonnegative_bits`)."""
    top = await nonnegative_bits(mpc, values, bits)
    return [bool(v) for v in _ints(await mpc.output(top))]


async def all_nonnegative(mpc: Any, values: Any, bits: int) -> bool:
    """Open only whether every x of a secure 1-D array of a big field (|x| < 2**bits) is
    ≥ 0: one masked zero test of the number of negative ones, not a bit per value."""
    top = await nonnegative_bits(mpc, values, bits)
    return bool(await mpc.is_zero_public(mpc.np_sum(1 - top)))


def open_nonnegative_soon(mpc: Any, values: Any, bits: int) -> Any:
    """`open_nonnegative` started at once (`smpc.soon`), running alongside whatever the caller
    awaits next; awaiting the result gives the list of bits."""
    from smpc.soon import soon

    return soon(lambda: open_nonnegative(mpc, values, bits))


def bias_units(threshold: int) -> int:
    """Added to |y| before truncation: more than the approximation's error, below t + 2 units
    of 2**-F (the last approximate shift errs by less than t + 1, the reciprocal by 2**-10)."""
    return threshold + 4


def ratio_field_bits(bits: int) -> int:
    """The field size `open_rounded_ratios` needs for ratios of `bits`-bit integers (MPyC's
    statistical margin at its default of 30 bits included)."""
    return DEFAULT_PRECISION.field_bits(bits)


async def open_rounded_ratios(
    mpc: Any,
    numerators: Sequence[Any],
    denominators: Sequence[Any],
    bits: int,
    significant: int = RATIO_BITS,
    *,
    grid: int | None = None,
    precision: Precision = DEFAULT_PRECISION,
    nonzero: bool = False,
) -> list[float | None]:
    """Open num_i / den_i rounded toward zero to `significant` + 1 significant bits: None where
    den_i = 0 or |num_i / den_i| ≥ about 2**RANGE_BITS, 0.0 below about 2**(5 − FINE_BITS).
    With `grid` (at most FINE_BITS − 8) the published precision is absolute instead: each
    ratio rounded down (toward −∞) to a multiple of 2**-grid after the bias β, in range
    (`grid_units`: no leading bit, no mantissa; cheaper). A caller whose ratios are smaller
    or need a coarser unit gives its `precision` (and a field of `precision.field_bits`).
    For secret integers with |num_i|, den_i < 2**bits and den_i ≥ 0 of one field type at least
    `precision.field_bits(bits)` bits large. A denominator passed several times (the same
    secure object) is decomposed once. With `nonzero` the caller has shown every denominator
    nonzero (for honest inputs) and the zero test is skipped: a zero one then opens 0's
    normalisation, which holds nothing of its numerator (a value of −2**range_bits)."""
    if not numerators:
        return []
    fine = precision.fine_bits
    if grid is not None and not 0 <= grid <= fine - 8:
        raise ValueError(f"a grid of 2**-{grid} is finer than the quotient's 2**-{fine - 8}")
    stype = type(denominators[0])
    need = precision.field_bits(bits) + mpc.options.sec_param - 30
    if stype.field.order.bit_length() < need:
        raise ValueError(f"a {need}-bit field is needed for ratios of {bits}-bit integers")
    distinct: dict[int, int] = {}
    for d in denominators:
        distinct.setdefault(id(d), len(distinct))
    unique = list({id(d): d for d in denominators}.values())
    if nonzero:
        zero = [False] * len(unique)
    else:
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
    y, outside = await approximate_quotients(
        mpc, nums, dens, index, bits, small, precision=precision
    )
    # the range test first: nothing else is opened for a ratio out of range
    far = [not z for z in await mpc.np_is_zero_public(outside)]
    shown = [j for j in range(len(kept)) if not far[j]]
    if not shown:
        return out
    limit = precision.magnitude_bits(mpc.threshold)
    moved = await convert(mpc, y[np.array(shown)], small, limit)
    if grid is not None:
        units = _ints(await mpc.output(await grid_units(mpc, moved, grid, precision)))
        for j, q in zip(shown, units, strict=True):
            out[kept[j]] = math.ldexp(q - (1 << (precision.range_bits + grid)), -grid)
        return out
    sign, mantissa, leading = await rounded_units(mpc, moved, significant, precision)
    opened = await mpc.output(mpc.np_hstack((sign, mantissa, leading)))
    values = _ints(opened)
    k = len(shown)
    zero_band = math.ldexp(2 * bias_units(mpc.threshold) + 1, -fine)
    for j, s_bit, q, i in zip(shown, values[:k], values[k : 2 * k], values[2 * k :], strict=True):
        magnitude = math.ldexp(q, limit - 1 - significant - i - fine)
        if magnitude < zero_band:  # within the approximation's error of 0: 0 exactly
            out[kept[j]] = 0.0
        else:
            out[kept[j]] = magnitude if s_bit else -magnitude
    return out
