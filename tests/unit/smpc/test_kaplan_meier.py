"""Kaplan–Meier's plaintext pieces: refusals, local grid counts, curves from opened prefixes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from smpc import local_summary, prepare
from smpc.statistics import statistic_for
from smpc.statistics.kaplan_meier import MAX_GRID, KaplanMeier
from tessera.errors import QueryInvalid
from tessera.schemas import ColumnSpec, DatasetSchema


def declared(low: float | None = 2, high: float | None = 6, kind: str = "integer") -> DatasetSchema:
    return DatasetSchema(
        columns=[
            ColumnSpec(name="t", type=kind, min=low, max=high),  # type: ignore[arg-type]
            ColumnSpec(name="dead", type="boolean"),
            ColumnSpec(name="arm", type="categorical", levels=["a", "b"]),
            ColumnSpec(name="dose", type="float"),
        ]
    )


QUERY = {"statistic": "kaplan_meier", "dataset": "d", "time": "t", "event": "dead", "group": "arm"}


@pytest.mark.parametrize(
    ("schema", "change", "message"),
    [
        (declared(kind="float"), {}, "'t' is float; it must be an integer column"),
        (declared(None, None), {}, "needs declared bounds"),
        (declared(-1, 6), {}, "whole numbers with min >= 0"),
        (declared(0, MAX_GRID), {}, f"has {MAX_GRID + 1} points; at most {MAX_GRID}"),
        (declared(), {"group_by": ["arm"]}, "compare groups with 'group'"),
        (declared(), {"group": "dose"}, "group column 'dose' is float"),
        (declared(), {"event": "arm", "group": None}, "event column 'arm' must be boolean or 0/1"),
        (declared(), {"event": "t"}, "must be different columns"),
    ],
)
def test_queries_the_protocol_cannot_run_are_refused(
    schema: DatasetSchema, change: dict, message: str
) -> None:
    with pytest.raises(QueryInvalid, match=message):
        prepare({**QUERY, **change}, schema)


@pytest.mark.parametrize(
    ("column", "values"),
    [("t", [1, 3, 4]), ("t", [2, 3, 7]), ("dead", [0, 2, 1])],
)
def test_rows_the_grid_cannot_hold_are_counted_not_raised_at_the_node(
    column: str, values: list
) -> None:
    """A time off the grid (not whole, or outside the declared bounds) or an event not 0/1 is a
    row-rule violation: the node counts it for the prelude (pooled, refused inside MPC with no
    node named) and leaves the row out of its counts; it never raises with the node's name."""
    frame = pd.DataFrame({"t": [2, 3, 4], "dead": [1, 0, 1], "arm": "a", "dose": 1.0})
    frame[column] = values
    schema = declared()
    if column == "dead":
        schema = DatasetSchema(
            columns=[
                c if c.name != "dead" else ColumnSpec(name="dead", type="integer")
                for c in schema.columns
            ]
        )
    summary = local_summary(prepare(QUERY, schema), frame, schema)
    assert summary.selection == [3, 3, 3, 1]
    assert summary.counts == [2, 0]  # the offending row is left out


def test_each_party_shares_its_numbers_at_risk_and_events_per_grid_point() -> None:
    frame = pd.DataFrame(
        {
            "t": [2, 4, 4, 6, 3, np.nan, 5],
            "dead": [True, False, True, True, False, True, None],
            "arm": ["a", "a", "a", "a", "b", "b", "b"],
            "dose": 0.0,
        }
    )
    summary = local_summary(prepare(QUERY, declared()), frame, declared())
    assert summary.counts == [4, 1]
    #                        t = 2  3  4  5  6 | 2  3  4  5  6
    assert summary.vectors["at_risk"] == [4, 3, 3, 1, 1, 1, 1, 0, 0, 0]
    assert summary.vectors["events"] == [1, 0, 1, 0, 1, 0, 0, 0, 0, 0]


def test_a_curve_lists_time_zero_then_every_observed_time_of_the_prefix() -> None:
    statistic = statistic_for(prepare(QUERY, declared(0, 6)), declared(0, 6))
    assert isinstance(statistic, KaplanMeier)
    # all 7 grid points shown (min_count 0): events at 0 and 3, censored at 5, none at 6
    curve = statistic.curve([10, 9, 9, 9, 7, 7, 0], [1, 0, 0, 2, 0, 0, 0])
    assert curve["time"] == [0, 3, 5]
    assert curve["at_risk"] == [10, 9, 7]
    assert curve["survival"] == pytest.approx([0.9, 0.9 * 7 / 9, 0.9 * 7 / 9])
    # a truncated prefix: its last point is an observed time
    assert statistic.curve([10, 9, 9, 9], [1, 0, 0, 2])["time"] == [0, 3]
    assert statistic.curve([0, 0, 0, 0, 0, 0, 0], [0] * 7) == {
        "n": 0,
        "time": [],
        "survival": [],
        "at_risk": [],
    }
