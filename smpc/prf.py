"""Damgård's Legendre pseudorandom function, evaluated inside MPC on a secret key.

F_K(c) = [(K + c | p) = −1]: the bit that says whether K + c is a quadratic non-residue modulo
the prime p, for a secret key K and public inputs c. Without K the bits of distinct inputs look
independent and uniform (Damgård 1988; the Legendre PRF of Grassi et al., CCS 2016, chosen
there for being cheap in MPC), and keys that differ by an unknown amount give unrelated
sequences. Tessera uses it where a perturbation must change at *every* position when one row
joins a cell (`smpc.statistics.kaplan_meier`'s per-step counts in the `exact` mode): the cell's
key is the sum of its rows' 64-bit keys (`smpc.cellkey.row_keys`), so from outside (the analyst,
or a node that lacks another site's rows' keys) it has at least 64 bits of entropy, and a
brute force over keys is out of reach.

Inside MPC, per bit (vectorised; 2t + 1 secure products in t + 1 rounds, three in two with 3
parties, and one opening):

1. t + 1 parties each input w = s²·η**b for a random nonzero s and a random bit b of their own
   (η a public non-residue), uniform on the nonzero field with symbol (w | p) = (−1)**b, and that
   symbol; ν = Π w is then uniform on the nonzero field (one honest party's factor is) and its
   symbol χ = Π (w | p) is secret;
2. c = (K + c_j)·ν is opened: uniform on the nonzero field whatever K is (ν is), so it says
   nothing about K;
3. (K + c_j | p) = (c | p)·χ, and the output bit is (1 − (c | p)·χ) / 2: linear in χ.

The bits stay secret; the caller adds what it derives from them to other secrets in the same
field. `plain_bits` is the same function in plaintext (the tests' twin).
"""

from __future__ import annotations

import functools
import operator
import secrets
from typing import Any

import numpy as np

PRIME = (1 << 290) + 1227  # `field_type`'s field: 291 bits, p ≡ 3 (mod 4) (MPyC's random bits take
# a square root per bit, a cheap power modulo such a prime; with p ≡ 1 (mod 8) they took twice
# as long); 2 is its least non-residue
FIELD_BITS = 256  # the secure integers of that field: MPyC needs p > 2**(l + k + 1), k = 30


def field_type(mpc: Any) -> Any:
    """MPyC's secure integers over `PRIME`: the field every Legendre bit lives in."""
    return mpc.SecInt(FIELD_BITS, p=PRIME)


@functools.cache
def non_residue(p: int) -> int:
    """The least quadratic non-residue modulo the odd prime p."""
    from gmpy2 import legendre

    eta = 2
    while legendre(eta, p) != -1:
        eta += 1
    return eta


async def legendre_bits(mpc: Any, keys: Any, offsets: np.ndarray) -> Any:
    """Secret bits [(K_i + c_ij | p) = −1] for the secret keys K_i (a 1-D secure array of
    `field_type`, one key per row of `offsets`) and the public offsets c_ij (a 2-D array of
    Python ints), shaped like `offsets`. Opens only uniformly random nonzero field elements."""
    from gmpy2 import legendre

    from smpc.rounded import _senders

    stype = type(keys).sectype
    p = stype.field.modulus
    shape = offsets.shape
    size = int(np.prod(shape))
    eta = non_residue(p)
    # t + 1 parties each input w = s²·η**b (uniform on the nonzero field, symbol (−1)**b) and
    # its symbol: ν = Π w has the secret symbol Π (−1)**b, and is uniform if one party's is
    mine_w, mine_sign = np.empty(size, dtype=object), np.empty(size, dtype=object)
    for i in range(size):
        s = secrets.randbelow(p - 1) + 1
        b = secrets.randbits(1)
        mine_w[i] = s * s * (eta if b else 1) % p
        mine_sign[i] = -1 if b else 1
    mine = stype.array(np.concatenate((mine_w, mine_sign)))
    parts = mpc.input(mine, senders=_senders(mpc))
    both = functools.reduce(operator.mul, parts)  # (ν, its symbol), one product per party
    nu, symbol = both[:size].reshape(shape), both[size:].reshape(shape)
    inputs = keys.reshape(-1, 1) + np.asarray(offsets, dtype=object)
    masked = np.asarray(await mpc.output(inputs * nu), dtype=object).ravel()
    symbols = np.array([legendre(int(v) % p, p) for v in masked], dtype=object)
    if np.any(symbols == 0):  # K + c ≡ 0 or ν = 0: probability about 2**-290 per bit
        raise RuntimeError("a Legendre mask was zero; run the query again")
    # (K + c | p) = (c·ν | p)·(ν | p); the bit is (1 − that) / 2
    half = stype.field(2).reciprocal()
    return (1 - symbol * symbols.reshape(shape)) * half


def plain_bits(key: int, offsets: np.ndarray, p: int = PRIME) -> np.ndarray:
    """`legendre_bits` of one key, in plaintext."""
    from gmpy2 import legendre

    flat = [1 if legendre((key + int(c)) % p, p) == -1 else 0 for c in np.ravel(offsets)]
    return np.array(flat, dtype=np.int64).reshape(np.shape(offsets))
