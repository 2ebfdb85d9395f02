"""The evaluation's 95 % intervals against reference computations: statsmodels' Wilson
interval, DeLong's variance computed pair by pair from its definition, scipy's bootstrap; and
the intervals `synth.evaluate` attaches to its figures."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import bootstrap as scipy_bootstrap
from sklearn.metrics import roc_auc_score
from statsmodels.stats.proportion import proportion_confint

import synth
from demo.cohort import HOSPITALS, cohort, schema
from synth.confidence import (
    auc_interval,
    bootstrap,
    delong,
    delong_paired,
    median_ratio_interval,
    wilson,
)
from synth.holdout import split_holdout
from synth.metadata import TableMetadata


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 24), (50, 100), (99, 100), (137, 5000)])
def test_wilson_is_statsmodels_wilson(k: int, n: int) -> None:
    expected = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert wilson(k, n) == pytest.approx(expected, abs=1e-9)


def test_wilson_refuses_impossible_counts_and_knows_nothing_of_no_rows() -> None:
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson(5, 3)


def _delong_by_definition(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """DeLong et al. (1988) from its definition: psi over every pair, O(m n)."""
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    var = v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)
    return float(psi.mean()), float(np.sqrt(var))


def test_delong_matches_its_definition_with_ties_and_sklearn_auc() -> None:
    rng = np.random.default_rng(4)
    pos = np.round(rng.normal(0.4, 1, 83), 1)  # rounded: many ties
    neg = np.round(rng.normal(0.0, 1, 140), 1)
    auc, se = delong(pos, neg)
    ref_auc, ref_se = _delong_by_definition(pos, neg)
    assert auc == pytest.approx(ref_auc, abs=1e-12) and se == pytest.approx(ref_se, rel=1e-9)
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    assert auc == pytest.approx(roc_auc_score(labels, np.r_[pos, neg]))
    low, high = auc_interval(auc, se)
    assert low == pytest.approx(auc - 1.959964 * se) and high == pytest.approx(auc + 1.959964 * se)


def test_the_paired_delong_gives_each_auc_and_a_narrower_difference_when_correlated() -> None:
    rng = np.random.default_rng(5)
    labels = rng.random(300) < 0.4
    signal = labels + rng.normal(0, 1, 300)
    first, second = signal + rng.normal(0, 0.3, 300), signal + rng.normal(0, 0.3, 300)
    a, b, se_a, se_b, se_diff = delong_paired(first, second, labels)
    assert (a, se_a) == pytest.approx(delong(first[labels], first[~labels]))
    assert (b, se_b) == pytest.approx(delong(second[labels], second[~labels]))
    assert se_diff < min(se_a, se_b)  # one signal: the difference is known better


def test_the_bootstrap_is_close_to_scipys_and_pairs_its_statistics() -> None:
    rng = np.random.default_rng(6)
    x = rng.exponential(1.0, 400)
    [mine] = bootstrap(lambda rows: (float(np.mean(x[rows])),), len(x), rng, rounds=2000)
    reference = scipy_bootstrap(
        (x,), np.mean, method="percentile", n_resamples=2000, random_state=1
    ).confidence_interval
    assert mine == pytest.approx((reference.low, reference.high), abs=0.015)
    same, gap = bootstrap(
        lambda rows: (float(np.mean(x[rows])), 0.0), len(x), np.random.default_rng(1)
    )
    assert gap == (0.0, 0.0) and same is not None
    missing = bootstrap(lambda rows: (None,), 10, rng)
    assert missing == [None]


def test_the_median_ratio_interval_covers_the_ratio_and_refuses_a_zero_baseline() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.gamma(2, 0.02, 500), rng.gamma(2, 0.02, 120)
    low, high = median_ratio_interval(a, b, np.random.default_rng(0))
    ratio = np.median(a) / np.median(b)
    assert low < ratio < high and high - low < 1
    assert median_ratio_interval(a, np.zeros(50), np.random.default_rng(0)) is None


def test_the_evaluation_carries_intervals_beside_its_figures() -> None:
    frame = cohort(HOSPITALS[2])
    metadata = TableMetadata.from_schema(schema(), frame)
    train, holdout = split_holdout(frame, 0.2, seed=1, target="icu_admission")
    model = synth.train(train, metadata=metadata)
    report = synth.evaluate(
        train, model.sample(len(train), seed=1), holdout, "icu_admission", model.metadata
    )
    privacy, utility = report["privacy"], report["utility"]
    ci = privacy["ci"]
    for key in ("exact_match_rate", "exact_match_rate_holdout", "mia_auc", "mia_advantage"):
        low, high = ci[key]
        assert low <= privacy[key] <= high, key
    k = round(privacy["exact_match_rate_holdout"] * len(holdout))
    assert ci["exact_match_rate_holdout"] == pytest.approx(wilson(k, len(holdout)), abs=1e-6)
    assert privacy["mia_rows"] == len(holdout) and privacy["mia_members"] == len(train)
    low, high = ci["dcr_median_ratio"]
    assert low <= privacy["dcr_median_ratio"] <= high
    assert utility["ci"]["method"] == "DeLong" and utility["chance"] == 0.5
    for key in ("trtr", "tstr", "gap"):
        low, high = utility["ci"][key]
        assert low <= utility[key] <= high, key
    # The intervals are drawn from their own generator: the figures are those of before.
    again = synth.evaluate(
        train, model.sample(len(train), seed=1), holdout, "icu_admission", model.metadata
    )
    assert again["privacy"] == privacy and again["utility"] == utility


@pytest.mark.parametrize(
    ("target", "method"),
    [("diagnosis_group", "bootstrap"), ("length_of_stay_days", "bootstrap")],
)
def test_many_classes_and_numeric_targets_get_bootstrap_intervals(target: str, method: str) -> None:
    frame = cohort(HOSPITALS[2])
    metadata = TableMetadata.from_schema(schema(), frame)
    train, holdout = split_holdout(frame, 0.25, seed=2)
    model = synth.train(train, metadata=metadata)
    utility = synth.evaluate(
        train, model.sample(len(train), seed=2), holdout, target, model.metadata
    )["utility"]
    assert utility["ci"]["method"].startswith(method)
    assert utility["chance"] == (0.5 if utility["metric"] == "roc_auc" else 0.0)
    for key in ("trtr", "tstr"):
        low, high = utility["ci"][key]
        assert low <= utility[key] <= high, key
