"""Row keys are keyed by the node's secret, whatever the columns' types."""

from __future__ import annotations

import numpy as np
import pandas as pd

from smpc.cellkey import key_sums, new_secret, row_keys


def test_numeric_rows_get_keys_that_depend_on_the_secret() -> None:
    data = pd.DataFrame({"age": [1.0, 2.0, 3.0], "weight": [4.0, 5.0, 6.0]})
    a, b = new_secret(), new_secret()
    assert (row_keys(data, a) == row_keys(data, a)).all()  # persistent
    assert not (row_keys(data, a) == row_keys(data, b)).any()  # secret
    assert len(set(row_keys(data, a))) == 3


def test_text_rows_get_keys_that_depend_on_the_secret() -> None:
    data = pd.DataFrame({"sex": ["F", "M", "F"], "age": [1.0, 1.0, 2.0]})
    assert not (row_keys(data, new_secret()) == row_keys(data, new_secret())).any()


def test_key_sums_are_per_field_and_cell_modulo_two_to_the_24() -> None:
    keys = np.array([(5 << 24) | 7, (9 << 24) | ((1 << 24) - 1)], dtype=np.uint64)
    sums = key_sums(keys, np.array([0, 0]), 2)
    assert sums == [(7 + (1 << 24) - 1) % (1 << 24), 0, 14, 0]
