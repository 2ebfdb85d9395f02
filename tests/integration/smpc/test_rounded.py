"""`smpc.rounded.open_rounded_ratios` against exact fractions, over real MPyC parties.

Each opened ratio must be |num/den| + β truncated toward zero to 25 significant bits, with its
sign, for a β below (2t + 6)·2**-64 (inside the documented band: 2**-36 ≤ |num/den| < 2**40);
below 2**-36 within 2**-58 of the exact value; beyond 2**44 None, between 2**40 and 2**44 None
or the rounded value; 0 for a zero numerator, None for a zero denominator.
"""

from __future__ import annotations

import json
import math
import random
from fractions import Fraction
from pathlib import Path

import pytest

from .party_script import run_parties

PARTY = Path(__file__).with_name("rounded_party.py")


def truncated(ratio: Fraction) -> float:
    """|ratio| truncated toward zero to 25 significant bits, with ratio's sign."""
    if ratio == 0:
        return 0.0
    magnitude = abs(ratio)
    e = magnitude.numerator.bit_length() - magnitude.denominator.bit_length()
    if magnitude < Fraction(2) ** e:
        e -= 1  # 2**e ≤ |ratio| < 2**(e + 1)
    value = math.ldexp(math.floor(magnitude / Fraction(2) ** (e - 24)), e - 24)
    return value if ratio > 0 else -value


def acceptable(opened: float | None, num: int, den: int, parties: int) -> bool:
    if den == 0:
        return opened is None
    ratio = Fraction(num, den)
    if abs(ratio) >= 2**44:
        return opened is None
    # the opened value is sign · trunc(|ratio| + β) for a β in (0, (2t + 6)·2**-64)
    beta = Fraction(2 * ((parties - 1) // 2) + 6, 2**64)
    nudged = ratio + beta if ratio > 0 else ratio - beta
    if abs(ratio) >= 2**40:
        return opened is None or opened in (truncated(ratio), truncated(nudged))
    if abs(ratio) < Fraction(2) ** -36:
        return opened is not None and abs(Fraction(opened) - ratio) < Fraction(2) ** -58
    return opened in (truncated(ratio), truncated(nudged))


def pairs(bits: int, count: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        den_bits = rng.randrange(1, bits)
        num_bits = max(1, min(bits - 1, den_bits + rng.randrange(-50, 50)))
        out.append((rng.choice([-1, 1]) * rng.getrandbits(num_bits), rng.getrandbits(den_bits) | 1))
    top = 1 << (bits - 2)
    out += [
        (0, 9),
        (7, 0),
        (-3, 3),
        (5, top + 1),
        (-(1 << 50), 3),
        (1 << 50, 7),
        (-top, 1),
        (12345, 12345),
        (-1, 8),
        (-1, 3),
        (3 << 30, 3),
        (-(3 << 30), 1 << 20),
        (1, top),
        (10**13, 1),
        (2**39, 1),
        (-(2**41), 1),
        (-4, 5),
        (-1024, 5),
        (1, 3),
    ]  # zero, zero denominator, powers of two (negative too), tiny, huge, on the grid
    return out


def run(task: dict[str, object], parties: int) -> list[float | None]:
    outputs = run_parties(PARTY, {"TESSERA_RATIOS": json.dumps(task)}, parties, timeout=240)
    assert all(out == outputs[0] for out in outputs)  # every party opens the same values
    return outputs[0]


@pytest.mark.parametrize(
    ("parties", "bits", "count"), [(1, 300, 200), (3, 300, 30), (3, 900, 6), (5, 300, 8)]
)
def test_opened_ratios_are_the_exact_ratios_truncated_to_25_significant_bits(
    parties: int, bits: int, count: int
) -> None:
    cases = pairs(bits, count, seed=bits + parties)
    shared = [1, -5, 3 * 12345678, 0, 12345678 * 2**20]  # over the last pair's denominator
    cases.append((7, 12345678))
    task = {"bits": bits, "pairs": [[str(n), str(d)] for n, d in cases], "shared": shared}
    opened = run(task, parties)
    expected = cases + [(n, 12345678) for n in shared]
    assert len(opened) == len(expected)
    wrong = [
        (n, d, o)
        for (n, d), o in zip(expected, opened, strict=True)
        if not acceptable(o, n, d, parties)
    ]
    assert not wrong, wrong[:5]


def test_the_same_ratios_open_the_same_values_every_time() -> None:
    """Deterministic: the rounding does not depend on the run's randomness (repeating a query
    averages nothing away), even for values on the 25-bit grid."""
    cases = [(1, 4), (-3, 4), (2**30, 3), (7, 7), (5, 1), (-(2**20), 2**21)]
    task = {"bits": 200, "pairs": [[str(n), str(d)] for n, d in cases], "shared": []}
    first = run(task, 3)
    assert first == [truncated(Fraction(n, d)) for n, d in cases]
    assert run(task, 3) == first


def on_grid(
    opened: float | None, num: int, den: int, grid: int, parties: int, fine: int = 64
) -> bool:
    """`grid`: num/den + β rounded down to a multiple of 2**-grid, β as in `acceptable` in
    units of 2**-fine (as the nearest float: beyond 2**(53 − grid) a multiple of 2**-grid has
    more bits than one)."""
    ratio = Fraction(num, den)
    beta = Fraction(2 * ((parties - 1) // 2) + 6, 2**fine)
    down = {float(math.floor(v * 2**grid) / Fraction(2**grid)) for v in (ratio, ratio + beta)}
    return opened in down


@pytest.mark.parametrize("parties", [3, 5])
def test_a_grid_opens_each_ratio_rounded_down_to_its_multiples(parties: int) -> None:
    """`grid` (a logistic regression's steps, a correlation's r²): num/den rounded down to a
    multiple of 2**-grid inside MPC, negative values toward −∞; at a correlation's precision
    (ratios up to about 1) 0 and 1 open as themselves, and a ratio far
    beyond its range is null."""
    rng = random.Random(5 + parties)
    bounded = [(0, 9), (9, 9), (1, 3), (2**40, 2**41 + 1), (1, 2**200), (3, 4), (2**31 + 1, 2**32)]
    for _ in range(12):
        den = rng.getrandbits(rng.randrange(2, 250)) | 1
        bounded.append((rng.randrange(den + 1), den))
    bounded += [(2**20, 1), (2**200, 3)]  # far beyond the correlation's range: null
    signed = [(-1, 3), (-(2**50), 7), (10**12 + 1, 3), (-5, 2**45), (7, 0), (2**45, 1)]
    correlation = {"precision": [1, 64]}
    for cases, flags, grid in ((bounded, correlation, 32), (signed, {}, 40)):
        task = {
            "bits": 250,
            "pairs": [[str(n), str(d)] for n, d in cases],
            "shared": [],
            "flags": {**flags, "grid": grid},
        }
        opened = run(task, parties)
        wrong = []
        limit = 2**10 if flags else 2**44
        unit = 64
        for (n, d), o in zip(cases, opened, strict=True):
            if d == 0 or abs(Fraction(n, d)) >= limit:
                fine = o is None
            else:
                fine = on_grid(o, n, d, grid, parties, unit)
            if not fine:
                wrong.append((n, d, o))
        assert not wrong, wrong[:5]


@pytest.mark.parametrize("parties", [3, 5])
def test_low_bits_are_the_values_modulo_a_power_of_two(parties: int) -> None:
    """`low_bits` (the cell keys' bits): x mod 2**l, two's complement for negative x, as
    MPyC's `np_to_bits`, with the secure integers' whole range in use."""
    width, bits = 66, 24
    values = [0, 1, -1, 2**24 - 1, 2**24, 2**40 + 12345, -(2**64) + 7, 2**64 - 1, 5 << 30]
    task = {"bits": bits, "width": width, "values": [str(v) for v in values]}
    outputs = run_parties(PARTY, {"TESSERA_LOW_BITS": json.dumps(task)}, parties, timeout=120)
    assert all(out == outputs[0] for out in outputs)
    assert outputs[0] == [[(v % 2**bits) >> j & 1 for j in range(bits)] for v in values]


@pytest.mark.parametrize("parties", [3, 5])
def test_risk_reciprocals_are_within_their_relative_error(parties: int) -> None:
    """`risk_reciprocals` (a log-rank test's 2**F / r and 2**F / (r²(r − 1)) per grid point):
    within a relative error of 2**-70 across the whole range of a pooled risk set, u = 0 at
    r = 0 and y = 0 at r ≤ 1 (their stand-ins never reach the output)."""
    bits, scale = 32, 192
    rng = random.Random(parties)
    values = [0, 1, 2, 3, 7, 1000, 2**31 - 1, 2**31, 2**32 - 1]
    values += [rng.randrange(2, 2 ** rng.randrange(2, 33)) for _ in range(12)]
    task = {"bits": bits, "scale": scale, "values": [str(v) for v in values]}
    outputs = run_parties(PARTY, {"TESSERA_RECIPROCALS": json.dumps(task)}, parties, timeout=120)
    assert all(out == outputs[0] for out in outputs)
    wrong = []
    for r, (u, y) in zip(values, outputs[0], strict=True):
        u_exact = Fraction(2**scale, r) if r else Fraction(0)
        y_exact = Fraction(2**scale, r * r * (r - 1)) if r > 1 else Fraction(0)
        for got, want in ((int(u), u_exact), (int(y), y_exact)):
            if abs(got - want) > want * Fraction(1, 2**70) + 1:
                wrong.append((r, got, float(want)))
    assert not wrong, wrong[:5]
