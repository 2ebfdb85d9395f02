"""Every statistic's result fits the result type the registry publishes (`QueryResult` in the
coordinator's spec): the coordinator refuses a result that does not, so a wrong type would fail
real queries. Checked on the plaintext oracle, whose results the protocol tests show are the
protocol's, ungrouped, grouped, with `dp` and with suppressed cells."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import TypeAdapter, ValidationError

from smpc import STATISTICS, reference
from smpc.statistics import REGISTRY, result_type
from tessera.schemas import ColumnSpec, DatasetSchema

SCHEMA = DatasetSchema(
    columns=[
        ColumnSpec(name="age", type="integer", min=0, max=18),
        ColumnSpec(name="weight", type="float", min=1, max=120),
        ColumnSpec(name="sex", type="categorical", levels=["F", "M"]),
        ColumnSpec(name="icu", type="boolean"),
        ColumnSpec(name="days", type="integer", min=0, max=60),
    ]
)
PARAMETERS: dict[str, dict[str, Any]] = {
    "count": {},
    "sum": {"column": "weight"},
    "mean": {"column": "weight"},
    "variance": {"column": "weight"},
    "min": {"column": "weight"},
    "max": {"column": "weight"},
    "quantile": {"column": "weight", "q": [0.1, 0.5]},
    "histogram": {"column": "age", "bins": [0, 6, 12, 19]},
    "crosstab": {"rows": "sex", "columns": "icu"},
    "correlation": {"columns": ["age", "weight"]},
    "linear_regression": {"outcome": "weight", "predictors": ["age", "sex"]},
    "logistic_regression": {"outcome": "icu", "predictors": ["age"]},
    "kaplan_meier": {"time": "days", "event": "icu", "group": "sex"},
    "ttest": {"column": "weight", "group": "sex"},
    "chi2": {"rows": "sex", "columns": "icu"},
}
GROUPED = [s for s in STATISTICS if s != "kaplan_meier"]  # its groups are its `group`


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(4)
    rows = 400
    age = rng.integers(0, 19, rows)
    return pd.DataFrame(
        {
            "age": age,
            "weight": np.round(3.5 + 3.1 * age + rng.normal(0, 4, rows), 2).clip(1, 120),
            "sex": rng.choice(["F", "M"], rows),
            "icu": rng.random(rows) < 0.3,
            "days": rng.integers(0, 61, rows),
            "region": rng.choice(["north", "south", "east"], rows),
        }
    )


def fits(statistic: str, result: dict[str, Any]) -> None:
    TypeAdapter(REGISTRY[statistic].result_model()).validate_python(result)
    TypeAdapter(result_type()).validate_python(result)


def test_every_statistic_has_its_parameters_here() -> None:
    assert set(PARAMETERS) == set(STATISTICS)


@pytest.mark.parametrize("statistic", STATISTICS)
def test_a_result_fits_its_type(statistic: str, frame: pd.DataFrame) -> None:
    query = {"statistic": statistic, "dataset": "d", **PARAMETERS[statistic]}
    fits(statistic, reference(query, frame, SCHEMA))
    fits(statistic, reference({**query, "min_count": 10_000}, frame, SCHEMA))  # suppressed


@pytest.mark.parametrize("statistic", GROUPED)
def test_a_grouped_result_fits_its_type(statistic: str, frame: pd.DataFrame) -> None:
    schema = DatasetSchema(
        columns=[*SCHEMA.columns, ColumnSpec(name="band", type="categorical", levels=["a", "b"])]
    )
    data = frame.assign(band=np.where(frame["age"] < 9, "a", "b"))
    query = {"statistic": statistic, "dataset": "d", "group_by": ["band"], **PARAMETERS[statistic]}
    fits(statistic, reference(query, data, schema))


@pytest.mark.parametrize("statistic", ["count", "sum", "mean", "histogram", "crosstab"])
def test_a_dp_result_fits_its_type(statistic: str, frame: pd.DataFrame) -> None:
    query = {"statistic": statistic, "dataset": "d", "dp": {"epsilon": 1.0}}
    fits(statistic, reference({**query, **PARAMETERS[statistic]}, frame, SCHEMA))


def test_another_statistics_result_or_an_extra_key_does_not_fit() -> None:
    with pytest.raises(ValidationError):
        fits("count", {"n": 3, "mean": 2.0})
    with pytest.raises(ValidationError):
        fits("count", {"n": 3, "count": 3, "rows": [1, 2, 3]})
