"""`dp` on linear regression and correlation: noisy sufficient statistics through `simulate`.

Data: scikit-learn's diabetes study (442 patients, unscaled), split unevenly over 3 parties,
with declared bounds. The MPC runs are checked against the plaintext twin of the protocol
(`GramStatistic.plain_noisy`: the same summaries, the same noise law drawn by numpy): an MPC
result must lie within the range of many twin draws around the exact, clipped result. The twin
then shows, over repeated draws, how the error shrinks with ε against statsmodels and numpy.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from smpc import reference, simulate
from smpc.frames import infer_schema
from smpc.frames import uneven_shares as split
from smpc.statistics import compile_query
from tessera.errors import QueryInvalid
from tessera.schemas import ColumnSpec, DatasetSchema

TAIL = 15  # |Z| > 15·b has probability about e^-15 per noisy value
BOUNDS = {"age": (18, 80), "bmi": (15, 45), "bp": (60, 140), "s5": (3, 6.5), "target": (20, 350)}
REGRESSION = {
    "statistic": "linear_regression",
    "dataset": "diabetes",
    "outcome": "target",
    "predictors": ["bmi", "s5"],
}


@pytest.fixture(scope="module")
def diabetes() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    data = load_diabetes(as_frame=True, scaled=False).frame
    return data.assign(sex=np.where(data["sex"] == 1, "female", "male"))


@pytest.fixture(scope="module")
def schema(diabetes: pd.DataFrame) -> DatasetSchema:
    """The inferred schema with declared bounds (bp's [60, 140] clips a few patients)."""
    columns = [
        ColumnSpec(name=c.name, type="float", min=BOUNDS[c.name][0], max=BOUNDS[c.name][1])
        if c.name in BOUNDS
        else c
        for c in infer_schema([diabetes]).columns
    ]
    return DatasetSchema(columns=columns)


def twin_errors(query: dict, frames: list[pd.DataFrame], schema: DatasetSchema, key: str,
                draws: int, seed: int = 0) -> tuple[dict, list[dict]]:  # fmt: skip
    """The exact clipped result and `draws` results of the plaintext twin."""
    statistic = compile_query(query, schema)
    summaries = [statistic.local_summary(f) for f in frames]
    rng = np.random.default_rng(seed)
    exact = reference(query, pd.concat(frames, ignore_index=True), schema)
    return exact, [statistic.finish(statistic.plain_noisy(summaries, rng)) for _ in range(draws)]


def test_dp_linear_regression_by_mpc(diabetes: pd.DataFrame, schema: DatasetSchema) -> None:
    frames = split(diabetes, 3)
    query = {**REGRESSION, "predictors": ["bmi", "bp", "sex"], "dp": {"epsilon": 4.0}}
    result = simulate(query, frames, schema)
    exact, twins = twin_errors(query, frames, schema, "coefficients", 1000)

    # the reference is statsmodels OLS on the clipped rows
    clipped = diabetes.assign(bp=diabetes.bp.clip(60, 140))
    design = sm.add_constant(clipped[["bmi", "bp"]].assign(**{"sex[male]": clipped.sex == "male"}))
    fit = sm.OLS(clipped.target, design.astype(float)).fit()
    assert exact["coefficients"] == pytest.approx(dict(fit.params), rel=1e-9)

    # noisy n, at ε/K, 14 noised entries: Gram of [1, bmi, bp, sex[male], target] less sex²
    assert result["dp"] == exact["dp"] and len(result["dp"]["noise_scale"]) == 14
    assert result["dp"]["noise_scale"]["count"] == 14 / 4.0
    assert abs(result["n"] - len(diabetes)) <= TAIL * 14 / 4.0
    for name, value in result["coefficients"].items():
        spread = max(abs(t["coefficients"][name] - exact["coefficients"][name]) for t in twins)
        assert abs(value - exact["coefficients"][name]) <= 1.5 * spread, name
        assert value != exact["coefficients"][name]
        assert result["std_errors"][name] > 0 and 0 <= result["p_values"][name] <= 1
    assert 0 <= result["r_squared"] <= 1


def test_dp_correlation_with_where_group_by_and_min_count(
    diabetes: pd.DataFrame, schema: DatasetSchema
) -> None:
    """min_count compares the noisy n: the female group (60 rows) stays below 75, its matrix
    and n are null; the male group (90 rows) is released, its r within the twin's range."""
    frames = split(diabetes, 3)
    query = {
        "statistic": "correlation",
        "dataset": "diabetes",
        "columns": ["bmi", "bp", "target"],
        "where": [["bp", ">", 100]],
        "group_by": ["sex"],
        "min_count": 75,
        "dp": {"epsilon": 16.0, "delta": 1e-7},
    }
    counts = diabetes[diabetes.bp > 100].groupby("sex").size()
    assert counts["female"] == 60 and counts["male"] == 90  # each 15 rows from 75: 24 scales
    result = simulate(query, frames, schema)
    exact, twins = twin_errors({**query, "min_count": 0}, frames, schema, "matrix", 1000)
    assert result["dp"]["epsilon_split"] == {k: 1.6 for k in result["dp"]["noise_scale"]}
    assert result["dp"]["delta"] == 1e-7 and result["dp"]["noise_scale"]["count"] == 10 / 16
    female, male = result["groups"]
    assert female == {"group": {"sex": "female"}, "n": None, **compile_query(
        query, schema).empty_values()}  # fmt: skip
    assert result["n"] is None  # a suppressed group hides the total
    want = exact["groups"][1]
    assert male["group"] == want["group"] == {"sex": "male"}
    assert male["columns"] == ["bmi", "bp", "target"]
    assert abs(male["n"] - 90) <= TAIL * 10 / 16
    matrix, truth = np.array(male["matrix"]), np.array(want["matrix"])
    spread = np.max([np.abs(np.array(t["groups"][1]["matrix"]) - truth) for t in twins], 0)
    assert np.all(np.abs(matrix - truth) <= 1.5 * spread + 1e-12)
    assert np.allclose(np.diag(matrix), 1) and np.linalg.eigvalsh(matrix).min() > 0
    rows = diabetes[(diabetes.bp > 100) & (diabetes.sex == "male")]
    clipped = [rows[c].clip(*BOUNDS[c]) for c in ("bmi", "bp", "target")]
    numpy = np.corrcoef(np.column_stack(clipped), rowvar=False)
    assert truth == pytest.approx(numpy, rel=1e-9)


def test_dp_error_shrinks_with_epsilon(diabetes: pd.DataFrame, schema: DatasetSchema) -> None:
    """Over repeated draws of the twin, the mean relative error of the slopes and the mean
    absolute error of r fall as ε grows; the noise-aware standard errors cover the noiseless
    coefficients in at least 90 % of draws (they add the noise's variance to the sampling's)."""
    frames = split(diabetes, 3)
    correlation = {"statistic": "correlation", "dataset": "d", "columns": ["bmi", "s5", "target"]}
    slopes, rs = [], []
    for epsilon in (1.0, 4.0, 16.0):
        dp = {"dp": {"epsilon": epsilon}}
        exact, twins = twin_errors({**REGRESSION, **dp}, frames, schema, "coefficients", 200)
        truth = exact["coefficients"]
        slopes.append(np.mean([
            abs(t["coefficients"][k] / truth[k] - 1) for t in twins for k in ("bmi", "s5")
        ]))  # fmt: skip
        covered = [
            abs(t["coefficients"][k] - truth[k]) <= 1.96 * t["std_errors"][k]
            for t in twins
            for k in truth
        ]
        assert np.mean(covered) >= 0.9, epsilon
        exact, twins = twin_errors({**correlation, **dp}, frames, schema, "matrix", 200)
        rs.append(np.mean([np.abs(np.array(t["matrix"]) - exact["matrix"]).max() for t in twins]))
    assert slopes[0] > slopes[1] > slopes[2] and slopes[2] < 0.1
    assert rs[0] > rs[1] > rs[2] and rs[2] < 0.05


def test_dp_models_need_bounded_columns(diabetes: pd.DataFrame) -> None:
    frames = split(diabetes.head(300), 3)
    with pytest.raises(QueryInvalid, match="dp linear_regression of 'bmi' needs"):
        simulate({**REGRESSION, "dp": {"epsilon": 1.0}}, frames)  # inferred schema: no bounds
