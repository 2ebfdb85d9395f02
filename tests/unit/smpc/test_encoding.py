"""Integer encodings: fixed-point moments."""

from __future__ import annotations

import math

import pytest

from smpc.encoding import FRAC_BITS, MOMENT_LIMIT, decode_moment, encode_moment


def test_moments_round_once_to_the_fixed_point_grid() -> None:
    for v in [0.0, 1.0, -2.5, 1234567.891, 1e-9, 3.3e20]:
        assert abs(decode_moment(encode_moment(v)) - v) <= 2.0 ** -(FRAC_BITS + 1)


@pytest.mark.parametrize("bad", [float(MOMENT_LIMIT), -float(MOMENT_LIMIT) * 2, math.nan, math.inf])
def test_out_of_range_moments_are_refused(bad: float) -> None:
    with pytest.raises(OverflowError, match="fixed-point range"):
        encode_moment(bad)
