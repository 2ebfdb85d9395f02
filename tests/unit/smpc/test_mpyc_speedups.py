"""`smpc.mpyc_speedups`: MPyC's field-array constructor replaced by one that builds the same
arrays (reduced, copied or not as asked), and only when MPyC's own is the known one."""

from __future__ import annotations

import numpy as np
from mpyc import finfields

from smpc import mpyc_speedups


def test_install_replaces_the_known_constructor_and_builds_the_same_arrays() -> None:
    field = finfields.GF(2**61 - 1)
    before = field.array(np.array([-1, 5, 2**61], dtype=object))
    assert mpyc_speedups.install()
    assert mpyc_speedups.install()  # twice: still in place
    assert finfields.FiniteFieldArray.__init__ is mpyc_speedups._array_init
    after = field.array(np.array([-1, 5, 2**61], dtype=object))
    assert list(after.value) == list(before.value) == [2**61 - 2, 5, 1]
    # copy=False still shares an object array it was given; check=False leaves it unreduced
    values = np.array([3, 2**62], dtype=object)
    shared = field.array(values, check=False, copy=False)
    assert shared.value is values and shared.value[1] == 2**62
    copied = field.array(values, copy=True)
    assert copied.value is not values and list(values) == [3, 2**62]


def test_an_unknown_constructor_is_left_alone(monkeypatch) -> None:
    def other(self, value, check=True, copy=False):
        self.value = np.array(value, dtype=object)

    monkeypatch.setattr(finfields.FiniteFieldArray, "__init__", other)
    assert not mpyc_speedups.install()
    assert finfields.FiniteFieldArray.__init__ is other


def test_the_split_gives_shares_that_recombine_to_the_secrets() -> None:
    from mpyc import thresha

    assert mpyc_speedups.install()
    assert thresha.np_random_split is mpyc_speedups._np_random_split
    field = finfields.GF(2**127 - 1)
    secrets = np.array([0, 1, 2**126, 12345], dtype=object)
    for t, m in ((1, 3), (2, 5), (3, 7)):
        shares = thresha.np_random_split(field, field.array(secrets), t, m)
        assert shares.shape == (m, len(secrets))
        # any t + 1 parties recombine the secrets; the shares differ from call to call
        for chosen in (range(t + 1), range(m - t - 1, m)):
            back = thresha.np_recombine(field, [(i + 1, shares[i]) for i in chosen])
            assert [int(v) for v in back.value] == [int(v) for v in secrets]
        again = thresha.np_random_split(field, field.array(secrets), t, m)
        assert (shares[1:] != again[1:]).any()


def test_coefficients_cover_the_field_evenly() -> None:
    p = 2**61 - 1
    draws = mpyc_speedups.uniform_below(p, 20_000)
    assert all(0 <= int(v) < p for v in draws)
    # eight equal slices of [0, p): each about 2 500 draws (a 6-sigma band)
    counts = np.bincount([int(v) * 8 // p for v in draws], minlength=8)
    assert (abs(counts - 2500) < 6 * 47).all()
    assert len(set(int(v) for v in draws)) == 20_000
