"""`dp` on correlation and linear regression: which Gram entries are noisy, their sensitivity
and ε, the clipped local input, and the post-processing of a noisy Gram matrix (never a crash).
The MPC runs are in tests/integration/smpc/test_dp_models.py."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from smpc import local_summary, prepare
from smpc.dp import GRID, NoiseSpec, grid_value, sample
from smpc.statistics import compile_query
from smpc.statistics.gram import NoisyGramOpened
from tessera.errors import QueryInvalid
from tessera.schemas import ColumnSpec, DatasetSchema

SCHEMA = DatasetSchema(
    columns=[
        ColumnSpec(name="x", type="float", min=0, max=10),
        ColumnSpec(name="z", type="float", min=-2, max=4),
        ColumnSpec(name="y", type="float"),
        ColumnSpec(name="b", type="boolean"),
        ColumnSpec(name="g", type="categorical", levels=["a", "b", "c"]),
    ]
)
REGRESSION = {"statistic": "linear_regression", "dataset": "d", "outcome": "z"}


def test_every_distinct_entry_is_noisy_at_an_even_share_of_epsilon() -> None:
    statistic = compile_query(
        {**REGRESSION, "predictors": ["x", "b", "g"], "dp": {"epsilon": 1.2}}, SCHEMA
    )
    plan = statistic.noise
    # [1, x, b, g[b], g[c], z]: 21 entries, less b², g[b]², g[c]² (their sums) and g[b]·g[c]
    assert len(plan) == 21 - 4 and list(plan)[:2] == ["count", "sum(x)"]
    assert "sum(b^2)" not in plan and "sum(g[b]*g[c])" not in plan and "sum(x^2)" in plan
    assert {s.epsilon for s in plan.values()} == {1.2 / 17}
    # numeric terms are centred at their range's midpoint: |x − 5| ≤ 5, |z − 1| ≤ 3
    assert plan["count"] == NoiseSpec(1.2 / 17, 1)
    assert plan["sum(x)"].sensitivity == grid_value(5.0) and plan["sum(x)"].unit == GRID
    assert plan["sum(x*z)"].sensitivity == grid_value(15.0)
    assert plan["sum(z^2)"].sensitivity == grid_value(9.0)
    assert plan["sum(b*g[c])"].sensitivity == grid_value(1.0)
    assert plan["sum(x*b)"].scale == pytest.approx(5 * 17 / 1.2, rel=2**-10)
    result = statistic.with_dp({})
    assert result["dp"]["epsilon_split"] == {k: 1.2 / 17 for k in plan}


def test_a_numeric_column_without_bounds_is_refused_naming_it() -> None:
    dp = {"epsilon": 1.0}
    with pytest.raises(QueryInvalid, match="dp linear_regression of 'y' needs the column's bounds"):
        prepare({**REGRESSION, "outcome": "y", "predictors": ["x"], "dp": dp}, SCHEMA)
    with pytest.raises(QueryInvalid, match="declare finite 'min' and 'max' for 'y'") as info:
        prepare(
            {"statistic": "correlation", "dataset": "d", "columns": ["x", "y"], "dp": dp}, SCHEMA
        )
    assert info.value.details == {"column": "y", "field": "dp"}
    # categorical and boolean terms need none; without dp nothing needs bounds
    prepare({**REGRESSION, "predictors": ["b", "g"], "dp": dp}, SCHEMA)
    prepare({"statistic": "correlation", "dataset": "d", "columns": ["x", "y"]}, SCHEMA)


def test_local_input_is_clipped_centred_and_rounded_per_row() -> None:
    frame = pd.DataFrame(
        {
            "x": [-3.0, 2.5, 12.0, 7.1, np.nan],
            "z": [0.3, 5.0, -1.0, 1.0, 2.0],
            "y": 0.0,
            "b": True,
            "g": "a",
        }
    )
    query = prepare(
        {"statistic": "correlation", "dataset": "d", "columns": ["x", "z"], "dp": {"epsilon": 1}},
        SCHEMA,
    )
    summary = local_summary(query, frame, SCHEMA)
    assert summary.counts == [4]  # the row with a missing x is dropped
    x = np.array([0.0, 2.5, 10.0, 7.1]) - 5  # clipped to [0, 10], centred at 5
    z = np.array([0.3, 4.0, -1.0, 1.0]) - 1  # clipped to [-2, 4], centred at 1
    columns = [x, z, x * x, x * z, z * z]  # sum(x), sum(z), sum(x^2), sum(x*z), sum(z^2)
    assert summary.vectors["gram"] == [sum(grid_value(v) for v in c) for c in columns]


def regression_gram(statistic: object, count: int, gram: np.ndarray) -> NoisyGramOpened:
    entries = [Fraction(float(gram[i, j])) for i, j in statistic.dp_entries[1:]]  # type: ignore[attr-defined]
    return NoisyGramOpened(0, [count], [entries])


def test_a_noisy_gram_that_is_not_positive_definite_still_gives_a_valid_result() -> None:
    regression = compile_query({**REGRESSION, "predictors": ["x"], "dp": {"epsilon": 1.0}}, SCHEMA)
    # [1, x − 5, z − 1]: Σ(x − 5)² negative, as noise can make it
    bad = np.array([[50.0, 3.0, -2.0], [3.0, -40.0, 7.0], [-2.0, 7.0, 30.0]])
    assert np.linalg.eigvalsh(bad).min() < 0
    result = regression.finish(regression_gram(regression, 50, bad))
    assert result["n"] == 50
    assert all(math.isfinite(v) for v in result["coefficients"].values())
    assert all(v is not None and v > 0 for v in result["std_errors"].values())
    assert all(0 <= v <= 1 for v in result["p_values"].values())
    assert 0 <= result["r_squared"] <= 1

    correlation = compile_query(
        {"statistic": "correlation", "dataset": "d", "columns": ["x", "z"], "dp": {"epsilon": 1}},
        SCHEMA,
    )
    result = correlation.finish(regression_gram(correlation, 50, bad))
    matrix = np.array(result["matrix"])
    assert np.allclose(np.diag(matrix), 1) and np.all(np.abs(matrix) <= 1)
    assert np.linalg.eigvalsh(matrix).min() > 0

    # a noisy n at or below the number of coefficients: a null model in a group, else refused
    from tessera.errors import DisclosureRefused

    with pytest.raises(DisclosureRefused, match="too few"):
        regression.finish(regression_gram(regression, 2, bad))


def test_a_positive_definite_noisy_gram_is_solved_as_it_is() -> None:
    """Where every eigenvalue is above the noise scale (here b = 6/ε = 0.12 in units of the
    reaches), the post-processing is plain OLS on the (noisy) statistics, translated back from
    the centred terms."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 10, 200)
    z = np.clip(0.4 * x - 1 + rng.normal(0, 0.5, 200), -2, 4)
    regression = compile_query({**REGRESSION, "predictors": ["x"], "dp": {"epsilon": 50.0}}, SCHEMA)
    design = np.column_stack([np.ones(200), x - 5, z - 1])
    result = regression.finish(regression_gram(regression, 200, design.T @ design))
    slope, intercept = np.polyfit(x, z, 1)
    assert result["coefficients"]["x"] == pytest.approx(slope, rel=1e-9)
    assert result["coefficients"]["const"] == pytest.approx(intercept, rel=1e-9)


def test_the_plaintext_sampler_has_the_mechanisms_law() -> None:
    rng = np.random.default_rng(5)
    for spec in (NoiseSpec(0.5, 1), NoiseSpec(0.1, grid_value(3.0), GRID)):
        draws = np.array(sample(spec, 20_000, rng), dtype=float) * float(spec.unit)
        sd = math.sqrt(spec.variance)
        assert abs(draws.mean()) < 5 * sd / math.sqrt(len(draws))
        assert draws.var() / spec.variance == pytest.approx(1, abs=0.1)


def test_the_dry_run_of_a_dp_model_names_the_noisy_gram_entries() -> None:
    from smpc.statistics import disclosure

    query = {**REGRESSION, "predictors": ["x"], "dp": {"epsilon": 2.0}}
    answer = disclosure(query, SCHEMA)
    assert answer["epsilon"] == 2.0 and answer["intermediates"] == ""
    assert "the noisy n and the noisy Gram entries" in answer["reveals"]
    assert set(answer["expected_error"]) == {
        "count",
        "sum(x)",
        "sum(z)",
        "sum(x^2)",
        "sum(x*z)",
        "sum(z^2)",
    }
    exact = disclosure({**REGRESSION, "predictors": ["x"]}, SCHEMA)
    assert "singular" in exact["intermediates"]
