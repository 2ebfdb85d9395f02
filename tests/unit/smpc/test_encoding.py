"""Integer encodings: fixed-point moments and order keys of floats."""

from __future__ import annotations

import math
import random

import pytest

from smpc.encoding import (
    FRAC_BITS,
    MOMENT_LIMIT,
    decode_moment,
    encode_moment,
    from_order_key,
    order_key,
)

SPECIAL = [0.0, -0.0, 1.5, -1.5, 5e-324, -5e-324, 1e-300, -1e300, 1e308, math.inf, -math.inf]


def test_order_keys_sort_like_the_floats_and_invert_exactly() -> None:
    rng = random.Random(7)
    values = SPECIAL + [rng.uniform(-1e6, 1e6) for _ in range(2000)]
    values += [rng.gauss(0, 1) * 10 ** rng.randint(-300, 300) for _ in range(2000)]
    for v in values:
        assert from_order_key(order_key(v)) == v
        assert math.copysign(1, from_order_key(order_key(v))) == math.copysign(1, v)
    assert sorted(values) == sorted(values, key=order_key)


def test_moments_round_once_to_the_fixed_point_grid() -> None:
    for v in [0.0, 1.0, -2.5, 1234567.891, 1e-9, 3.3e20]:
        assert abs(decode_moment(encode_moment(v)) - v) <= 2.0 ** -(FRAC_BITS + 1)


@pytest.mark.parametrize("bad", [float(MOMENT_LIMIT), -float(MOMENT_LIMIT) * 2, math.nan, math.inf])
def test_out_of_range_moments_are_refused(bad: float) -> None:
    with pytest.raises(OverflowError, match="fixed-point range"):
        encode_moment(bad)
