"""Row keys are keyed by the node's secret, whatever the columns' types."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from smpc.cellkey import key_sums, new_secret, remembered_row_keys, row_keys, unchanging


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


def _counted(frame: pd.DataFrame, secret: str) -> tuple[list[int], Any]:
    calls = [0]

    def compute() -> np.ndarray:
        calls[0] += 1
        return row_keys(frame, secret)

    return calls, compute


def test_an_unchanging_frames_row_keys_are_computed_once_per_secret_and_schema() -> None:
    frame = unchanging(pd.DataFrame({"x": [1.0, 2.0, 3.0]}))
    secret, other = new_secret(), new_secret()
    calls, compute = _counted(frame, secret)
    first = remembered_row_keys(frame, secret, "schema", compute)
    again = remembered_row_keys(frame, secret, "schema", compute)
    assert calls == [1] and again is first
    assert not first.flags.writeable  # nobody can change what later queries read
    assert np.array_equal(first, row_keys(frame, secret))
    # another secret or another schema: computed anew
    _, other_compute = _counted(frame, other)
    assert not np.array_equal(remembered_row_keys(frame, other, "schema", other_compute), first)
    remembered_row_keys(frame, secret, "another schema", compute)
    assert calls == [2]


def test_any_other_frame_is_keyed_every_time() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0]})
    secret = new_secret()
    calls, compute = _counted(frame, secret)
    remembered_row_keys(frame, secret, "schema", compute)
    frame.loc[0, "x"] = 5.0  # a caller's frame may change between queries
    keys = remembered_row_keys(frame, secret, "schema", compute)
    assert calls == [2] and np.array_equal(keys, row_keys(frame, secret))


def test_a_dropped_frame_takes_its_keys_along() -> None:
    import gc

    from smpc import cellkey

    frame = unchanging(pd.DataFrame({"x": [1.0]}))
    _, compute = _counted(frame, new_secret())
    remembered_row_keys(frame, new_secret(), "schema", compute)
    frame_id = id(frame)
    assert frame_id in cellkey._UNCHANGING
    del frame, compute
    gc.collect()
    assert frame_id not in cellkey._UNCHANGING
