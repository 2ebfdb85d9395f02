"""Exact rational arithmetic on secret-shared integers, and opening a ratio and nothing else.

The statistics that solve equations or divide (regressions, correlation, Welch's t, χ²) work
on the parties' pooled fixed-point integers in a large prime field, where addition and
multiplication are exact and division by a nonzero value is multiplication by its field inverse:

- `exact_type(mpc, bits)` is a secure integer type over a Mersenne prime field 2**e − 1 (a known
  prime, so no prime search at run time) large enough for values of `bits` bits;
- `gauss_jordan` is fraction-free (Bareiss) Gauss–Jordan elimination of [G | B] for a symmetric
  positive semi-definite G: every intermediate is a minor of the input, so it is an exact
  integer and stays within Hadamard's bound; it ends with det(G)·I | adj(G)·B. A (nearly)
  singular G raises `Singular`, which carries no column and no tolerance;
- `open_ratios` opens a list of fractions num_i / den. A secret uniformly random field element
  r, unknown to every party, masks them: the parties open r·den and r·num_i and recover each
  num_i / den mod p, and from it the fraction itself by rational reconstruction (possible when
  |num|·den < p/2). The opened pair (r·num_i, r·den) is a uniformly random point on the line
  through (num_i, den), so it reveals the ratio and nothing else about num_i or den.

Costs: one elimination step is three vectorised multiplications of a p × c array and one
secure reciprocal (one round each); fields of thousands of bits make each multiplication a
few microseconds of big-integer arithmetic per party.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from tessera.errors import QueryInvalid

MERSENNE_EXPONENTS = (521, 607, 1279, 2203, 2281, 3217, 4253, 4423, 9689, 9941, 11213, 19937)
LARGEST_FIELD_BITS = MERSENNE_EXPONENTS[-1]


def field_exponent(bits: int) -> int:
    """The smallest Mersenne exponent e with 2**e − 1 > 2**(bits + 1)."""
    for e in MERSENNE_EXPONENTS:
        if e >= bits + 2:
            return e
    raise QueryInvalid(
        f"the computation needs a {bits}-bit field, more than the largest supported "
        f"({LARGEST_FIELD_BITS} bits); use fewer columns or predictors",
        {"field_bits": bits},
    )


def exact_type(mpc: Any, bits: int, compare_bits: int = 0) -> Any:
    """A secure integer type whose field holds any integer of `bits` bits exactly.

    `compare_bits` is the bit length of values this type must compare (`<`, signs); it must
    leave room for MPyC's statistical security parameter below the field size.
    """
    e = field_exponent(max(bits, compare_bits + mpc.options.sec_param + 2))
    length = compare_bits or e - mpc.options.sec_param - 2
    if sys.get_int_max_str_digits() and sys.get_int_max_str_digits() < 7000:
        sys.set_int_max_str_digits(7000)  # MPyC names the type after the prime, in decimal
    return mpc.SecInt(length, p=(1 << e) - 1)


def rational(value: int, modulus: int) -> Fraction:
    """The fraction num/den ≡ value (mod modulus) with |num|, den ≤ sqrt(modulus / 2)."""
    bound = math.isqrt(modulus // 2)
    r0, r1 = modulus, value % modulus
    s0, s1 = 0, 1
    while r1 > bound:
        q = r0 // r1
        r0, r1 = r1, r0 - q * r1
        s0, s1 = s1, s0 - q * s1
    if s1 == 0 or abs(s1) > bound:
        raise ArithmeticError("no small fraction for this residue: the field is too small")
    return Fraction(r1, s1)


async def open_ratios(
    mpc: Any, numerators: Sequence[Any], denominator: Any
) -> list[Fraction] | None:
    """Open num_i / den for every numerator, masked by one secret random factor.

    Returns None if den is zero (then nothing else is learnt: every masked value is zero or
    uniformly random).
    """
    stype = type(denominator)
    mask = mpc._random(stype)
    masked = await mpc.output([mask * denominator, *(mask * x for x in numerators)])
    p = stype.field.order
    den = int(masked[0]) % p
    if den == 0:
        return None
    inverse = pow(den, -1, p)
    return [rational(int(v) * inverse % p, p) for v in masked[1:]]


async def open_ratio_pairs(
    mpc: Any, numerators: Sequence[Any], denominators: Sequence[Any]
) -> list[Fraction | None]:
    """Open num_i / den_i, each pair under its own secret random mask (None where den_i = 0)."""
    if not numerators:
        return []
    stype = type(denominators[0])
    masks = mpc._randoms(stype, len(numerators))
    products = [m * x for m, x in zip(masks, [*numerators], strict=True)]
    products += [m * d for m, d in zip(masks, [*denominators], strict=True)]
    masked = await mpc.output(products)
    p = stype.field.order
    k = len(numerators)
    out: list[Fraction | None] = []
    for num, den in zip(masked[:k], masked[k:], strict=True):
        d = int(den) % p
        out.append(None if d == 0 else rational(int(num) * pow(d, -1, p) % p, p))
    return out


async def open_ratio_arrays(mpc: Any, numerators: Any, denominators: Any) -> list[Fraction | None]:
    """`open_ratio_pairs` for two secure 1-D arrays of equal length (one round, vectorised)."""
    size = numerators.shape[0]
    if size == 0:
        return []
    stype = type(denominators).sectype
    masks = mpc.np_fromlist(mpc._randoms(stype, size))
    masked = await mpc.output(mpc.np_hstack((masks * numerators, masks * denominators)))
    p = stype.field.order
    values = [int(v) for v in np.asarray(masked).ravel()]
    out: list[Fraction | None] = []
    for num, den in zip(values[:size], values[size:], strict=True):
        d = den % p
        out.append(None if d == 0 else rational(num * pow(d, -1, p) % p, p))
    return out


class Singular(Exception):
    """The pooled Gram matrix is singular, or nearly: some column is (nearly) a linear
    combination of the earlier ones.

    Carries nothing: no column, no tolerance. It is raised at every party alike, from what all
    opened, so the refusal it becomes names no term, node or value."""


def hadamard_bits(size: int, entry_bits: int) -> int:
    """Bits of any minor of a size × size integer matrix with |entries| < 2**entry_bits."""
    return math.ceil(size * (entry_bits + math.log2(max(size, 1)) / 2)) + 1


TOLERANCE_FACTOR = 10**10  # a pivot is refused below 1e-10 of its column's scaled diagonal


async def gauss_jordan(
    mpc: Any, matrix: Any, size: int, entry_bits: int | None = None
) -> tuple[Any, Any]:
    """Fraction-free Gauss–Jordan on the secure array `matrix` = [G | B], G size × size PSD.

    Returns det(G) and adj(G)·B, both secret. Before pivot k the parties open the pivot d_k
    under a fresh secret random factor (uniformly random unless d_k = 0: it inverts the pivot
    for the next step). After the last step one bit is opened, decided inside MPC
    (`smpc.rounded.all_nonnegative`): is every pivot's tolerance
    d_k / (d_(k−1)·G_kk) = 1 − R² of column k on columns 0..k−1 (uncentred) at least 1e-10?
    No tolerance, nor which one failed, is opened. A zero pivot or a failed bit raises
    `Singular`, which carries nothing (no column, no tolerance): the refusal names no term and
    no value. `entry_bits` bounds |G_ij| (it sizes the comparison; the field's size if None).

    Step k only reads column k of the left block again, so each step drops the column it has
    eliminated: the work is about size² · (size/2 + B's width) products in all.
    """
    from smpc.rounded import all_nonnegative

    stype = type(matrix).sectype
    p = stype.field.order
    if entry_bits is None:
        bits = p.bit_length() - mpc.options.sec_param - 8
    else:  # |d_k·10^10| and |d_(k−1)·G_kk| below
        bits = hadamard_bits(size, entry_bits) + entry_bits + TOLERANCE_FACTOR.bit_length() + 2
    diagonal = [matrix[k, k] for k in range(size)]
    inverse: Any = None  # the previous pivot's inverse, kept secret
    previous: Any = None
    margins = []
    for k in range(size):
        pivot = matrix[k, 0]  # column 0 is always the current pivot column
        scaled_diagonal = diagonal[k] if inverse is None else previous * diagonal[k]
        mask = mpc._random(stype)
        # Decided before the step's update is scheduled: a refusal leaves no exchange pending
        # (a party that stops while others still send would end the run as a timeout).
        u = int(await mpc.output(mask * pivot)) % p
        if u == 0:
            raise Singular
        margins.append(pivot * TOLERANCE_FACTOR - scaled_diagonal)
        row = matrix[k, 1:]
        column = matrix[:, 0]
        updated = matrix[:, 1:] * pivot - mpc.np_outer(column, row)
        if inverse is not None:
            updated = updated * inverse
        matrix = mpc.np_update(updated, k, row)  # the pivot row stays as it was
        inverse = mask * stype.field(pow(u, -1, p))
        previous = pivot
    # every margin's comparison at once; awaited, so a refusal leaves no exchange pending
    if not await all_nonnegative(mpc, mpc.np_fromlist(margins), bits):
        raise Singular
    return previous, matrix


def to_field_array(stype: Any, values: np.ndarray | Sequence[int]) -> Any:
    return stype.array(np.array(values, dtype=object))


def fraction_inverse(matrix: list[list[Fraction]]) -> list[list[Fraction]]:
    """The exact inverse of a nonsingular square matrix of fractions (Gauss–Jordan with row
    pivoting; plaintext twins in tests). Raises ZeroDivisionError for a singular matrix."""
    size = len(matrix)
    rows = [
        [Fraction(v) for v in row] + [Fraction(int(i == j)) for j in range(size)]
        for i, row in enumerate(matrix)
    ]
    for col in range(size):
        pivot = next((r for r in range(col, size) if rows[r][col] != 0), None)
        if pivot is None:
            raise ZeroDivisionError("singular matrix")
        rows[col], rows[pivot] = rows[pivot], rows[col]
        head = rows[col][col]
        rows[col] = [v / head for v in rows[col]]
        for r in range(size):
            if r != col and rows[r][col] != 0:
                factor = rows[r][col]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col], strict=True)]
    return [row[size:] for row in rows]
