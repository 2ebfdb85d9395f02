"""Range checks of a party's own inputs by bit decomposition: cheap for many small values.

A secure comparison costs a few dozen random bits and a carry circuit per value; checking that
tens of thousands of counts are non-negative that way (a survival table's per-step counts)
takes minutes. But a party knows its own values: it can input their bits too, and the parties
then only check that the bits are bits and add up to the values, both in one batch.

Each party inputs, for its own values x (honest: 0 ≤ x < 2**bits), the bits b_(i,j) of each
x_i. After every input is in, the parties open a random challenge ρ (a fresh random field
element, uniformly random to everyone: `mpc._random`) and derive from it public coefficients
c_(i,j), d_i ∈ [0, 2**62) (numpy's PCG64 seeded by ρ). Then

    Z = Σ_party Σ_(i,j) c·(b² − b) + Σ_party Σ_i d·(x_i − Σ_j 2**j·b_(i,j))

is computed on each party's shares (Σ c·b² as a sharing of degree 2t, re-randomised by a
pseudorandom sharing of zero and opened at once: `_is_zero`). If every bit is 0 or 1 and every
x equals its bits, Z = 0. If not, Z is a non-zero linear form in the coefficients, chosen after
the inputs were fixed, and Z = 0 with probability at most 2**-62. A value that passes is an
integer in [0, 2**bits) (the field is far larger than 2**(bits + 1)), so it was non-negative.

Opens: the challenge ρ (random, independent of every input) and Z, which is 0 in an honest run
and otherwise a function of the dishonest parties' own inputs only: every honest party's terms
are exactly 0, and each party's values must be functions of its own inputs (and public
values), as every caller's are. Cost per party: N·bits inputs, about 3·N·bits local products,
three rounds (the inputs, the challenge, Z), against N secure comparisons.

Opening Z is right only where an honest party's values are always in range (counts, selection
sizes: by construction). Where an honest party's own data can break the range (a sum outside a
column's declared bounds), Z would be a function of that party's inputs, so `private=True`
opens only [Z = 0], as MPyC's `is_zero_public` (one more multiplication and a random mask): one
bit, whatever the inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

COEFFICIENT_BITS = 62


def bit_matrix(values: np.ndarray, bits: int) -> np.ndarray:
    """The bits of non-negative integers below 2**bits (rows: values, columns: bit j); any
    integer width (Python integers in an object array beyond 63 bits)."""
    numbers = [int(v) for v in np.asarray(values).ravel()]
    if any(v < 0 or v >> bits for v in numbers):
        raise ValueError(f"a value outside [0, 2**{bits}) cannot be decomposed")
    if bits <= 62:
        small = np.array(numbers, dtype=np.int64).reshape(-1, 1)
        return (small >> np.arange(bits, dtype=np.int64)) & 1
    return np.array([[(v >> j) & 1 for j in range(bits)] for v in numbers], dtype=np.int64)


async def all_in_range(
    mpc: Any, secint: Any, values: Any, own: np.ndarray, bits: int, *, private: bool = False
) -> bool:
    """Whether every party's secret `values` lies in [0, 2**bits): a list over the parties of
    equal-length secure 1-D arrays, already input, or one secure array of shape (parties, L)
    with party i's values in row i. `own` is this party's plaintext copy of its own values
    (what it input; a value outside the range is input as 0s, so it fails). Opens the
    challenge and Z (module docstring), or with `private` only whether Z is 0; the parties'
    terms are computed as one vector (a single inner product reshared)."""
    if bits + 1 >= secint.field.order.bit_length():
        raise ValueError(f"a range of 2**{bits} does not fit the field of {secint.__name__}")
    size = len(own)
    if size == 0:
        return True
    fitting = [v if 0 <= v < 1 << bits else 0 for v in (int(x) for x in np.asarray(own))]
    local = bit_matrix(np.array(fitting, dtype=object), bits).ravel().astype(object)
    site_bits = mpc.input(secint.array(local))
    parties = len(site_bits)
    every = mpc.np_concatenate(values) if isinstance(values, list) else values.reshape(-1)
    b = mpc.np_concatenate(site_bits) if parties > 1 else site_bits[0]
    rho = int(await mpc.output(mpc._random(secint)))
    rng = np.random.default_rng(rho % (1 << 128))
    c = rng.integers(0, 1 << COEFFICIENT_BITS, parties * size * bits, dtype=np.int64)
    d = rng.integers(0, 1 << COEFFICIENT_BITS, parties * size, dtype=np.int64)
    c, d = c.astype(object), d.astype(object)
    return await _is_zero(mpc, secint, b, every, c, d, bits, private)


async def _is_zero(
    mpc: Any,
    secint: Any,
    b: Any,
    every: Any,
    c: np.ndarray,
    d: np.ndarray,
    bits: int,
    private: bool = False,
) -> bool:
    """[Z = 0] for Z = Σ c·(b² − b) + Σ d·(x − Σ_j 2**j·b_j), opened in one round: Z is
    computed on this party's shares (the products b² are a sharing of degree 2t, never
    reshared), re-randomised by a pseudorandom sharing of zero of the same degree (PRSS, as
    MPyC's own zero test in small fields) and opened at threshold 2t. Z itself is opened, not
    Z times a random: every honest party's terms are exactly 0, so Z is a function of the
    inputs of the parties that broke the range (and the public coefficients) alone, and an
    honest run opens 0. Without PRSS keys, or `private`: MPyC's `is_zero_public` of the
    reshared Z, which opens one bit."""
    field = secint.field
    weights = np.array([1 << j for j in range(bits)], dtype=object)
    if mpc.options.no_prss or private:
        weighted = b * c
        decomposed = b.reshape(-1, bits) @ weights
        total = weighted @ b - mpc.np_sum(weighted) + mpc.np_sum((every - decomposed) * d)
        return bool(await mpc.is_zero_public(total))
    from mpyc import thresha

    shares = (await mpc.gather(b)).value
    values = (await mpc.gather(every)).value
    weighted = shares * c
    linear = values - shares.reshape(-1, bits) @ weights
    local = int((weighted * shares).sum()) - int(weighted.sum()) + int((linear * d).sum())
    m = len(mpc.parties)
    (zero,) = thresha.pseudorandom_share_zero(
        field, m, mpc.pid, mpc.prfs(field.order), mpc._prss_uci(), 1
    )
    opened = await mpc.output(field(local) + zero, threshold=2 * mpc.threshold)
    return bool(opened == 0)
