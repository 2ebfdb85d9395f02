"""`smpc.ranges`: each party proves its own values lie in [0, 2**bits) by inputting their bits;
real MPyC parties over loopback (`party_script.run_parties`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from smpc.ranges import bit_matrix

from .party_script import run_parties

PARTY = Path(__file__).with_name("ranges_party.py")
VALUES = [[0, 5, 1023, 7], [3, 0, 0, 512], [1, 2, 4, 8]]


def check(task: dict, parties: int = 3) -> list[bool]:
    return run_parties(PARTY, {"TESSERA_RANGES": json.dumps(task)}, parties, timeout=120)


def test_bits_of_values() -> None:
    assert bit_matrix(np.array([0, 5, 6]), 3).tolist() == [[0, 0, 0], [1, 0, 1], [0, 1, 1]]
    with pytest.raises(ValueError, match="outside"):
        bit_matrix(np.array([8]), 3)
    with pytest.raises(ValueError, match="outside"):
        bit_matrix(np.array([-1]), 3)


def test_honest_values_pass_and_one_out_of_range_value_fails_at_every_party() -> None:
    assert check({"values": VALUES, "bits": 10}) == [True] * 3
    # 1023 does not fit 9 bits; a negative value fits none
    assert check({"values": VALUES, "bits": 9}) == [False] * 3
    negative = [row.copy() for row in VALUES]
    negative[2][1] = -2
    assert check({"values": negative, "bits": 10}) == [False] * 3


def test_bits_that_do_not_add_up_or_are_not_bits_fail() -> None:
    # party 1 inputs −5 but decomposes 5: its bits do not add up to its input
    lying = [row.copy() for row in VALUES]
    lying[1][0] = -5
    assert check({"values": lying, "bits": 10, "claimed": {"1": [5, 0, 0, 512]}}) == [False] * 3
    # party 0 writes 5 as bits (1, 2, 0, …)·2**j: they add up, but one "bit" is 2
    assert check({"values": VALUES, "bits": 10, "forged": {"0": [1, 1]}}) == [False] * 3


def test_a_failed_check_opens_only_the_cheating_partys_own_deviation() -> None:
    """The check opens a random challenge ρ and Z itself (one round, `smpc.ranges._is_zero`):
    every honest party's terms are exactly 0, so Z is the cheating party's own deviation. Party
    1 inputs −5 and the bits of 5; Z must be d·(−5 − 5) for its value's coefficient d drawn
    from ρ, whatever the honest parties hold (two runs with different honest values)."""
    bits = 10
    for honest in (VALUES, [[9, 9, 9, 9], VALUES[1], [100, 200, 300, 400]]):
        values = [row.copy() for row in honest]
        values[1] = [-5, 0, 0, 512]
        task = {"values": values, "bits": bits, "claimed": {"1": [5, 0, 0, 512]}, "record": True}
        outcomes = check(task)
        assert all(not o["passed"] for o in outcomes)
        assert all(o["opened"] == outcomes[0]["opened"] for o in outcomes)
        rho, z = (int(v) for v in outcomes[0]["opened"])
        rng = np.random.default_rng(rho % (1 << 128))
        size = len(values[0])
        rng.integers(0, 1 << 62, 3 * size * bits, dtype=np.int64)  # the bits' coefficients c
        d = rng.integers(0, 1 << 62, 3 * size, dtype=np.int64)
        modulus = int(outcomes[0]["modulus"])
        assert z % modulus == (-10 * int(d[size])) % modulus


def test_a_private_check_opens_one_bit_not_a_partys_deviation() -> None:
    """With `private` (a party's own data may break the range: `SiteInputs.check`), what is
    opened after the challenge is Z times a fresh random mask: 0 exactly when every value
    passed, otherwise a random field element, never d·(deviation) as the plain check opens."""
    bits = 10
    assert check({"values": VALUES, "bits": bits, "private": True}) == [True] * 3
    values = [row.copy() for row in VALUES]
    values[1] = [-5, 0, 0, 512]
    task = {"values": values, "bits": bits, "claimed": {"1": [5, 0, 0, 512]}, "record": True}
    masked = []
    for _ in range(2):
        outcomes = check({**task, "private": True})
        assert all(not o["passed"] for o in outcomes)
        assert all(o["opened"] == outcomes[0]["opened"] for o in outcomes)
        rho, z = (int(v) for v in outcomes[0]["opened"][:2])
        rng = np.random.default_rng(rho % (1 << 128))
        size = len(values[0])
        rng.integers(0, 1 << 62, 3 * size * bits, dtype=np.int64)
        d = rng.integers(0, 1 << 62, 3 * size, dtype=np.int64)
        modulus = int(outcomes[0]["modulus"])
        assert z % modulus not in (0, (-10 * int(d[size])) % modulus)
        masked.append(z)
    assert masked[0] != masked[1]


def test_one_party_alone() -> None:
    assert check({"values": [[1, 2, 3]], "bits": 2}, parties=1) == [True]
    assert check({"values": [[1, 2, 4]], "bits": 2}, parties=1) == [False]
