"""`quantile` by MPC equals `numpy.quantile(pooled, q, method="inverted_cdf")`, exactly.

Data: scikit-learn's diabetes data (442 rows; the standardised columns are negative and
positive) and statsmodels' RAND HIE data (20 190 rows; visit counts, full of ties), split
unevenly across 3 and 5 parties. Quantiles are data values, so they must match exactly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from smpc import reference, simulate
from smpc.frames import infer_schema
from smpc.frames import uneven_shares as split
from smpc.statistics.quantile import inverted_cdf_rank, split_bits

LEVELS = [0, 0.01, 0.1, 0.25, 1 / 3, 0.5, 0.9, 0.975, 1]


def expected(values: pd.Series, levels: list[float]) -> dict[str, float]:
    found = np.quantile(values.to_numpy(dtype=float), levels, method="inverted_cdf")
    return {repr(float(q)): float(v) for q, v in zip(levels, found, strict=True)}


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
    result = simulate(
        {
            "statistic": "quantile",
            "dataset": "diabetes",
            "column": "bmi",
            "q": LEVELS,
            "group_by": ["sex"],
            "where": [["age", ">", -0.05]],
        },
        frames,
    )
    rows = diabetes[diabetes.age > -0.05]
    assert result["n"] == len(rows)
    for entry in result["groups"]:
        sub = rows[rows.sex == entry["group"]["sex"]]
        assert entry["n"] == len(sub)
        assert entry["quantiles"] == expected(sub.bmi, LEVELS)


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
    result = simulate(query, frames)
    assert result == reference(query, hie, infer_schema(frames))
    poor = hie[hie.health == "poor"]
    assert result["groups"][3]["quantiles"] == expected(poor.mdvis, query["q"])


def test_empty_sites_absent_levels_and_a_node_floor(diabetes: pd.DataFrame) -> None:
    """Party 2 has no matching row, level 'a' is absent at party 0, and party 1's floor of 60
    (above the query's 5) suppresses the small group while the large one is exact."""
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
    result = simulate(query, frames, min_count_floors=[0, 60, 0])
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
    assert result["groups"][1]["n"] == len(large)
    assert result["groups"][1]["quantiles"] == expected(large.s5, [0, 0.5, 1])
    assert result == reference(query, pooled, infer_schema(frames), min_count=60)


def test_a_single_row_and_an_empty_group() -> None:
    frames = [
        pd.DataFrame({"x": [4.25], "g": ["a"]}),
        pd.DataFrame({"x": [np.nan, 9.0], "g": ["b", "c"]}).iloc[:1],
        pd.DataFrame({"x": [np.nan], "g": ["b"]}),
    ]
    schema = infer_schema([pd.DataFrame({"x": [0.0, 0.0, 0.0], "g": ["a", "b", "c"]})])
    query = {"statistic": "quantile", "dataset": "d", "column": "x", "q": [0, 0.5, 1]}
    result = simulate({**query, "group_by": ["g"]}, frames, schema)
    assert result["n"] == 1
    assert [e["n"] for e in result["groups"]] == [1, 0, 0]
    assert result["groups"][0]["quantiles"] == {"0.0": 4.25, "0.5": 4.25, "1.0": 4.25}
    assert result["groups"][1]["quantiles"] == {"0.0": None, "0.5": None, "1.0": None}
    assert simulate(query, frames, schema) == {
        "n": 1,
        "quantiles": {"0.0": 4.25, "0.5": 4.25, "1.0": 4.25},
    }


def test_many_groups_search_one_bit_a_round(diabetes: pd.DataFrame) -> None:
    """10 groups × 13 levels: over 85 (group, rank) items, so the search halves each round."""
    data = diabetes.assign(band=pd.qcut(diabetes.bp, 10, labels=[f"b{i}" for i in range(10)]))
    data = data.assign(band=data.band.astype(str))
    levels = [*LEVELS, 0.05, 0.6, 0.75, 0.8]
    sizes = data.band.value_counts()
    items = sum(len({inverted_cdf_rank(int(n), q) for q in levels}) for n in sizes)
    assert split_bits(items) == 1
    query = {"statistic": "quantile", "dataset": "d", "column": "s1", "q": levels}
    result = simulate({**query, "group_by": ["band"]}, split(data, 3))
    assert len(result["groups"]) == 10
    for entry in result["groups"]:
        sub = data[data.band == entry["group"]["band"]]
        assert entry["n"] == len(sub)
        assert entry["quantiles"] == expected(sub.s1, levels)
