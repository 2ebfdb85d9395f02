"""A query's estimated cost (`smpc.cost`) against the protocol it estimates: the secure
comparisons and bit decompositions a real run among MPyC parties performs, counted inside
each party (`cost_party.py`), equal the estimate for the statistics whose every comparison is
one of those (the cell protocol and quantile's search; every cell released)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from smpc.statistics import query_cost
from tessera.schemas import DatasetSchema

from .party_script import run_parties

PARTY = Path(__file__).with_name("cost_party.py")
SCHEMA = DatasetSchema.model_validate(
    {
        "columns": [
            {"name": "x", "type": "float", "min": 0, "max": 100},
            {"name": "sex", "type": "categorical", "levels": ["F", "M"]},
            {"name": "ward", "type": "categorical", "levels": ["a", "b", "c"]},
            {"name": "t", "type": "integer", "min": 0, "max": 10},
            {"name": "event", "type": "boolean"},
        ],
        "rows": 60,
    }
)
BASE = {"dataset": "cohort", "min_count": 3}


def measured(query: dict[str, Any], parties: int = 3) -> list[int]:
    task = {"query": query, "schema": SCHEMA.model_dump(exclude_none=True), "floor": 0}
    outcomes = run_parties(PARTY, {"TESSERA_COST": json.dumps(task)}, parties, timeout=240)
    assert all(o["n"] is not None for o in outcomes), "every cell released"
    return [int(o["comparisons"]) for o in outcomes]


@pytest.mark.parametrize(
    "query",
    [
        {"statistic": "count", "group_by": ["sex", "ward"]},
        {"statistic": "mean", "column": "x", "group_by": ["ward"], "where": [["t", ">=", 3]]},
        {"statistic": "variance", "column": "x", "group_by": ["sex"]},
        {"statistic": "max", "column": "x", "group_by": ["sex"]},
        {"statistic": "histogram", "column": "x", "bins": [0, 25, 50, 75, 100]},
        {"statistic": "crosstab", "rows": "sex", "columns": "ward"},
        {"statistic": "quantile", "column": "x", "q": [0.25, 0.5]},
    ],
    ids=lambda q: q["statistic"],
)
def test_the_estimate_counts_what_a_run_compares(query: dict[str, Any]) -> None:
    raw = {**BASE, **query}
    expected = query_cost(raw, SCHEMA, 3).comparisons
    assert measured(raw) == [expected] * 3


def test_the_estimate_follows_the_number_of_parties() -> None:
    raw = {**BASE, "statistic": "max", "column": "x", "group_by": ["ward"]}
    assert measured(raw, parties=4) == [query_cost(raw, SCHEMA, 4).comparisons] * 4
