"""Differential privacy inside MPC: the noise's distribution, and dp queries through `simulate`.

The noise is drawn by real MPyC parties (separate processes on loopback). To check its law,
`dp_noise_party.py` runs the same sampler and opens the samples, which the protocol never does.
Query data: the RAND Health Insurance Experiment (statsmodels `randhie`), split over 3 parties
(one run over 5); the reference is `smpc.reference`, the exact noiseless result on clipped data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from smpc import reference, simulate
from smpc.dp import NoiseSpec, sum_sensitivity
from smpc.frames import infer_schema
from smpc.frames import uneven_shares as split
from tessera.errors import QueryInvalid
from tessera.schemas import ColumnSpec, DatasetSchema

from .party_script import run_parties

ROOT = Path(__file__).resolve().parents[3]
SAMPLER = Path(__file__).with_name("dp_noise_party.py")
TAIL = 15  # |Z| > 15·b has probability about e^-15 ≈ 3e-7 per noisy value


def draw(wanted: list[dict[str, float]], parties: int = 3) -> list[np.ndarray]:
    """Samples drawn inside one MPC run (and opened for the test) per entry of `wanted`."""
    outputs = run_parties(SAMPLER, {"TESSERA_DP_SAMPLES": json.dumps(wanted)}, parties, 280)
    assert all(o["samples"] == outputs[0]["samples"] for o in outputs), "parties disagree"
    return [np.array(s, dtype=object) for s in outputs[0]["samples"]]


def check_discrete_laplace(samples: np.ndarray, spec: NoiseSpec, p_min: float = 1e-4) -> None:
    """Integers; mean ≈ 0, variance ≈ 2α/(1−α)², and the law by a chi-square test."""
    assert all(isinstance(v, int) for v in samples)
    n = len(samples)
    x = samples.astype(float)
    sd = math.sqrt(spec.variance)
    assert abs(x.mean()) <= 5 * sd / math.sqrt(n)
    # Var(s²) ≈ (κ − 1)σ⁴/n with kurtosis κ ≤ 6 for the (discrete) Laplace
    assert abs(x.var() / spec.variance - 1) <= 5 * math.sqrt(5 / n)
    alpha = spec.alpha
    edge = max(1, int(math.log(5 / n) / math.log(alpha)))  # expected ≥ 5 in the outer classes
    ks = np.arange(-edge + 1, edge)
    pmf = (1 - alpha) / (1 + alpha) * alpha ** np.abs(ks)
    tail = alpha**edge / (1 + alpha)
    observed = [np.sum(x <= -edge), *(np.sum(x == k) for k in ks), np.sum(x >= edge)]
    expected = n * np.array([tail, *pmf, tail])
    assert stats.chisquare(observed, expected).pvalue > p_min


def test_noise_is_discrete_laplace_on_the_count_and_the_sum_grids() -> None:
    count = NoiseSpec(1.0, 1)
    fine = NoiseSpec(0.5, sum_sensitivity((0.0, 100.0)))  # a mean's Σx, x in [0, 100]
    small, large = draw([{"epsilon": 1.0, "sensitivity": 1, "count": 500}, {
        "epsilon": fine.epsilon, "sensitivity": fine.sensitivity, "count": 40
    }])  # fmt: skip
    check_discrete_laplace(small, count)

    # the sum grid: Laplace of scale b = 200 · 2^40 grid units, every digit random
    x = large.astype(float)
    b = fine.sensitivity / fine.epsilon
    assert all(isinstance(v, int) and abs(v) < 2**fine.bits for v in large)
    assert abs(x.mean()) <= 5 * math.sqrt(2) * b / math.sqrt(len(x))
    assert 0.15 < x.var() / (2 * b * b) < 5  # each side fails with probability < 1e-5
    odd = sum(v % 2 for v in large)
    assert 5 <= odd <= 35, "the lowest digit must be a fair-ish coin"


# ---- dp queries through simulate ---------------------------------------------------------


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


@pytest.fixture(scope="module")
def schema(randhie: pd.DataFrame) -> DatasetSchema:
    """The inferred schema, with mdvis (doctor visits, 0 to 77) declared in [0, 20]."""
    inferred = infer_schema([randhie])
    columns = [
        ColumnSpec(name="mdvis", type="integer", min=0, max=20) if c.name == "mdvis" else c
        for c in inferred.columns
    ]
    return DatasetSchema(columns=columns)


def test_dp_count_with_where_and_group_by(randhie: pd.DataFrame, schema: DatasetSchema) -> None:
    query = {
        "statistic": "count",
        "dataset": "hie",
        "where": [["lncoins", ">", 2]],
        "group_by": ["health"],
        "dp": {"epsilon": 0.5, "delta": 1e-7},
    }
    result = simulate(query, split(randhie, 3), schema)
    exact = reference(query, randhie, schema)
    assert (
        result["dp"]
        == exact["dp"]
        == {
            "epsilon": 0.5,
            "delta": 1e-7,
            "mechanism": "discrete_laplace",
            "epsilon_split": {"count": 0.5},
            "noise_scale": {"count": 2.0},
        }
    )
    for got, want in zip(result["groups"], exact["groups"], strict=True):
        assert got["group"] == want["group"]
        assert isinstance(got["count"], int) and got["n"] == got["count"]
        assert abs(got["count"] - want["count"]) <= TAIL * 2.0
    assert result["n"] == sum(g["count"] for g in result["groups"])


def test_dp_mean_and_sum_are_of_values_clipped_to_the_bounds(
    randhie: pd.DataFrame, schema: DatasetSchema
) -> None:
    frames = split(randhie, 3)
    query = {"statistic": "mean", "dataset": "hie", "column": "mdvis", "group_by": ["idp"]}
    result = simulate({**query, "dp": {"epsilon": 1.0}}, frames, schema)
    exact = reference({**query, "dp": {"epsilon": 1.0}}, randhie, schema)
    assert result["dp"]["epsilon_split"] == {"count": 0.5, "sum": 0.5}
    b_count, b_sum = result["dp"]["noise_scale"]["count"], result["dp"]["noise_scale"]["sum"]
    assert (b_count, b_sum) == (2.0, pytest.approx(40.0, rel=2**-10))  # Δ = 20 (max) at ε/2
    for got, want in zip(result["groups"], exact["groups"], strict=True):
        n = want["n"]
        bound = (TAIL * b_sum + want["mean"] * TAIL * b_count) / (n - TAIL * b_count)
        assert abs(got["mean"] - want["mean"]) <= bound
        assert abs(got["n"] - n) <= TAIL * b_count
        assert 0 <= got["mean"] <= 20

    # large ε, small noise: the sum is that of the clipped column, far from the raw one
    total = simulate(
        {"statistic": "sum", "dataset": "hie", "column": "mdvis", "dp": {"epsilon": 8.0}},
        frames,
        schema,
    )
    clipped = float(randhie.mdvis.clip(0, 20).sum())
    assert abs(total["sum"] - clipped) <= TAIL * 5.0  # b = 20 / 4
    assert float(randhie.mdvis.sum()) - clipped > 1000
    assert total["sum"] != clipped  # noise on the 2^-40 grid: never exactly the value


def test_dp_variance_from_noisy_sufficient_statistics(
    randhie: pd.DataFrame, schema: DatasetSchema
) -> None:
    """n, Σx and Σx² of clipped values each get ε/3 (Σx²'s sensitivity: max², here 20²); the
    variance is computed from them, so its error follows from theirs (first order)."""
    frames = split(randhie, 3)
    query = {"statistic": "variance", "dataset": "hie", "column": "mdvis", "dp": {"epsilon": 3.0}}
    result = simulate(query, frames, schema)
    exact = reference(query, randhie, schema)
    assert result["dp"]["epsilon_split"] == {"count": 1.0, "sum": 1.0, "sumsq": 1.0}
    scale = result["dp"]["noise_scale"]
    assert scale["count"] == 1.0
    assert scale["sum"] == pytest.approx(20.0, rel=2**-10)  # Δ = 20 at ε = 1
    assert scale["sumsq"] == pytest.approx(400.0, rel=2**-10)  # Δ = 20² at ε = 1
    n, mean, variance = exact["n"], exact["mean"], exact["variance"]
    assert abs(result["n"] - n) <= TAIL * scale["count"]
    assert abs(result["mean"] - mean) <= (TAIL * scale["sum"] + mean * TAIL) / (n - TAIL)
    # Var = (Σx² − (Σx)²/n)/(n − 1): errors of Σx², Σx and n, each at most TAIL scales
    sq, s = (n - 1) * variance + n * mean**2, n * mean
    bound = (TAIL * scale["sumsq"] + 2 * s * TAIL * scale["sum"] / n) / (n - 1)
    bound += (s * s / n**2 * TAIL + sq * TAIL / n) / (n - 1)  # the count's error, first order
    assert abs(result["variance"] - variance) <= bound
    assert result["variance"] != variance and 0 <= result["variance"] <= 100 * n / (n - 1)


def test_dp_histogram_is_noisy_and_differs_between_runs(
    randhie: pd.DataFrame, schema: DatasetSchema
) -> None:
    frames = split(randhie, 3)
    bins = list(np.linspace(0, 5, 21))
    query = {
        "statistic": "histogram",
        "dataset": "hie",
        "column": "lncoins",
        "bins": bins,
        "dp": {"epsilon": 1.0},
    }
    first = simulate(query, frames, schema)
    second = simulate(query, frames, schema)
    exact = reference(query, randhie, schema)
    for result in (first, second):
        assert result["edges"] == bins and len(result["counts"]) == 20
        assert all(
            abs(a - b) <= TAIL for a, b in zip(result["counts"], exact["counts"], strict=True)
        )
        assert result["n"] == sum(result["counts"])
    assert first["counts"] != second["counts"]
    assert first["counts"] != exact["counts"]


def test_dp_crosstab_suppresses_on_noisy_counts(
    randhie: pd.DataFrame, schema: DatasetSchema
) -> None:
    frames = split(randhie, 3)
    query = {
        "statistic": "crosstab",
        "dataset": "hie",
        "rows": "health",
        "columns": "idp",
        "where": [["mdvis", ">", 40]],  # a few rows: some cells are empty
        "min_count": 5,
        "dp": {"epsilon": 2.0},
    }
    result = simulate(query, frames, schema)
    exact = reference({**query, "min_count": 0}, randhie, schema)
    for got_row, want_row in zip(result["counts"], exact["counts"], strict=True):
        for got, want in zip(got_row, want_row, strict=True):
            if want == 0:
                assert got is None  # an empty cell: noisy count ≥ 5 has probability 4e-5
            elif got is not None:
                assert got >= 5 and abs(got - want) <= TAIL * 0.5
    assert any(w > 0 for row in exact["counts"] for w in row)
    assert result["n"] is None  # a suppressed cell hides the table's n


@pytest.mark.slow
def test_dp_mean_over_five_parties(randhie: pd.DataFrame, schema: DatasetSchema) -> None:
    query = {"statistic": "mean", "dataset": "hie", "column": "mdvis", "dp": {"epsilon": 1.0}}
    result = simulate(query, split(randhie, 5), schema)
    exact = reference(query, randhie, schema)
    n = exact["n"]
    assert abs(result["mean"] - exact["mean"]) <= (TAIL * 40 + 20 * TAIL * 2) / (n - 30)
    assert result["n"] != exact["n"] or result["mean"] != exact["mean"]


def test_dp_is_refused_where_it_cannot_be_applied(
    randhie: pd.DataFrame, schema: DatasetSchema
) -> None:
    frames = split(randhie.head(300), 3)
    dp = {"epsilon": 1.0}
    supported = "available for count, sum, mean, variance, quantile, histogram, crosstab"
    with pytest.raises(QueryInvalid, match=supported):
        simulate({"statistic": "max", "dataset": "hie", "column": "mdvis", "dp": dp}, frames)
    with pytest.raises(QueryInvalid, match="dp mean of 'lncoins' needs the column's bounds"):
        simulate({"statistic": "mean", "dataset": "hie", "column": "lncoins", "dp": dp}, frames)
    with pytest.raises(QueryInvalid, match="dp sum of 'mdvis' needs"):  # inferred: no bounds
        simulate({"statistic": "sum", "dataset": "hie", "column": "mdvis", "dp": dp}, frames)
