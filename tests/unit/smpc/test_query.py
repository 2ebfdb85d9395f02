"""The query language: every statistic validates, bad queries name their problem, and every
statistic's result fits the type the registry publishes."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest
from pydantic import TypeAdapter, ValidationError

from smpc import DP_STATISTICS, STATISTICS, parse_query, prepare, reference
from smpc.statistics import REGISTRY, Query, reference_parties, result_type
from tessera.errors import QueryInvalid
from tessera.schemas import ColumnSpec, DatasetSchema

SCHEMA = DatasetSchema(
    columns=[
        ColumnSpec(name="age", type="integer", min=0, max=215),
        ColumnSpec(name="weight", type="float"),
        ColumnSpec(name="sex", type="categorical", levels=["F", "M"]),
        ColumnSpec(name="icu", type="boolean"),
        ColumnSpec(name="time", type="integer", min=0, max=3650),
    ]
)

EVERY_STATISTIC = {
    "count": {},
    "sum": {"column": "weight"},
    "mean": {"column": "weight"},
    "variance": {"column": "weight"},
    "min": {"column": "age"},  # extremes and quantiles need declared bounds
    "max": {"column": "age"},
    "quantile": {"column": "age", "q": [0.25, 0.5]},  # a quantile needs declared bounds
    "histogram": {"column": "age", "bins": [0, 12, 60, 216]},
    "crosstab": {"rows": "sex", "columns": "icu"},
    "correlation": {"columns": ["age", "weight"]},
    "linear_regression": {"outcome": "weight", "predictors": ["age"]},
    "logistic_regression": {"outcome": "icu", "predictors": ["age"]},
    "kaplan_meier": {"time": "time", "event": "icu", "group": "sex"},
    "ttest": {"column": "weight", "group": "sex"},
    "chi2": {"rows": "sex", "columns": "icu"},
}


def test_the_catalogue_covers_the_design() -> None:
    assert set(EVERY_STATISTIC) == set(STATISTICS)


@pytest.mark.parametrize("statistic", sorted(EVERY_STATISTIC))
def test_every_statistic_of_the_language_validates(statistic: str) -> None:
    query = parse_query({"statistic": statistic, "dataset": "d", **EVERY_STATISTIC[statistic]})
    assert query.statistic == statistic


def test_the_language_is_derived_from_the_registry() -> None:
    assert list(STATISTICS) == list(EVERY_STATISTIC)  # the registry keeps DESIGN.md's order
    assert DP_STATISTICS == (
        "count",
        "sum",
        "mean",
        "variance",
        "quantile",
        "histogram",
        "crosstab",
        "correlation",
        "linear_regression",
        "kaplan_meier",
    )
    schema = TypeAdapter(Query).json_schema()
    assert sorted(schema["discriminator"]["mapping"]) == sorted(STATISTICS)
    for name, cls in REGISTRY.items():
        assert cls.query_model.model_fields["statistic"].annotation == Literal[name]


@pytest.mark.parametrize("statistic", STATISTICS)
def test_supported_statistics_pass_against_the_schema(statistic: str) -> None:
    prepare({"statistic": statistic, "dataset": "d", **EVERY_STATISTIC[statistic]}, SCHEMA)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"dataset": "d"}, "names no 'statistic'"),
        ({"statistic": "median", "dataset": "d"}, "unknown statistic 'median'"),
        ({"statistic": "mean", "dataset": "d"}, "column: Field required"),
        ({"statistic": "count"}, "dataset: Field required"),
        ({"statistic": "count", "dataset": "d", "colour": 1}, "colour: Extra inputs"),
        ({"statistic": "count", "dataset": "d", "where": [["age", "~", 1]]}, "where"),
        ({"statistic": "count", "dataset": "d", "where": [["age", ">"]]}, "triple"),
        ({"statistic": "count", "dataset": "d", "where": [["age", "in", 3]]}, "needs a list"),
        ({"statistic": "count", "dataset": "d", "min_count": -1}, "min_count"),
        ({"statistic": "histogram", "dataset": "d", "column": "age", "bins": [3, 1]}, "increasing"),
        ({"statistic": "quantile", "dataset": "d", "column": "age", "q": [1.5]}, "[0, 1]"),
        ({"statistic": "count", "dataset": "d", "dp": {"epsilon": -1}}, "epsilon"),
        ("count", "JSON object"),
    ],
)
def test_malformed_queries_say_what_is_wrong(raw: object, message: str) -> None:
    with pytest.raises(QueryInvalid) as info:
        parse_query(raw)
    assert message in info.value.message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"statistic": "mean", "column": "height"}, "unknown column 'height'"),
        ({"statistic": "mean", "column": "sex"}, "'sex' is categorical, not numeric"),
        ({"statistic": "count", "group_by": ["age"]}, "only categorical or boolean"),
        ({"statistic": "count", "where": [["sex", "==", "X"]]}, "'X' is not a level of 'sex'"),
        ({"statistic": "count", "where": [["sex", ">", "F"]]}, "does not apply to categorical"),
        ({"statistic": "count", "where": [["age", ">", "ten"]]}, "compares with numbers"),
        ({"statistic": "count", "where": [["icu", ">", 0]]}, "boolean column"),
        (
            {"statistic": "max", "column": "age", "dp": {"epsilon": 1.0}},
            "available for count, sum, mean, variance, quantile, histogram, crosstab, "
            "correlation, linear_regression, kaplan_meier; not for 'max'",
        ),
        (
            {"statistic": "mean", "column": "weight", "dp": {"epsilon": 1.0}},
            "dp mean of 'weight' needs the column's bounds",
        ),
        (
            {"statistic": "sum", "column": "weight", "dp": {"epsilon": 1.0}},
            "declare finite 'min' and 'max' for 'weight'",
        ),
        (  # every numeric column of a dp model: they set the Gram entries' sensitivity
            {
                "statistic": "linear_regression",
                "outcome": "weight",
                "predictors": ["age"],
                "dp": {"epsilon": 1.0},
            },
            "dp linear_regression of 'weight' needs the column's bounds",
        ),
        (  # its noise is scaled by the declared range
            {"statistic": "quantile", "column": "weight", "q": [0.5]},
            "quantile of 'weight' needs the column's declared bounds",
        ),
        (  # so is an extreme's
            {"statistic": "max", "column": "weight"},
            "max of 'weight' needs the column's declared bounds",
        ),
    ],
)
def test_queries_are_checked_against_the_schema(raw: dict, message: str) -> None:
    with pytest.raises(QueryInvalid) as info:
        prepare({"dataset": "d", **raw}, SCHEMA)
    assert message in info.value.message


@pytest.mark.parametrize(
    "raw",
    [
        {"statistic": "count", "group_by": ["sex"], "where": [["age", ">", 2]]},
        {"statistic": "mean", "column": "age"},
        {"statistic": "sum", "column": "icu", "group_by": ["sex"]},  # booleans: [0, 1]
        {"statistic": "histogram", "column": "weight", "bins": [0, 10, 100]},  # no bounds needed
        {"statistic": "crosstab", "rows": "sex", "columns": "icu"},
        {"statistic": "correlation", "columns": ["age", "time", "icu"], "group_by": ["sex"]},
        {"statistic": "linear_regression", "outcome": "time", "predictors": ["age", "sex"]},
    ],
)
def test_dp_queries_of_the_dp_statistics_pass(raw: dict) -> None:
    query = prepare({"dataset": "d", "dp": {"epsilon": 0.5, "delta": 1e-6}, **raw}, SCHEMA)
    assert query.dp is not None and query.dp.epsilon == 0.5


def test_a_query_round_trips_through_json() -> None:
    raw = {
        "statistic": "mean",
        "dataset": "d",
        "column": "weight",
        "where": [["age", ">=", 24], ["sex", "in", ["F"]]],
        "group_by": ["icu"],
        "min_count": 5,
    }
    query = parse_query(raw)
    assert parse_query(query.to_json()) == query
    assert query.to_json()["where"] == raw["where"]


def test_schemas_reject_inconsistent_columns() -> None:
    with pytest.raises(ValueError, match="needs its levels"):
        ColumnSpec(name="sex", type="categorical")
    with pytest.raises(ValueError, match="repeated column names"):
        DatasetSchema(columns=[ColumnSpec(name="a", type="float")] * 2)
    with pytest.raises(ValueError, match="min > max"):
        ColumnSpec(name="a", type="float", min=3, max=1)


# ---- result types: every statistic's result fits the type the registry publishes ----------
# (`QueryResult` in the coordinator's spec: the coordinator refuses a result that does not, so a
# wrong type would fail real queries; checked on the plaintext oracles, whose results the protocol
# tests show are the protocol's: the unperturbed `reference` and the exact mode's perturbed
# `reference_parties`; ungrouped, grouped, with `dp` and with suppressed cells)

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
            "time": rng.integers(0, 3651, rows),
            "region": rng.choice(["north", "south", "east"], rows),
        }
    )


def fits(statistic: str, result: dict[str, Any]) -> None:
    TypeAdapter(REGISTRY[statistic].result_model()).validate_python(result)
    TypeAdapter(result_type()).validate_python(result)


@pytest.mark.parametrize("statistic", STATISTICS)
def test_a_result_fits_its_type(statistic: str, frame: pd.DataFrame) -> None:
    query = {"statistic": statistic, "dataset": "d", **EVERY_STATISTIC[statistic]}
    fits(statistic, reference(query, frame, SCHEMA))
    fits(statistic, reference({**query, "min_count": 10_000}, frame, SCHEMA))  # suppressed
    fits(statistic, reference_parties(query, [frame], SCHEMA))  # the exact mode's perturbed


@pytest.mark.parametrize("statistic", GROUPED)
def test_a_grouped_result_fits_its_type(statistic: str, frame: pd.DataFrame) -> None:
    schema = DatasetSchema(
        columns=[*SCHEMA.columns, ColumnSpec(name="band", type="categorical", levels=["a", "b"])]
    )
    data = frame.assign(band=np.where(frame["age"] < 9, "a", "b"))
    query = {
        "statistic": statistic,
        "dataset": "d",
        "group_by": ["band"],
        **EVERY_STATISTIC[statistic],
    }
    fits(statistic, reference(query, data, schema))
    fits(statistic, reference_parties(query, [data], schema))


@pytest.mark.parametrize("statistic", DP_STATISTICS)
def test_a_dp_result_fits_its_type(statistic: str, frame: pd.DataFrame) -> None:
    bounded: dict[str, Any] = {  # columns with declared bounds
        "sum": {"column": "age"},
        "mean": {"column": "age"},
        "variance": {"column": "age"},
        "correlation": {"columns": ["age", "time"]},
        "linear_regression": {"outcome": "time", "predictors": ["age", "sex"]},
    }.get(statistic, {})
    query = {"statistic": statistic, "dataset": "d", "dp": {"epsilon": 1.0}}
    fits(statistic, reference({**query, **EVERY_STATISTIC[statistic], **bounded}, frame, SCHEMA))


def test_another_statistics_result_or_an_extra_key_does_not_fit() -> None:
    with pytest.raises(ValidationError):
        fits("count", {"n": 3, "mean": 2.0})
    with pytest.raises(ValidationError):
        fits("count", {"n": 3, "count": 3, "rows": [1, 2, 3]})


def test_a_ttest_of_a_categorical_column_is_refused() -> None:
    with pytest.raises(QueryInvalid, match="ttest: column 'sex' is categorical, not numeric"):
        prepare({"statistic": "ttest", "dataset": "d", "column": "sex", "group": "icu"}, SCHEMA)
