"""`smpc.prf`: the Legendre PRF inside MPC equals its plaintext twin; real MPyC parties over
loopback (`party_script.run_parties`)."""

from __future__ import annotations

import json
from pathlib import Path

import gmpy2
import numpy as np

from smpc import prf

from .party_script import run_parties

PARTY = Path(__file__).with_name("prf_party.py")


def test_the_field_is_a_prime_of_the_promised_shape() -> None:
    assert gmpy2.is_prime(prf.PRIME) and prf.PRIME % 4 == 3
    assert prf.PRIME.bit_length() > prf.FIELD_BITS + 30 + 1  # MPyC's bound for SecInt(l)
    assert prf.non_residue(prf.PRIME) == 2
    assert gmpy2.legendre(prf.non_residue(prf.PRIME), prf.PRIME) == -1


def test_plain_bits_look_uniform_and_independent_across_keys() -> None:
    offsets = np.arange(1, 4001)
    a = prf.plain_bits(2**64 + 12345, offsets)
    b = prf.plain_bits(2**64 + 12346, offsets)
    assert a.tolist() == prf.plain_bits(2**64 + 12345, offsets).tolist()  # deterministic
    # 4 000 fair bits: mean within 5 standard deviations (0.0079) of 1/2
    for bits in (a, b):
        assert abs(bits.mean() - 0.5) < 0.04
    assert abs((a == b).mean() - 0.5) < 0.04  # neighbouring keys: unrelated sequences
    # a key shifted by one offset gives the same sequence shifted: inputs are K + c
    assert prf.plain_bits(2**64 + 12346, offsets[:-1]).tolist() == a[1:].tolist()


def test_secure_bits_equal_the_plaintext_function_at_three_parties() -> None:
    keys = [[2**63 + 5, 17, 2**64 - 1], [12345678901234567, 0, 2**64 - 1], [1, 2, 2**64 - 1]]
    offsets = list(range(1, 41))
    task = {"keys": keys, "offsets": offsets}
    outputs = run_parties(PARTY, {"TESSERA_PRF": json.dumps(task)}, 3, timeout=120)
    assert outputs[0] == outputs[1] == outputs[2]
    for row, pooled in zip(outputs[0], np.array(keys, dtype=object).sum(axis=0), strict=True):
        assert row == prf.plain_bits(int(pooled), np.array(offsets)).tolist()
