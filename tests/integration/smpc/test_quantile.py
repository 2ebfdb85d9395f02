"""`quantile` by MPC in the `exact` mode: the oblivious search over the pooled fine-grid
histogram finds the bin holding `numpy.quantile(pooled, q, method="inverted_cdf")`, then every
quantile of a group (its bin's midpoint) moves by the same cell-key shift,
u·noise·(declared max − min), and n by p in [−3, 3].

Each result equals `reference_parties` (the same perturbation in plaintext, from the same
keys), and its quantiles differ from numpy's by one common shift of at most a quarter of the
declared range, each within half a bin (`perturbed.check_quantiles`).

Data: scikit-learn's diabetes data (442 rows; the standardised columns are negative and
positive, declared in [−0.2, 0.2] or so: floor and ceiling to 0.1 of the whole data's range)
and statsmodels' RAND HIE data (20 190 rows; visit counts 0 to 77, full of ties), split unevenly
across 3 and 5 parties. A quantile needs its column's declared bounds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from smpc import simulate
from smpc.frames import infer_schema
from smpc.frames import uneven_shares as split
from smpc.statistics import reference_parties
from tessera.errors import TesseraError
from tessera.schemas import DatasetSchema

from .perturbed import check_count, check_quantiles, refused

LEVELS = [0, 0.01, 0.1, 0.25, 1 / 3, 0.5, 0.9, 0.975, 1]


def expected(values: pd.Series, levels: list[float]) -> dict[str, float]:
    found = np.quantile(values.to_numpy(dtype=float), levels, method="inverted_cdf")
    return {repr(float(q)): float(v) for q, v in zip(levels, found, strict=True)}


def bounded(frames: list[pd.DataFrame], column: str, low: float, high: float) -> DatasetSchema:
    """The frames' inferred schema with declared bounds on `column` (public knowledge)."""
    raw = infer_schema(frames).model_dump()
    for spec in raw["columns"]:
        if spec["name"] == column:
            spec.update(min=low, max=high)
    return DatasetSchema.model_validate(raw)


def run(
    query: dict[str, Any], frames: list[pd.DataFrame], schema: DatasetSchema, **kwargs: Any
) -> dict[str, Any]:
    """`simulate`, checked against the plaintext oracle for the same frames, schema and floors."""
    result = simulate(query, frames, schema, **kwargs)
    assert result == reference_parties(query, frames, schema, **kwargs)
    return result


@pytest.fixture(scope="module")
def diabetes() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame
    return frame.assign(sex=np.where(frame["sex"] > 0, "b", "a"))


@pytest.fixture(scope="module")
def hie() -> pd.DataFrame:
    from statsmodels.datasets import randhie

    data = randhie.load_pandas().data
    health = np.select(
        [data.hlthp == 1, data.hlthf == 1, data.hlthg == 1], ["poor", "fair", "good"], "excellent"
    )
    return data.assign(health=health)


def test_grouped_quantiles_of_signed_values_across_three_parties(diabetes: pd.DataFrame) -> None:
    frames = split(diabetes, 3)
    result = run(
        {
            "statistic": "quantile",
            "dataset": "diabetes",
            "column": "bmi",
            "q": LEVELS,
            "group_by": ["sex"],
            "where": [["age", ">", -0.05]],
        },
        frames,
        bounded(frames, "bmi", -0.1, 0.2),
    )
    rows = diabetes[diabetes.age > -0.05]
    check_count(result["n"], len(rows))
    for entry in result["groups"]:
        sub = rows[rows.sex == entry["group"]["sex"]]
        check_count(entry["n"], len(sub))
        check_quantiles(entry["quantiles"], expected(sub.bmi, LEVELS), bounds=(-0.1, 0.2))


@pytest.mark.slow
def test_tied_counts_across_five_parties(hie: pd.DataFrame) -> None:
    frames = split(hie, 5)
    query = {
        "statistic": "quantile",
        "dataset": "hie",
        "column": "mdvis",
        "q": [0, 0.05, 0.25, 0.5, 0.5, 0.75, 0.95, 0.999, 1],
        "group_by": ["health"],
        "min_count": 10,
    }
    result = run(query, frames, bounded(frames, "mdvis", 0, 77))
    for entry in result["groups"]:
        sub = hie[hie.health == entry["group"]["health"]]
        check_count(entry["n"], len(sub))
        check_quantiles(entry["quantiles"], expected(sub.mdvis, query["q"]), bounds=(0, 77))


def test_empty_sites_absent_levels_and_a_node_floor(diabetes: pd.DataFrame) -> None:
    """Party 2 has no matching row, level 'a' is absent at party 0, and party 1's floor of 60
    (above the query's 5) suppresses the small group while the large one is released."""
    data = diabetes.assign(sex=np.where(diabetes.bp > 0.06, "a", "b"))
    frames = [
        data[data.sex == "b"].iloc[:100],
        data.iloc[100:300],
        data.iloc[300:].assign(age=-1.0),
    ]
    query = {
        "statistic": "quantile",
        "dataset": "diabetes",
        "column": "s5",
        "q": [0, 0.5, 1],
        "group_by": ["sex"],
        "where": [["age", ">", -0.5]],
        "min_count": 5,
    }
    result = run(query, frames, bounded(frames, "s5", -0.2, 0.2), min_count_floors=[0, 60, 0])
    pooled = pd.concat(frames)
    rows = pooled[pooled.age > -0.5]
    small = rows[rows.sex == "a"]
    assert 5 <= len(small) < 60
    assert result["n"] is None
    assert result["groups"][0] == {
        "group": {"sex": "a"},
        "n": None,
        "quantiles": {"0.0": None, "0.5": None, "1.0": None},
    }
    large = rows[rows.sex == "b"]
    # every site holds 0 or at least 60 of its rows: the per-site floor suppresses no more
    assert [len(f[(f.sex == "b") & (f.age > -0.5)]) for f in frames] == [100, len(large) - 100, 0]
    check_count(result["groups"][1]["n"], len(large))
    check_quantiles(
        result["groups"][1]["quantiles"], expected(large.s5, [0, 0.5, 1]), bounds=(-0.2, 0.2)
    )


def test_a_single_row_and_an_empty_group() -> None:
    frames = [
        pd.DataFrame({"x": [4.25], "g": ["a"]}),
        pd.DataFrame({"x": [np.nan, 9.0], "g": ["b", "c"]}).iloc[:1],
        pd.DataFrame({"x": [np.nan], "g": ["b"]}),
    ]
    levels = pd.DataFrame({"x": [0.0, 0.0, 0.0], "g": ["a", "b", "c"]})
    schema = bounded([levels], "x", 0, 10)
    query = {"statistic": "quantile", "dataset": "d", "column": "x", "q": [0, 0.5, 1]}
    single = {"0.0": 4.25, "0.5": 4.25, "1.0": 4.25}
    ungrouped = run(query, frames, schema)
    check_count(ungrouped["n"], 1)
    check_quantiles(ungrouped["quantiles"], single, bounds=(0, 10))

    # 3 groups over 1 row break the levels rule (levels ≤ 0.33 · n): refused inside MPC
    with pytest.raises(TesseraError) as info:
        simulate({**query, "group_by": ["g"]}, frames, schema)
    assert refused(info.value, "levels_density")

    # so group "c" gets nine rows at party 2: "a" still has one row, "b" none
    frames[2] = pd.DataFrame({"x": [np.nan, *range(1, 10)], "g": ["b", *["c"] * 9]})
    result = run({**query, "group_by": ["g"]}, frames, schema)
    check_count(result["n"], 10)
    check_count(result["groups"][0]["n"], 1)
    check_quantiles(result["groups"][0]["quantiles"], single, bounds=(0, 10))
    assert result["groups"][1]["n"] == 0  # no threshold: an empty group is released, n 0
    assert result["groups"][1]["quantiles"] == {"0.0": None, "0.5": None, "1.0": None}
    check_count(result["groups"][2]["n"], 9)
    nine = {"0.0": 1.0, "0.5": 5.0, "1.0": 9.0}
    check_quantiles(result["groups"][2]["quantiles"], nine, bounds=(0, 10))


def test_many_groups_and_levels(diabetes: pd.DataFrame) -> None:
    """10 groups × 13 levels: 130 searches over the fine grid at once."""
    data = diabetes.assign(band=pd.qcut(diabetes.bp, 10, labels=[f"b{i}" for i in range(10)]))
    data = data.assign(band=data.band.astype(str))
    levels = [*LEVELS, 0.05, 0.6, 0.75, 0.8]
    query = {"statistic": "quantile", "dataset": "d", "column": "s1", "q": levels}
    frames = split(data, 3)
    result = run({**query, "group_by": ["band"]}, frames, bounded(frames, "s1", -0.2, 0.2))
    assert len(result["groups"]) == 10
    for entry in result["groups"]:
        sub = data[data.band == entry["group"]["band"]]
        check_count(entry["n"], len(sub))
        check_quantiles(entry["quantiles"], expected(sub.s1, levels), bounds=(-0.2, 0.2))
