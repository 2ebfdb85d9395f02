"""A query's estimated cost (`smpc.cost`), from the query and the declared schema alone.

The formulas are each statistic's (`cost`, beside its protocol); here they are checked by hand
for every statistic, against the size of what each party really shares (the local summary),
and in their shape (groups, bins, levels, parties). `tests/integration/smpc/test_cost.py`
counts what a real run compares."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from smpc.cost import QueryCost, noise_coins
from smpc.statistics import DP_STATISTICS, REGISTRY, compile_query, query_cost
from smpc.statistics.kaplan_meier import tree_nodes
from tessera.errors import QueryInvalid
from tessera.schemas import DatasetSchema

LEVELS = {"sex": ["F", "M"], "ward": ["a", "b", "c"], "dx": ["d1", "d2", "d3", "d4"]}
SCHEMA = DatasetSchema.model_validate(
    {
        "columns": [
            {"name": "x", "type": "float", "min": 0, "max": 100},
            {"name": "y", "type": "float", "min": -5, "max": 5},
            {"name": "free", "type": "float"},
            {"name": "t", "type": "integer", "min": 0, "max": 60},
            {"name": "event", "type": "boolean"},
            {"name": "icu", "type": "boolean"},
            *({"name": n, "type": "categorical", "levels": v} for n, v in LEVELS.items()),
        ]
    }
)
QUERIES = {
    "count": {},
    "sum": {"column": "x"},
    "mean": {"column": "x"},
    "variance": {"column": "x"},
    "min": {"column": "x"},
    "max": {"column": "x"},
    "quantile": {"column": "x", "q": [0.25, 0.5, 0.75]},
    "histogram": {"column": "x", "bins": [0, 10, 20, 50, 100]},
    "crosstab": {"rows": "sex", "columns": "ward"},
    "correlation": {"columns": ["x", "y", "icu"]},
    "linear_regression": {"outcome": "y", "predictors": ["x", "ward"]},
    "logistic_regression": {"outcome": "icu", "predictors": ["x", "sex"]},
    "kaplan_meier": {"time": "t", "event": "event", "group": "sex"},
    "ttest": {"column": "x", "group": "sex"},
    "chi2": {"rows": "sex", "columns": "ward"},
}


def query(statistic: str, **extra: object) -> dict[str, object]:
    return {"statistic": statistic, "dataset": "d", **QUERIES[statistic], **extra}


def test_every_statistic_has_a_cost_that_grows_with_groups() -> None:
    assert set(QUERIES) == set(REGISTRY)
    for name in REGISTRY:
        alone = query_cost(query(name), SCHEMA, 3)
        assert isinstance(alone, QueryCost) and alone.cells > 0 and alone.comparisons > 0, name
        if name == "kaplan_meier":  # its groups are `group`, not group_by
            grouped = query_cost(query(name, group="ward"), SCHEMA, 3)
        else:
            grouped = query_cost(query(name, group_by=["dx"]), SCHEMA, 3)
        assert grouped.cells > alone.cells and grouped.comparisons > alone.comparisons, name
        assert alone.to_json() == {"cells": alone.cells, "comparisons": alone.comparisons}


def test_the_issues_histogram_has_48_000_cells() -> None:
    schema = DatasetSchema.model_validate(
        {
            "columns": [
                {"name": "x", "type": "float", "min": 0, "max": 1000},
                *(
                    {"name": f"g{i}", "type": "categorical", "levels": levels}
                    for i, levels in enumerate([list("ab"), list("ab"), list("abc"), list("abcd")])
                ),
            ]
        }
    )
    raw = {
        "statistic": "histogram",
        "dataset": "d",
        "column": "x",
        "bins": list(range(1001)),
        "group_by": ["g0", "g1", "g2", "g3"],
    }
    cost = query_cost(raw, schema, 3)
    assert cost.cells == 48_000
    # the levels rule, one release comparison per cell, the keys of every cell and the total
    assert cost.comparisons == 1 + 48_000 + 2 * 48_001


@pytest.mark.parametrize("parties", [3, 5])
def test_cell_statistics_by_hand(parties: int) -> None:
    m = parties
    # count of 6 cells, no where, levels rule (3 levels): 1 + release 6 + keys 2·7
    assert query_cost(query("count", group_by=["sex", "ward"]), SCHEMA, m) == QueryCost(
        6, 1 + 6 + 14
    )
    # mean of 3 cells with where: prelude 2 + 1, release 3, keys 8, per cell the largest
    # |x| across m − 1 and one rounding (the inputs' bounds are range proofs, not comparisons)
    mean = query_cost(query("mean", group_by=["ward"], where=[["t", ">", 3]]), SCHEMA, m)
    assert mean == QueryCost(3 * 2, 3 + 3 + 8 + 3 * ((m - 1) + 1))
    # variance, one cell: largest m − 1, two roundings
    assert query_cost(query("variance"), SCHEMA, m) == QueryCost(3, 1 + 4 + m - 1 + 2)
    # max of 2 cells (levels rule): the extreme across m − 1, one rounding per cell
    assert query_cost(query("max", group_by=["sex"]), SCHEMA, m) == QueryCost(
        4, 1 + 2 + 6 + 2 * (m - 1 + 1)
    )
    # crosstab: 6 cells (its axes are not grouping columns: no levels rule)
    assert query_cost(query("crosstab"), SCHEMA, m) == QueryCost(6, 6 + 14)


def test_cells_are_what_each_party_shares_per_cell() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "x": rng.uniform(0, 100, 200),
            "ward": rng.choice(LEVELS["ward"], 200),
            "dx": rng.choice(LEVELS["dx"], 200),
            "sex": rng.choice(LEVELS["sex"], 200),
        }
    )
    for name in ("count", "mean", "variance", "max", "histogram", "crosstab"):
        statistic = compile_query(query(name, group_by=["dx"]), SCHEMA)
        summary = statistic.local_summary(frame)
        values = 1 + len(summary.moments) + ("extreme" in summary.vectors)
        assert statistic.cost(3).cells == len(summary.counts) * values, name


def test_quantile_counts_the_search_per_group_and_level() -> None:
    # 3 levels, 4 groups: prelude 1, release 4, keys 10, per (group, level) 3 × 16 + 1
    cost = query_cost(query("quantile", group_by=["dx"]), SCHEMA, 3)
    assert cost == QueryCost(4 * 4, 1 + 4 + 10 + 4 * 3 * 49)
    # the same in any number of parties: the search works on pooled histograms
    assert query_cost(query("quantile", group_by=["dx"]), SCHEMA, 7) == cost


def test_kaplan_meier_counts_its_grid_tree_and_log_rank() -> None:
    grid, nodes = 61, len(tree_nodes(61))
    two = query_cost(query("kaplan_meier"), SCHEMA, 3)
    search = 2 * (6 + 1)  # ⌈log₂ 61⌉ + 1 probes per group
    logrank = 2 * grid + search + 3
    assert two == QueryCost(2 * (1 + 2 * nodes), 1 + 2 + logrank + 6 + 2 * nodes * 8)
    one = query_cost(query("kaplan_meier", group=None), SCHEMA, 3)
    assert one == QueryCost(1 + 2 * nodes, 1 + 4 + nodes * 8)  # no log-rank test


def test_models_count_their_ratios() -> None:
    # linear: p = 4 (const, x, ward b, ward c); the model rule; one group: keys 2, release 1,
    # small cells 2·3 (each of ward's levels with and without), pivots 4, ratios 9 + 3
    linear = query_cost(query("linear_regression"), SCHEMA, 3)
    assert linear == QueryCost(1 + 9, 1 + 2 + 1 + 6 + 4 + 12)
    # correlation of x, y and the boolean icu: two pairs with a binary column (2 levels each),
    # three zero tests, per pair a sign bit and a ratio of one numerator and one denominator
    correlation = query_cost(query("correlation"), SCHEMA, 3)
    # (keys 2, release 1, screen 4, zero tests 3, signs 3, ratios 6)
    assert correlation == QueryCost(1 + 3, 2 + 1 + 4 + 3 + 3 + 6)
    # a column without bounds adds its corners across the sites
    free = query_cost(query("correlation", columns=["x", "free"]), SCHEMA, 5)
    bounded = query_cost(query("correlation", columns=["x", "y"]), SCHEMA, 5)
    assert free.comparisons == bounded.comparisons + 2 * 4
    # logistic: p = 3, the model rule, keys 2, release 1, small cells 2·2 (sex's levels),
    # nine eliminations of 3 pivots and 3 ratios over one denominator
    logistic = query_cost(query("logistic_regression"), SCHEMA, 3)
    assert logistic.comparisons == 1 + 2 + 1 + 2 * 2 + 9 * (3 + 4)
    assert logistic.cells == 1 + 6 + 8 * 3


def test_ttest_and_chi2_by_hand() -> None:
    # ttest, one group of two levels: levels rule 1, release 2, keys 2·3, two ratios of one
    # numerator and one denominator each, one sign bit (the inputs' bounds: range proofs)
    assert query_cost(query("ttest"), SCHEMA, 3) == QueryCost(3, 1 + 2 + 6 + 4 + 1)
    # chi2, one 2 × 3 table: release 6, keys of 6 cells and the table
    assert query_cost(query("chi2"), SCHEMA, 3) == QueryCost(7, 6 + 14)


def test_dp_counts_the_noise_coins() -> None:
    for name in DP_STATISTICS:
        exact = query_cost(query(name), SCHEMA, 3)
        noisy = query_cost(query(name, dp={"epsilon": 1.0}), SCHEMA, 3)
        assert noisy.comparisons > 0 and noisy.cells > 0, name
        assert noisy != exact or name == "count", name
    statistic = compile_query(query("histogram", dp={"epsilon": 1.0}), SCHEMA)
    coins = noise_coins(statistic.noise["count"], 4)
    assert statistic.cost(3) == QueryCost(4, coins + 4)
    # a smaller epsilon needs more coins per noisy value
    small = compile_query(query("histogram", dp={"epsilon": 0.1}), SCHEMA)
    assert small.cost(3).comparisons > statistic.cost(3).comparisons


def test_an_invalid_query_has_no_cost() -> None:
    with pytest.raises(QueryInvalid):
        query_cost({"statistic": "mean", "dataset": "d", "column": "nope"}, SCHEMA, 3)
