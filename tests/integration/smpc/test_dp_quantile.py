"""dp `quantile` through `simulate`: report-noisy-max over bins of the declared range, inside MPC.

Data: scikit-learn's diabetes data (442 rows, body-mass index in raw units, declared in
[15, 45]) split unevenly over 3 parties. Tolerances come from the mechanism's exact law
(`selection_probabilities`, the plaintext twin) on the pooled histogram: each asserted
window holds the answer with probability at least 1 − 1e-6, so the tests are not flaky.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from smpc import simulate
from smpc.frames import infer_schema
from smpc.frames import uneven_shares as split
from smpc.statistics.quantile import (
    DP_GRID_BITS,
    Utility,
    candidate_bits,
    grid_bins,
    selection_probabilities,
)
from tessera.errors import QueryInvalid
from tessera.schemas import DatasetSchema

BOUNDS = (15.0, 45.0)


@pytest.fixture(scope="module")
def diabetes() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True, scaled=False).frame
    return frame.assign(sex=np.where(frame["sex"] > 1.5, "b", "a"))


@pytest.fixture(scope="module")
def schema(diabetes: pd.DataFrame) -> DatasetSchema:
    raw = infer_schema([diabetes]).model_dump()
    for spec in raw["columns"]:
        if spec["name"] == "bmi":
            spec.update(min=BOUNDS[0], max=BOUNDS[1])
    return DatasetSchema.model_validate(raw)


def law(values: np.ndarray, q: float, epsilon: float, bits: int) -> np.ndarray:
    """P(bin j is chosen) for level q at the level's ε, over 2^bits bins of the bounds."""
    fine = np.bincount(grid_bins(values, BOUNDS), minlength=1 << DP_GRID_BITS)
    counts = fine.reshape(1 << bits, -1).sum(axis=1)
    utility = Utility.of(q)
    return selection_probabilities(utility.plain(counts.tolist()), utility.noise(epsilon).alpha)


def window(p: np.ndarray, centre: int, miss: float = 1e-6) -> int:
    """The least w with P(|chosen − centre| > w) < miss."""
    far = [p[np.abs(np.arange(len(p)) - centre) > w].sum() for w in range(len(p))]
    return next(w for w, f in enumerate(far) if f < miss)


def check(value: float, values: np.ndarray, q: float, epsilon: float, n: int) -> int:
    """`value` is a bin midpoint within the mechanism's 1e-6 window around numpy's bin."""
    bits = candidate_bits(n)
    width = (BOUNDS[1] - BOUNDS[0]) / (1 << bits)
    chosen = (value - BOUNDS[0]) / width - 0.5
    assert chosen == pytest.approx(round(chosen)), "a bin's midpoint"
    exact = float(np.quantile(values, q, method="inverted_cdf"))
    centre = min(int((exact - BOUNDS[0]) // width), (1 << bits) - 1)
    w = window(law(values, q, epsilon, bits), centre)
    assert abs(round(chosen) - centre) <= w
    return w


def test_dp_median_is_near_numpys_and_carries_its_dp_entry(
    diabetes: pd.DataFrame, schema: DatasetSchema
) -> None:
    query = {
        "statistic": "quantile",
        "dataset": "diabetes",
        "column": "bmi",
        "q": [0.5, 0.5],
        "dp": {"epsilon": 1.0},
    }
    result = simulate(query, split(diabetes, 3), schema)
    assert result["dp"] == {
        "epsilon": 1.0,
        "delta": 0.0,
        "mechanism": "discrete_laplace+report_noisy_max",
        "epsilon_split": {"count": 0.5, "quantile 0.5": 0.5},  # one share per distinct level
        "noise_scale": {"count": 2.0, "quantile 0.5": 2.0},  # ranks: 2Δ/ε, Δ = ½
    }
    assert abs(result["n"] - len(diabetes)) <= 15 * 2.0
    value = result["quantiles"]["0.5"]
    assert BOUNDS[0] <= value <= BOUNDS[1]
    w = check(value, diabetes.bmi.to_numpy(), 0.5, 0.5, result["n"])
    assert w <= 4  # within a few bins (of 30/128) at ε = 1


def test_error_shrinks_as_epsilon_grows_and_groups_compose_in_parallel(
    diabetes: pd.DataFrame, schema: DatasetSchema
) -> None:
    values = diabetes.bmi.to_numpy()
    centre = int((np.median(values) - BOUNDS[0]) // (30 / 128))
    expected = {}
    for epsilon in (0.25, 1.0, 4.0):
        p = law(values, 0.5, epsilon, 7)
        expected[epsilon] = float(np.abs(np.arange(128) - centre) @ p)
    assert expected[0.25] > expected[1.0] > expected[4.0]

    query = {
        "statistic": "quantile",
        "dataset": "diabetes",
        "column": "bmi",
        "q": [0.25, 0.75],
        "group_by": ["sex"],
        "min_count": 10,
        "dp": {"epsilon": 12.0},
    }
    result = simulate(query, split(diabetes, 3), schema)
    assert result["dp"]["epsilon_split"] == {
        "count": 4.0, "quantile 0.25": 4.0, "quantile 0.75": 4.0
    }  # fmt: skip
    for entry in result["groups"]:
        sub = diabetes[diabetes.sex == entry["group"]["sex"]].bmi.to_numpy()
        assert abs(entry["n"] - len(sub)) <= 15 * 0.25
        for q in (0.25, 0.75):
            assert check(entry["quantiles"][repr(q)], sub, q, 4.0, entry["n"]) <= 2


def test_dp_quantile_refuses_a_column_without_bounds(diabetes: pd.DataFrame) -> None:
    query = {"statistic": "quantile", "dataset": "d", "column": "bmi", "q": [0.5]}
    with pytest.raises(QueryInvalid, match="dp quantile of 'bmi' needs the column's bounds"):
        simulate({**query, "dp": {"epsilon": 1.0}}, split(diabetes, 3))
