"""The quantile's plaintext pieces: numpy's inverted-CDF rank, order keys, local inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from smpc import local_summary, prepare
from smpc.encoding import order_key
from smpc.frames import infer_schema
from smpc.statistics.quantile import inverted_cdf_rank, order_keys, quantile_key, split_bits
from tessera.errors import QueryInvalid
from tessera.schemas import DatasetSchema

LEVELS = [0.0, 1e-9, 0.01, 0.1, 0.2, 0.25, 0.3, 1 / 3, 0.5, 0.6, 0.7, 2 / 3, 0.9, 0.99, 1.0]


def with_bounds(schema: DatasetSchema, column: str, low: float, high: float) -> DatasetSchema:
    """`schema` with declared bounds on `column` (public knowledge: the quantile's noise scale)."""
    raw = schema.model_dump()
    for spec in raw["columns"]:
        if spec["name"] == column:
            spec.update(min=low, max=high)
    return DatasetSchema.model_validate(raw)


@pytest.mark.parametrize("n", [*range(1, 41), 97, 100, 1000, 1001, 12345])
def test_the_rank_is_the_one_numpy_takes(n: int) -> None:
    positions = np.quantile(np.arange(n), LEVELS, method="inverted_cdf")
    assert [inverted_cdf_rank(n, q) - 1 for q in LEVELS] == positions.tolist()


def test_order_keys_are_exact_and_keep_the_order() -> None:
    values = np.array([-np.inf, -1e308, -1.5, -5e-324, -0.0, 0.0, 5e-324, 1.0, 2.5e300, np.inf])
    keys = order_keys(values)
    assert keys.tolist() == [order_key(v) for v in values]
    assert np.all(np.diff(keys) > 0)


def test_result_keys_and_round_widths() -> None:
    assert [quantile_key(q) for q in (0, 0.5, 1, 0.025)] == ["0.0", "0.5", "1.0", "0.025"]
    assert [split_bits(m) for m in (1, 2, 17, 18, 85, 86, 300)] == [8, 4, 4, 2, 2, 1, 1]


def test_local_input_shares_counts_and_keeps_its_rows_for_its_own_party() -> None:
    frame = pd.DataFrame({"x": [3.0, np.nan, -1.0, 7.5, 2.0], "g": ["a", "b", "b", "a", "a"]})
    schema = with_bounds(infer_schema([frame]), "x", -10, 10)  # a quantile needs them
    query = prepare(
        {"statistic": "quantile", "dataset": "d", "column": "x", "q": [0.5], "group_by": ["g"]},
        schema,
    )
    summary = local_summary(query, frame, schema)
    assert summary.counts == [3, 1]
    rows = summary.unpack_rows()
    assert sorted(map(tuple, rows.tolist())) == [(0.0, 2.0), (0.0, 3.0), (0.0, 7.5), (1.0, -1.0)]
    # shared: the counts and the cells' key sums (for the cell-key perturbation), no moments
    assert list(summary.vectors) == ["keys"] and summary.moments == {}
    keys = summary.vectors["keys"]
    assert len(keys) == 4 and all(0 <= k < 2**24 for k in keys)


def test_a_quantile_needs_the_columns_declared_bounds() -> None:
    frame = pd.DataFrame({"x": [3.0, -1.0, 7.5, 2.0]})
    query = {"statistic": "quantile", "dataset": "d", "column": "x", "q": [0.5]}
    with pytest.raises(QueryInvalid, match="needs the column's declared bounds"):
        prepare(query, infer_schema([frame]))
    prepare(query, with_bounds(infer_schema([frame]), "x", -10, 10))
