"""The quantile's plaintext pieces: the rank, the fine grid and its search, local inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from smpc import local_summary, prepare
from smpc.frames import infer_schema
from smpc.statistics.quantile import GRID_BITS, grid_bins, grid_index, grid_rank, quantile_key
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
    """max(1, ⌈n·q⌉) of the exact fraction q: numpy's rank for these levels (its float
    product n·q − 1 could differ only within 2^-52 of an integer)."""
    positions = np.quantile(np.arange(n), LEVELS, method="inverted_cdf")
    assert [grid_rank(n, q) - 1 for q in LEVELS] == positions.tolist()


def test_the_grid_search_finds_the_bin_of_numpys_quantile() -> None:
    rng = np.random.default_rng(5)
    bounds = (-3.0, 9.0)
    for size in (1, 2, 7, 100, 2500):
        values = np.round(rng.normal(2, 2, size), 2).clip(*bounds)
        histogram = np.bincount(grid_bins(values, bounds, GRID_BITS), minlength=1 << GRID_BITS)
        for q in LEVELS:
            exact = float(np.quantile(values, q, method="inverted_cdf"))
            assert grid_index(histogram, q) == grid_bins(np.array([exact]), bounds, GRID_BITS)[0]


def test_result_keys() -> None:
    assert [quantile_key(q) for q in (0, 0.5, 1, 0.025)] == ["0.0", "0.5", "1.0", "0.025"]


def test_local_input_shares_counts_and_a_histogram_over_the_fine_grid() -> None:
    frame = pd.DataFrame({"x": [3.0, np.nan, -1.0, 7.5, 2.0], "g": ["a", "b", "b", "a", "a"]})
    schema = with_bounds(infer_schema([frame]), "x", -10, 10)  # a quantile needs them
    query = prepare(
        {"statistic": "quantile", "dataset": "d", "column": "x", "q": [0.5], "group_by": ["g"]},
        schema,
    )
    summary = local_summary(query, frame, schema)
    assert summary.counts == [3, 1]
    assert summary.rows is None  # no row reaches the party process
    # shared: the counts, the cells' key sums (for the cell-key perturbation) and per group a
    # histogram over 2^12 equal bins of the declared [-10, 10]
    assert list(summary.vectors) == ["keys", "grid"] and summary.moments == {}
    grid = np.array(summary.vectors["grid"]).reshape(2, 1 << GRID_BITS)
    width = 20 / (1 << GRID_BITS)
    assert {int(i): int(grid[0, i]) for i in np.flatnonzero(grid[0])} == {
        int((v + 10) // width): 1 for v in (3.0, 7.5, 2.0)
    }
    assert np.flatnonzero(grid[1]).tolist() == [int(9 // width)]
    keys = summary.vectors["keys"]
    assert len(keys) == 4 and all(0 <= k < 2**24 for k in keys)


def test_a_quantile_needs_the_columns_declared_bounds() -> None:
    frame = pd.DataFrame({"x": [3.0, -1.0, 7.5, 2.0]})
    query = {"statistic": "quantile", "dataset": "d", "column": "x", "q": [0.5]}
    with pytest.raises(QueryInvalid, match="needs the column's declared bounds"):
        prepare(query, infer_schema([frame]))
    prepare(query, with_bounds(infer_schema([frame]), "x", -10, 10))
