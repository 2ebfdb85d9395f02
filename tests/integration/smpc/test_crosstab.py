"""`crosstab` by MPC in the `exact` mode: equal to `reference_parties` (the same cell-key
perturbation in plaintext), every released cell within ±3 of `pandas.crosstab` on the pooled
rows, and small cells never opened."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd
import pytest

from smpc import prepare, simulate
from smpc.frames import infer_schema
from smpc.statistics import reference_parties
from tessera.errors import QueryInvalid

from .perturbed import COUNT_SHIFT, check_count


@pytest.fixture(scope="module")
def hie() -> pd.DataFrame:
    from statsmodels.datasets import randhie

    d = randhie.load_pandas().data
    health = np.select(
        [d.hlthp == 1, d.hlthf == 1, d.hlthg == 1], ["poor", "fair", "good"], "excellent"
    )
    return d.assign(health=health, idp=d.idp.astype(bool), physlm=d.physlm > 0)


def parts(frame: pd.DataFrame, cuts: list[int]) -> list[pd.DataFrame]:
    edges = [0, *cuts, len(frame)]
    return [frame.iloc[a:b] for a, b in itertools.pairwise(edges)]


def run(query: dict[str, Any], frames: list[pd.DataFrame]) -> dict[str, Any]:
    """`simulate`, checked against the plaintext oracle for the same frames."""
    result = simulate(query, frames)
    assert result == reference_parties(query, frames, infer_schema(frames))
    return result


def check_table(shown: list[list[int | None]], expected: np.ndarray, threshold: int = 0) -> None:
    """Cells below the threshold null, every other within the count perturbation."""
    assert [[c is None for c in row] for row in shown] == (expected < threshold).tolist()
    for row, true_row in zip(shown, expected.tolist(), strict=True):
        for cell, true in zip(row, true_row, strict=True):
            if true >= threshold:
                check_count(cell, true)


def test_crosstab_is_the_oracles_and_near_pandas(hie: pd.DataFrame) -> None:
    frames = parts(hie, [3000, 11000, 12500, 17000])
    result = run(
        {"statistic": "crosstab", "dataset": "h", "rows": "health", "columns": "idp"}, frames
    )
    expected = pd.crosstab(hie.health, hie.idp)
    assert result["row_levels"] == ["excellent", "fair", "good", "poor"]
    assert result["column_levels"] == ["False", "True"]
    check_table(result["counts"], expected.to_numpy())
    assert result["counts"] != expected.to_numpy().tolist()  # perturbed, not the true table
    check_count(result["n"], len(hie))


def test_small_cells_are_suppressed_and_n_hidden(hie: pd.DataFrame) -> None:
    frames = parts(hie, [5000, 12000])
    result = run(
        {
            "statistic": "crosstab",
            "dataset": "h",
            "rows": "health",
            "columns": "idp",
            "min_count": 100,
        },
        frames,
    )
    expected = pd.crosstab(hie.health, hie.idp).to_numpy()
    check_table(result["counts"], expected, threshold=100)
    assert result["counts"][3][1] is None and result["n"] is None


def test_crosstab_per_group_with_a_filter(hie: pd.DataFrame) -> None:
    frames = parts(hie, [6000, 13000])
    result = run(
        {
            "statistic": "crosstab",
            "dataset": "h",
            "rows": "idp",
            "columns": "physlm",
            "group_by": ["health"],
            "where": [["mdvis", ">", 0]],
        },
        frames,
    )
    rows = hie[hie.mdvis > 0]
    for entry in result["groups"]:
        sub = rows[rows.health == entry["group"]["health"]]
        expected = pd.crosstab(sub.idp, sub.physlm).reindex(
            index=[False, True], columns=[False, True], fill_value=0
        )
        check_table(entry["counts"], expected.to_numpy())
        # a group's n has no key of its own: it is the sum of its table's perturbed cells, so
        # it moves by up to ±3 per cell (the overall n has its own key: ±3)
        cells = [c for row in entry["counts"] for c in row]
        assert entry["n"] == sum(cells)
        assert abs(entry["n"] - len(sub)) <= COUNT_SHIFT * len(cells), (entry["n"], len(sub))
    check_count(result["n"], len(rows))


def test_axes_must_be_two_distinct_categorical_columns(hie: pd.DataFrame) -> None:
    schema = infer_schema([hie])
    with pytest.raises(QueryInvalid, match="must be different"):
        prepare({"statistic": "crosstab", "dataset": "h", "rows": "idp", "columns": "idp"}, schema)
    with pytest.raises(QueryInvalid, match="'mdvis' is integer; rows and columns must be"):
        prepare(
            {"statistic": "crosstab", "dataset": "h", "rows": "mdvis", "columns": "idp"}, schema
        )
