"""`simulate` runs the real protocol (one MPyC process per party) and matches pandas/numpy.

Data: the RAND Health Insurance Experiment (statsmodels `randhie`, 20 190 rows), split unevenly
across 3, 5 and 7 parties. Tolerance 1e-6 relative for estimates, exact for counts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from smpc import simulate
from smpc.frames import uneven_shares as split
from tessera.errors import ProtocolFailed, QueryInvalid

REL = 1e-6


@pytest.fixture(scope="module")
def randhie() -> pd.DataFrame:
    from statsmodels.datasets import randhie

    data = randhie.load_pandas().data
    return data.assign(
        health=np.select(
            [data.hlthp == 1, data.hlthf == 1, data.hlthg == 1],
            ["poor", "fair", "good"],
            "excellent",
        ),
        idp=data.idp.astype(bool),
    )


@pytest.mark.parametrize("parties", [3, pytest.param(5, marks=pytest.mark.slow)])
def test_moments_match_pandas(randhie: pd.DataFrame, parties: int) -> None:
    frames = split(randhie, parties)
    rows = randhie[randhie.lncoins > 2]
    result = simulate(
        {
            "statistic": "variance",
            "dataset": "hie",
            "column": "disea",
            "where": [["lncoins", ">", 2]],
        },
        frames,
    )
    assert result["n"] == len(rows)
    assert result["mean"] == pytest.approx(rows.disea.mean(), rel=REL)
    assert result["variance"] == pytest.approx(rows.disea.var(ddof=1), rel=REL)
    assert result["std"] == pytest.approx(rows.disea.std(ddof=1), rel=REL)

    total = simulate({"statistic": "sum", "dataset": "hie", "column": "mdvis"}, frames)
    assert total == {"n": len(randhie), "sum": float(randhie.mdvis.sum())}


def test_grouped_mean_and_count_match_pandas(randhie: pd.DataFrame) -> None:
    frames = split(randhie, 3)
    result = simulate(
        {"statistic": "mean", "dataset": "hie", "column": "fmde", "group_by": ["health", "idp"]},
        frames,
    )
    expected = randhie.groupby(["health", "idp"]).fmde.agg(["mean", "size"])
    assert result["n"] == len(randhie)
    assert len(result["groups"]) == 8
    for entry in result["groups"]:
        key = (entry["group"]["health"], entry["group"]["idp"] == "True")
        assert entry["n"] == expected.loc[key, "size"]
        assert entry["mean"] == pytest.approx(expected.loc[key, "mean"], rel=REL)
    levels = [e["group"]["health"] for e in result["groups"]]
    assert levels == sorted(levels)


@pytest.mark.parametrize("parties", [3, pytest.param(7, marks=pytest.mark.slow)])
def test_min_and_max_are_exact(randhie: pd.DataFrame, parties: int) -> None:
    frames = split(randhie, parties)
    low = simulate(
        {"statistic": "min", "dataset": "hie", "column": "lpi", "where": [["lpi", ">", 0]]}, frames
    )
    high = simulate(
        {"statistic": "max", "dataset": "hie", "column": "disea", "group_by": ["health"]}, frames
    )
    assert low["min"] == randhie.lpi[randhie.lpi > 0].min()
    expected = randhie.groupby("health").disea.max()
    assert {g["group"]["health"]: g["max"] for g in high["groups"]} == expected.to_dict()


def test_histogram_with_suppression_inside_mpc(randhie: pd.DataFrame) -> None:
    frames = split(randhie, 5)
    bins = [0, 1, 2, 5, 10, 20, 40, 77]
    result = simulate(
        {
            "statistic": "histogram",
            "dataset": "hie",
            "column": "mdvis",
            "bins": bins,
            "min_count": 100,
        },
        frames,
    )
    counts, _ = np.histogram(randhie.mdvis, bins=bins)
    assert result["edges"] == bins
    assert result["counts"] == [int(c) if c >= 100 else None for c in counts]
    assert None in result["counts"], "the test needs a suppressed bin"
    assert result["n"] is None, "n would reveal the suppressed bin by subtraction"

    unsuppressed = simulate(
        {"statistic": "histogram", "dataset": "hie", "column": "mdvis", "bins": bins}, frames
    )
    assert unsuppressed["counts"] == counts.tolist()
    assert unsuppressed["n"] == int(counts.sum())


def test_small_groups_are_suppressed_and_the_node_floor_wins(randhie: pd.DataFrame) -> None:
    frames = split(randhie, 3)
    sizes = randhie.groupby("health").size()
    floor = int(sizes["poor"]) + 1  # "poor" is the smallest group
    query = {"statistic": "count", "dataset": "hie", "group_by": ["health"], "min_count": 1}
    result = simulate(query, frames, min_count_floors=[0, floor, 0])
    shown = {g["group"]["health"]: g["count"] for g in result["groups"]}
    assert shown == {k: (int(v) if v >= floor else None) for k, v in sizes.items()}
    assert shown["poor"] is None
    assert result["n"] is None

    small = simulate(
        {
            "statistic": "mean",
            "dataset": "hie",
            "column": "mdvis",
            "where": [["health", "==", "poor"]],
            "min_count": floor,
        },
        frames,
    )
    assert small == {"n": None, "mean": None}


def test_a_party_without_matching_rows_and_an_absent_level(randhie: pd.DataFrame) -> None:
    frames = split(randhie, 3)
    frames[0] = frames[0][frames[0].health != "poor"]
    result = simulate(
        {
            "statistic": "variance",
            "dataset": "hie",
            "column": "disea",
            "where": [["health", "==", "poor"]],
        },
        frames,
    )
    pooled = pd.concat(frames)
    rows = pooled[pooled.health == "poor"]
    assert result["n"] == len(rows)
    assert result["variance"] == pytest.approx(rows.disea.var(), rel=REL)


def test_a_constant_column_has_zero_variance(randhie: pd.DataFrame) -> None:
    frames = [f.assign(k=7.25) for f in split(randhie, 3)]
    result = simulate({"statistic": "variance", "dataset": "hie", "column": "k"}, frames)
    assert result["mean"] == 7.25 and result["variance"] == 0.0 and result["std"] == 0.0


def test_empty_selection_gives_nulls_not_numbers(randhie: pd.DataFrame) -> None:
    frames = split(randhie, 3)
    result = simulate(
        {"statistic": "mean", "dataset": "hie", "column": "mdvis", "where": [["mdvis", ">", 1000]]},
        frames,
    )
    assert result == {"n": 0, "mean": None}


def test_bad_queries_fail_before_any_party_starts(randhie: pd.DataFrame) -> None:
    frames = split(randhie.head(300), 3)
    with pytest.raises(QueryInvalid, match="unknown column 'weight'"):
        simulate({"statistic": "mean", "dataset": "hie", "column": "weight"}, frames)
    with pytest.raises(QueryInvalid, match="at least 3 parties"):
        simulate({"statistic": "count", "dataset": "hie"}, frames[:2])
    with pytest.raises(QueryInvalid, match="same columns"):
        simulate(
            {"statistic": "count", "dataset": "hie"},
            [frames[0], frames[1].drop(columns="idp"), frames[2]],
        )


def test_a_party_that_cannot_run_fails_the_protocol(randhie: pd.DataFrame) -> None:
    frames = split(randhie.head(300), 3)
    with pytest.raises(ProtocolFailed, match=r"did not finish|timed out"):
        # a timeout too short to even connect: every party is stopped, none hangs
        simulate({"statistic": "count", "dataset": "hie"}, frames, timeout_s=0.001)
