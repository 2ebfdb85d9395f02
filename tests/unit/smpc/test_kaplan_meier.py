"""Kaplan–Meier's plaintext pieces: refusals, local grid counts, curves from opened counts, the
`exact` mode's tree of perturbed node sums."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from smpc import local_summary, prepare
from smpc.statistics import statistic_for
from smpc.statistics.kaplan_meier import (
    MAX_GRID,
    KaplanMeier,
    consistent_counts,
    node_perturbations,
    node_sums,
    step_estimates,
    tree_nodes,
)
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
    # the exact mode's keys: per group the 24-bit key sums (A, then B) and the plain sum of
    # the rows' 64-bit keys; with `dp` none
    assert len(summary.vectors["keys"]) == 4 and len(summary.vectors["key_totals"]) == 2
    assert all(0 <= k < 2**24 for k in summary.vectors["keys"])
    a, b = summary.vectors["key_totals"]  # arm a: 4 rows enter, arm b: 1 (two miss a value)
    assert 0 < a < 4 * 2**64 and 0 < b < 2**64
    noisy = prepare({**QUERY, "dp": {"epsilon": 1.0}}, declared())
    assert "key_totals" not in local_summary(noisy, frame, declared()).vectors


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


# ---- dp: post-processing of noisy per-step counts ------------------------------------------


def discrete_laplace(rng: np.random.Generator, epsilon: float, size: int) -> np.ndarray:
    """Plaintext twin of `smpc.dp`'s noise for a count (Δ = 1): the difference of geometrics."""
    alpha = np.exp(-epsilon)
    return rng.geometric(1 - alpha, size) - rng.geometric(1 - alpha, size)


def rossi_counts() -> tuple[np.ndarray, np.ndarray]:
    """Rossi's recidivism data: events and censorings per week 0–52 (432 rows)."""
    from lifelines.datasets import load_rossi

    rossi = load_rossi()
    events = np.bincount(rossi.week[rossi.arrest == 1], minlength=53)
    return events, np.bincount(rossi.week, minlength=53) - events


def test_noiseless_counts_pass_through_the_dp_post_processing_unchanged() -> None:
    events, censored = rossi_counts()
    at_risk, deaths = consistent_counts(events.tolist(), censored.tolist(), 432)
    assert at_risk == np.cumsum((events + censored)[::-1])[::-1].tolist()
    assert deaths == events.tolist()
    assert consistent_counts([], [], 0) == ([], [])


def test_noisy_counts_become_a_monotone_curve_in_the_unit_interval() -> None:
    """Whatever the noise: risk sets non-increasing within [0, n] and starting at n, events
    between 0 and the risk set, so S(t) is non-increasing within [0, 1]."""
    statistic = statistic_for(prepare(QUERY, declared(0, 52)), declared(0, 52))
    assert isinstance(statistic, KaplanMeier)
    events, censored = rossi_counts()
    rng = np.random.default_rng(7)
    for epsilon in (0.1, 0.5, 2.0):
        for _ in range(50):
            d = events + discrete_laplace(rng, epsilon, 53)
            c = censored + discrete_laplace(rng, epsilon, 53)
            n = max(0, int(d.sum() + c.sum()))
            at_risk, deaths = consistent_counts(d.tolist(), c.tolist(), n)
            assert at_risk[0] == n and all(0 <= r <= n for r in at_risk)
            assert (np.diff(at_risk) <= 0).all()
            assert all(0 <= e <= r for e, r in zip(deaths, at_risk, strict=True))
            survival = statistic.curve(at_risk, deaths)["survival"]
            assert all(0 <= s <= 1 for s in survival)
            assert (np.diff(survival) <= 0).all()


def test_the_dp_risk_sets_are_nearly_unbiased_unlike_clamped_cells() -> None:
    """Over 400 draws at ε = 1 the mean error of every week's risk set stays within 3 rows;
    clamping each noisy cell at 0 instead would add about 0.43 rows per empty cell (Rossi has
    about 60 of its 106): some +27 rows at week 0."""
    events, censored = rossi_counts()
    exact = np.cumsum((events + censored)[::-1])[::-1]
    rng = np.random.default_rng(11)
    errors, clamped = [], []
    for _ in range(400):
        d = events + discrete_laplace(rng, 1.0, 53)
        c = censored + discrete_laplace(rng, 1.0, 53)
        n = max(0, int(d.sum() + c.sum()))
        errors.append(np.array(consistent_counts(d.tolist(), c.tolist(), n)[0]) - exact)
        clamped.append(np.maximum(d, 0).sum() + np.maximum(c, 0).sum() - exact[0])
    assert np.abs(np.mean(errors, axis=0)).max() <= 3
    assert np.mean(clamped) > 20


def test_the_tree_holds_every_dyadic_interval_once() -> None:
    assert tree_nodes(1) == [(0, 1)]
    assert tree_nodes(5) == [
        *((i, i + 1) for i in range(5)),
        (0, 2),
        (2, 4),
        (0, 4),
        (0, 5),
    ]
    for grid in (2, 7, 53, 81, 1024, 2701):
        nodes = tree_nodes(grid)
        assert len(nodes) == len(set(nodes)) < 2 * grid
        assert nodes[-1] == (0, grid)
        # every step is in one node per level, at most ⌈log₂ grid⌉ + 1 of them
        depth = [sum(a <= i < b for a, b in nodes) for i in range(grid)]
        assert max(depth) <= (grid - 1).bit_length() + 1


def test_node_sums_and_their_least_squares_inverse() -> None:
    rng = np.random.default_rng(5)
    cells = rng.integers(0, 4, size=(2, 37))
    nodes = tree_nodes(37)
    sums = node_sums(cells, nodes)
    assert sums.tolist() == [[int(row[a:b].sum()) for a, b in nodes] for row in cells]
    # exact node sums give the steps back; perturbed ones a consistent estimate
    assert step_estimates(sums[0].tolist(), 37) == pytest.approx(cells[0].tolist(), abs=1e-6)
    events, censored = node_perturbations(2**64 + 99, len(nodes))
    assert events.tolist() != censored.tolist()
    assert set(events.tolist()) | set(censored.tolist()) <= set(range(-3, 4))
    estimate = np.array(step_estimates((sums[0] + events).tolist(), 37))
    assert np.abs(estimate - cells[0]).max() < 3  # (this key's draw)
