"""`simulate` runs the real protocol (one MPyC process per party) in the `exact` disclosure mode.

Each result is checked twice: it equals `reference_parties` (the same cell-key perturbation
computed in plaintext from the parties' summaries: this proves the secure arithmetic, integer
for integer), and it lies within the documented perturbation of the pandas/numpy value on the
pooled rows (`perturbed`: counts ±3, sums ±0.25·max|x|, extremes ±0.25·(max − min)), with
exactly the cells the per-site threshold rule allows released.

Data: the RAND Health Insurance Experiment (statsmodels `randhie`, 20 190 rows), split unevenly
across 3, 5 and 7 parties.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest

from smpc import simulate
from smpc.frames import infer_schema
from smpc.frames import uneven_shares as split
from smpc.statistics import reference_parties
from tessera.errors import ProtocolFailed, QueryInvalid, TesseraError
from tessera.schemas import DatasetSchema

from .perturbed import (
    check_count,
    check_extreme,
    check_mean,
    check_sum,
    check_variance,
    refused,
    released_cells,
)


def run(
    query: dict[str, Any],
    frames: list[pd.DataFrame],
    schema: DatasetSchema | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """`simulate`, checked against the plaintext oracle for the same frames, schema and rules."""
    schema = schema or infer_schema(frames)
    result = simulate(query, frames, schema, **kwargs)
    assert result == reference_parties(query, frames, schema, **kwargs)
    return result


def declared(frames: list[pd.DataFrame], bounds: dict[str, tuple[float, float]]) -> DatasetSchema:
    """The inferred schema with declared bounds (public knowledge) for the named columns."""
    raw = infer_schema(frames).model_dump()
    for column in raw["columns"]:
        if column["name"] in bounds:
            column["min"], column["max"] = bounds[column["name"]]
    return DatasetSchema.model_validate(raw)


def site_counts(frames: Sequence[pd.DataFrame], column: str, levels: list[str]) -> list[list[int]]:
    return [[int((f[column] == level).sum()) for level in levels] for f in frames]


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
def test_moments_are_the_oracles_and_near_pandas(randhie: pd.DataFrame, parties: int) -> None:
    frames = split(randhie, parties)
    rows = randhie[randhie.lncoins > 2]
    result = run(
        {
            "statistic": "variance",
            "dataset": "hie",
            "column": "disea",
            "where": [["lncoins", ">", 2]],
        },
        frames,
    )
    check_variance(result, rows.disea)

    total = run({"statistic": "sum", "dataset": "hie", "column": "mdvis"}, frames)
    check_count(total["n"], len(randhie))
    check_sum(total["sum"], randhie.mdvis)


def test_grouped_mean_and_count_are_the_oracles_and_near_pandas(randhie: pd.DataFrame) -> None:
    frames = split(randhie, 3)
    result = run(
        {"statistic": "mean", "dataset": "hie", "column": "fmde", "group_by": ["health", "idp"]},
        frames,
    )
    check_count(result["n"], len(randhie))
    assert len(result["groups"]) == 8
    for entry in result["groups"]:
        sub = randhie[
            (randhie.health == entry["group"]["health"])
            & (randhie.idp == (entry["group"]["idp"] == "True"))
        ]
        check_mean(entry["mean"], entry["n"], sub.fmde)
    levels = [e["group"]["health"] for e in result["groups"]]
    assert levels == sorted(levels)


@pytest.mark.parametrize("parties", [3, pytest.param(7, marks=pytest.mark.slow)])
def test_min_and_max_move_by_at_most_a_quarter_of_the_declared_range(
    randhie: pd.DataFrame, parties: int
) -> None:
    frames = split(randhie, parties)
    schema = declared(frames, {"lpi": (0, 8), "disea": (0, 60)})  # RAND HIE's documented scales
    low = run(
        {"statistic": "min", "dataset": "hie", "column": "lpi", "where": [["lpi", ">", 0]]},
        frames,
        schema,
    )
    high = run(
        {"statistic": "max", "dataset": "hie", "column": "disea", "group_by": ["health"]},
        frames,
        schema,
    )
    positive = randhie.lpi[randhie.lpi > 0]
    check_count(low["n"], len(positive))
    check_extreme(low["min"], positive, "min", spread=8)
    assert low["min"] != positive.min()  # moved: never a child's exact value (here)
    for entry in high["groups"]:
        sub = randhie[randhie.health == entry["group"]["health"]]
        check_count(entry["n"], len(sub))
        check_extreme(entry["max"], sub.disea, "max", spread=60)


def test_histogram_with_suppression_inside_mpc(randhie: pd.DataFrame) -> None:
    frames = split(randhie, 5)
    bins = [0, 1, 2, 5, 10, 20, 40, 77]
    result = run(
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
    assert [c is None for c in result["counts"]] == [c < 100 for c in counts]
    for shown, true in zip(result["counts"], counts, strict=True):
        if true >= 100:
            check_count(shown, int(true))
    assert None in result["counts"], "the test needs a suppressed bin"
    assert result["n"] is None, "n would reveal the suppressed bin by subtraction"

    unsuppressed = run(
        {"statistic": "histogram", "dataset": "hie", "column": "mdvis", "bins": bins}, frames
    )
    for shown, true in zip(unsuppressed["counts"], counts, strict=True):
        check_count(shown, int(true))
    check_count(unsuppressed["n"], int(counts.sum()))


def test_small_groups_are_suppressed_and_the_node_floor_wins(randhie: pd.DataFrame) -> None:
    frames = split(randhie, 3)
    levels = ["excellent", "fair", "good", "poor"]
    sizes = randhie.groupby("health").size()
    floor = int(sizes["poor"]) + 1  # "poor" is the smallest group
    query = {"statistic": "count", "dataset": "hie", "group_by": ["health"], "min_count": 1}
    floors = [0, floor, 0]
    result = run(query, frames, min_count_floors=floors)
    shown = {g["group"]["health"]: g["count"] for g in result["groups"]}
    # party 1 holds 0 or at least `floor` rows of every larger group: only T suppresses here
    assert released_cells(site_counts(frames, "health", levels), floor, floors) == [
        sizes[level] >= floor for level in levels
    ]
    assert [shown[level] is None for level in levels] == [sizes[lv] < floor for lv in levels]
    for level in levels:
        if sizes[level] >= floor:
            check_count(shown[level], int(sizes[level]))
    assert shown["poor"] is None
    assert result["n"] is None

    small = run(
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


def test_a_sites_own_floor_suppresses_its_few_rows_of_a_large_cell(
    randhie: pd.DataFrame,
) -> None:
    """The per-site rule (DataSHIELD's nfilter.tab at every site): party 0 holds 1 to 199 rows
    of "fair" and "poor", below its own floor of 200, so both are suppressed although their
    pooled counts reach T = 200; "excellent" and "good" (party 0 holds ≥ 200 of each) are not."""
    frames = split(randhie, 3)
    levels = ["excellent", "fair", "good", "poor"]
    sizes = randhie.groupby("health").size()
    per_site = site_counts(frames, "health", levels)
    floors = [200, 0, 0]
    assert all(sizes[level] >= 200 for level in levels)  # the pooled rule alone releases all
    assert [0 < c < 200 for c in per_site[0]] == [False, True, False, True]
    result = run(
        {"statistic": "count", "dataset": "hie", "group_by": ["health"]},
        frames,
        min_count_floors=floors,
    )
    shown = {g["group"]["health"]: g["count"] for g in result["groups"]}
    assert released_cells(per_site, 200, floors) == [True, False, True, False]
    assert shown["fair"] is None and shown["poor"] is None and result["n"] is None
    check_count(shown["excellent"], int(sizes["excellent"]))
    check_count(shown["good"], int(sizes["good"]))


def test_a_party_without_matching_rows_and_an_absent_level(randhie: pd.DataFrame) -> None:
    frames = split(randhie, 3)
    frames[0] = frames[0][frames[0].health != "poor"]
    result = run(
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
    check_variance(result, rows.disea)


def test_a_constant_column_has_a_near_zero_variance_and_moved_extremes(
    randhie: pd.DataFrame,
) -> None:
    """The variance's centred moment 0 is moved by u·0.25·M²·n (never below 0); min and max
    move by u·0.25·(declared range), however alike the values: the constant is every child's
    value, and a released extreme is never one."""
    frames = [f.assign(k=7.25) for f in split(randhie, 3)]
    schema = declared(frames, {"k": (0, 10)})
    k = np.full(len(randhie), 7.25)
    result = run({"statistic": "variance", "dataset": "hie", "column": "k"}, frames, schema)
    check_variance(result, k)
    assert 0 <= result["variance"] < 1e-3
    for which in ("min", "max"):
        extreme = run({"statistic": which, "dataset": "hie", "column": "k"}, frames, schema)
        check_extreme(extreme[which], k, which, spread=10)
        assert extreme[which] != 7.25
        check_count(extreme["n"], len(randhie))


def test_empty_cells_give_nulls_not_numbers(randhie: pd.DataFrame) -> None:
    frames = split(randhie, 3)
    query = {"statistic": "mean", "dataset": "hie", "column": "mdvis"}
    result = run({**query, "where": [["health", "==", "poor"]], "group_by": ["health"]}, frames)
    for entry in result["groups"]:
        if entry["group"]["health"] == "poor":
            check_mean(entry["mean"], entry["n"], randhie.mdvis[randhie.health == "poor"])
        else:  # no selected row: released (no threshold), count 0 unperturbed, mean null
            assert entry["n"] == 0 and entry["mean"] is None

    # an empty selection as a whole breaks the subset rule (subset_min 3) before anything runs
    with pytest.raises(TesseraError) as info:
        simulate({**query, "where": [["mdvis", ">", 1000]]}, frames)
    assert refused(info.value, "subset_min")


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
