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
