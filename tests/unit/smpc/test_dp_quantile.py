"""The dp quantile's plaintext twin: the utility's sensitivity and the selection's law.

`selection_probabilities` is the exact law of the protocol's report-noisy-max (one-sided
geometric noise, ties to the lowest index). Checked here: it is a distribution, it equals a
brute-force enumeration on a tiny case, and on every neighbouring pair of small histograms
(one row added to any bin) no outcome's probability changes by more than a factor e^ε.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from smpc import local_summary, prepare
from smpc.frames import infer_schema
from smpc.statistics.quantile import (
    DP_GRID_BITS,
    Utility,
    candidate_bits,
    grid_bins,
    selection_probabilities,
)
from tessera.errors import QueryInvalid

LEVELS = [0.0, 0.1, 0.25, 1 / 3, 0.5, 0.9, 1.0]


def neighbours(counts: list[int]) -> list[list[int]]:
    """`counts` with one row added to each bin in turn."""
    return [[c + (j == i) for j, c in enumerate(counts)] for i in range(len(counts))]


@pytest.mark.parametrize("q", LEVELS)
def test_the_utility_has_the_stated_sensitivity(q: float) -> None:
    rng = np.random.default_rng(7)
    utility = Utility.of(q)
    assert utility.sensitivity * utility.unit == max(q, 1 - q) or q not in (0, 0.25, 0.5, 1)
    for _ in range(50):
        counts = rng.integers(0, 6, size=8).tolist()
        if not sum(counts):
            continue
        u = utility.plain(counts)
        assert u.max() <= 0
        for other in neighbours(counts):
            assert np.abs(utility.plain(other) - u).max() <= utility.sensitivity


def test_the_best_bin_holds_the_quantile() -> None:
    counts = [0, 3, 5, 0, 4, 8]  # ranks 1-3 in bin 1, 4-8 in bin 2, 9-12 in bin 4, 13-20 in 5
    for q, best in [(0.0, 1), (0.25, 2), (0.5, 4), (0.75, 5), (1.0, 5)]:
        u = Utility.of(q).plain(counts)
        assert int(np.argmax(u)) == best and u[best] == 0, q


def test_the_law_is_a_distribution_and_matches_brute_force() -> None:
    utilities, alpha = [-2, 0, -1], 0.5
    p = selection_probabilities(utilities, alpha)
    brute = np.zeros(3)
    for xs in itertools.product(range(48), repeat=3):
        scores = [u + x for u, x in zip(utilities, xs, strict=True)]
        brute[int(np.argmax(scores))] += math.prod((1 - alpha) * alpha**x for x in xs)
    assert p == pytest.approx(brute, abs=1e-12)
    assert p.sum() == pytest.approx(1, abs=1e-12)


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.875, 1.0])  # small scales
@pytest.mark.parametrize("epsilon", [0.3, 1.0])
def test_the_selection_is_epsilon_dp_on_neighbouring_histograms(q: float, epsilon: float) -> None:
    rng = np.random.default_rng(11)
    utility = Utility.of(q)
    alpha = Utility.of(q).noise(epsilon).alpha
    worst = 0.0
    for _ in range(40):
        counts = rng.integers(0, 4, size=6).tolist()
        p = selection_probabilities(utility.plain(counts), alpha)
        for other in neighbours(counts):
            p2 = selection_probabilities(utility.plain(other), alpha)
            worst = max(worst, float(np.max(np.abs(np.log(p2) - np.log(p)))))
    assert worst <= epsilon + 1e-9
    assert worst > 0.3 * epsilon  # the bound is not vacuous


def test_candidates_follow_the_noisy_n() -> None:
    assert [candidate_bits(n) for n in (-3, 0, 5, 64, 65, 400, 1000, 10**6)] == [
        4, 4, 4, 4, 5, 7, 8, 8
    ]  # fmt: skip
    values = np.array([-5.0, 0.0, 0.999, 1.0, 5.0, 10.0, 11.0])
    assert grid_bins(values, (0.0, 10.0)).tolist() == [0, 0, 25, 25, 128, 255, 255]


def test_dp_local_input_shares_counts_and_a_histogram_only() -> None:
    frame = pd.DataFrame({"x": [3.0, np.nan, -1.0, 7.5, 20.0], "g": ["a", "b", "b", "a", "a"]})
    raw = infer_schema([frame]).model_dump()
    raw["columns"][0].update(min=0, max=10)
    from tessera.schemas import DatasetSchema

    schema = DatasetSchema.model_validate(raw)
    query = prepare(
        {
            "statistic": "quantile",
            "dataset": "d",
            "column": "x",
            "q": [0.5],
            "group_by": ["g"],
            "dp": {"epsilon": 1.0},
        },
        schema,
    )
    summary = local_summary(query, frame, schema)
    fine = 1 << DP_GRID_BITS
    assert summary.counts == [3, 1] and summary.rows is None
    assert list(summary.vectors) == ["bins"] and len(summary.vectors["bins"]) == 2 * fine
    bins = np.array(summary.vectors["bins"]).reshape(2, fine)
    assert np.flatnonzero(bins[0]).tolist() == [76, 192, 255]  # 3, 7.5 and 20 clipped to 10
    assert np.flatnonzero(bins[1]).tolist() == [0] and bins.sum() == 4  # -1 clipped to 0


def test_a_dp_quantile_needs_declared_bounds() -> None:
    frame = pd.DataFrame({"x": [3.0, -1.0, 7.5, 2.0]})
    query = {"statistic": "quantile", "dataset": "d", "column": "x", "q": [0.5]}
    with pytest.raises(QueryInvalid, match="dp quantile of 'x' needs the column's bounds"):
        prepare({**query, "dp": {"epsilon": 1.0}}, infer_schema([frame]))
