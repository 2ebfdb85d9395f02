"""`synth.evaluate` against hand-computed cases: an exact copy, random noise, a tiny table whose
distances are known, utility with a perfectly separable target; and the release gates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import synth
from demo.cohort import HOSPITALS, cohort, schema
from synth.evaluation import GowerEmbedding, _auc_smaller_is_positive, nearest_distances, row_keys
from synth.gates import ReleaseGates, passed
from synth.holdout import split_holdout
from synth.metadata import TableMetadata
from synth.report import pair_trends_text
from tessera.errors import InvalidRequest


@pytest.fixture(scope="module")
def parts() -> tuple[pd.DataFrame, pd.DataFrame, TableMetadata]:
    frame = cohort(HOSPITALS[0])  # 1 200 rows
    train, holdout = split_holdout(frame, 0.25, seed=3, target="icu_admission")
    return train, holdout, TableMetadata.from_schema(schema(), frame)


def test_an_exact_copy_of_the_training_rows_is_caught_by_every_privacy_metric_and_gate(
    parts: tuple[pd.DataFrame, pd.DataFrame, TableMetadata],
) -> None:
    train, holdout, metadata = parts
    report = synth.evaluate(train, train.copy(), holdout, target="icu_admission", metadata=metadata)
    privacy = report["privacy"]
    assert privacy["exact_match_rate"] == 1.0
    assert privacy["exact_match_rate_holdout"] == 0.0  # continuous weights: no real repeats
    assert privacy["dcr_synthetic_median"] == 0.0 and privacy["dcr_synthetic_p5"] == 0.0
    assert privacy["dcr_holdout_median"] > 0.01
    assert privacy["mia_auc"] > 0.95 and privacy["mia_advantage"] > 0.9
    assert report["fidelity"]["score"] > 0.99  # a copy is perfectly "faithful"...
    outcomes = {g.name: g for g in ReleaseGates().apply(report, epsilon=None)}
    assert outcomes["min_fidelity"].passed
    assert not outcomes["exact_match_margin"].passed  # ...and never released
    assert not outcomes["dcr_not_below_holdout"].passed
    assert privacy["dcr_closer_p_value"] < 1e-6
    assert not passed(list(outcomes.values()))


def test_random_noise_scores_low_fidelity_and_utility(
    parts: tuple[pd.DataFrame, pd.DataFrame, TableMetadata],
) -> None:
    train, holdout, metadata = parts
    rng = np.random.default_rng(0)
    n = len(train)
    noise = pd.DataFrame(
        {
            "age_months": rng.integers(0, 216, n),
            "sex": rng.choice(["F", "M"], n),
            "diagnosis_group": rng.choice(schema().column("diagnosis_group").levels, n),
            "weight_kg": rng.uniform(0.5, 150, n),
            "height_cm": rng.uniform(30, 210, n),
            "length_of_stay_days": rng.integers(0, 366, n),
            "icu_admission": rng.random(n) < 0.5,
            "readmitted_30d": rng.random(n) < 0.5,
        }
    )
    report = synth.evaluate(train, noise, holdout, target="icu_admission", metadata=metadata)
    assert report["fidelity"]["score"] < 0.7
    assert report["fidelity"]["column_shapes"] < 0.75
    utility = report["utility"]
    assert utility["metric"] == "roc_auc" and utility["task"] == "classification"
    assert utility["tstr"] < 0.6 < utility["trtr"]
    assert utility["target_rate_synthetic"]["True"] == pytest.approx(0.5, abs=0.05)
    outcomes = ReleaseGates().apply(report, epsilon=None)
    assert [g.name for g in outcomes if not g.passed] == ["min_fidelity"]


def test_distances_on_a_table_computed_by_hand() -> None:
    metadata = TableMetadata.from_frame(
        pd.DataFrame({"x": [0.0, 10.0], "c": pd.Categorical(["a", "b"], categories=["a", "b"])})
    )
    train = pd.DataFrame({"x": [0.0, 10.0], "c": ["a", "b"]})
    queries = pd.DataFrame({"x": [0.0, 5.0, 10.0, None], "c": ["b", "a", "b", "a"]})
    embed = GowerEmbedding(metadata, train)
    distances = nearest_distances(embed(train), embed(queries))
    # x scaled by its range 10; a category mismatch counts 1; divided by the 2 columns.
    # (0, b): to (10, b) 0.5, to (0, a) 0.5; (5, a): to (0, a) 0.25; (10, b): 0;
    # (missing, a): to (0, a) 1 + |0.5 - 0| = 1.5 on x, 0 on c -> 0.75
    np.testing.assert_allclose(distances, [0.5, 0.25, 0.0, 0.75])
    keys = row_keys(pd.DataFrame({"x": [0.0, 10.0, 0.0], "c": ["a", "b", "b"]}), metadata)
    assert keys[0] == row_keys(train, metadata)[0] and keys[1] == row_keys(train, metadata)[1]
    assert keys[2] not in row_keys(train, metadata)


def test_the_attack_auc_is_the_mann_whitney_auc() -> None:
    rng = np.random.default_rng(5)
    members, outsiders = rng.random(200) * 0.8, rng.random(300)
    labels = np.r_[np.ones(200), np.zeros(300)]
    expected = roc_auc_score(labels, -np.r_[members, outsiders])
    assert _auc_smaller_is_positive(members, outsiders) == pytest.approx(expected)
    assert _auc_smaller_is_positive(np.zeros(10), np.zeros(10)) == 0.5  # ties: no signal


def test_utility_with_a_target_the_features_decide() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 10, 600)
    frame = pd.DataFrame({"x": x, "noise": rng.normal(size=600), "y": x > 5})
    train, holdout = frame.iloc[:400], frame.iloc[400:]
    report = synth.evaluate(train, train, holdout, target="y")
    assert report["utility"]["trtr"] == report["utility"]["tstr"] > 0.99
    assert report["utility"]["gap"] == 0
    frame["z"] = 2 * x + rng.normal(0, 0.1, 600)
    train, holdout = frame.iloc[:400], frame.iloc[400:]
    regression = synth.evaluate(train, train, holdout, target="z")["utility"]
    assert regression["metric"] == "r2" and regression["trtr"] > 0.95
    assert regression["target_mean_real"] == pytest.approx(train["z"].mean(), rel=1e-6)


def test_large_tables_are_evaluated_on_stated_subsamples(
    parts: tuple[pd.DataFrame, pd.DataFrame, TableMetadata],
) -> None:
    train, holdout, metadata = parts
    report = synth.evaluate(
        train, train, holdout, metadata=metadata, fidelity_rows=300, privacy_rows=100
    )
    sizes = report["sizes"]
    assert sizes["real"] == len(train) and sizes["fidelity_rows"] == [300, 300]
    assert sizes["privacy_rows"] == {"synthetic": 100, "holdout": 100, "reference": len(train)}
    assert report["utility"] == {"target": None}
    assert set(report["seconds"]) == {"fidelity", "utility", "privacy"}


def test_bad_input_names_the_problem(
    parts: tuple[pd.DataFrame, pd.DataFrame, TableMetadata],
) -> None:
    train, holdout, metadata = parts
    with pytest.raises(InvalidRequest, match="synthetic table lacks column"):
        synth.evaluate(train, train.drop(columns="sex"), holdout, metadata=metadata)
    with pytest.raises(InvalidRequest, match="target 'nope'"):
        synth.evaluate(train, train, holdout, target="nope", metadata=metadata)
    with pytest.raises(InvalidRequest, match="holdout table has no rows"):
        synth.evaluate(train, train, holdout.iloc[:0], metadata=metadata)


def test_gates_are_validated_and_can_be_switched_off() -> None:
    with pytest.raises(TypeError):
        ReleaseGates(min_fidelty=0.8)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="min_fidelity must lie in"):
        ReleaseGates(min_fidelity=1.5)
    with pytest.raises(ValueError, match="dp_required must be true or false"):
        ReleaseGates(dp_required="yes")  # type: ignore[arg-type]
    off = {"min_fidelity": None, "exact_match_margin": None, "dcr_alpha": None}
    none = ReleaseGates(**off, max_mia_advantage=None)
    assert none.apply({}, epsilon=None) == []
    dp = ReleaseGates(dp_required=True, **off, max_mia_advantage=None)
    assert not dp.apply({}, epsilon=None)[0].passed
    assert dp.apply({}, epsilon=1.0)[0].passed
    gates = ReleaseGates(max_mia_advantage=0.1, min_dcr_ratio=1.0)
    unmeasured = gates.apply({"fidelity": {"score": 0.9}}, None)
    assert [g.name for g in unmeasured if not g.passed] == [
        "exact_match_margin",
        "dcr_not_below_holdout",
        "min_dcr_ratio",
        "max_mia_advantage",
    ]
    ratio = ReleaseGates(min_dcr_ratio=1.0).apply(
        {"privacy": {"dcr_synthetic_median": 0.09, "dcr_holdout_median": 0.1}}, None
    )
    assert [g.passed for g in ratio if g.name == "min_dcr_ratio"] == [False]


def test_the_holdout_split_is_stratified_and_keeps_enough_rows() -> None:
    frame = pd.DataFrame({"y": [True] * 30 + [False] * 70, "x": range(100)})
    train, holdout = split_holdout(frame, 0.2, seed=1, target="y")
    assert len(holdout) == 20 and holdout["y"].sum() == 6
    assert set(train.index) | set(holdout.index) == set(frame.index)
    assert not set(train.index) & set(holdout.index)
    with pytest.raises(InvalidRequest, match="too few"):
        split_holdout(frame.iloc[:30], 0.2)


def test_pair_trends_are_scored_over_the_associated_pairs_and_say_so() -> None:
    """x and y correlate (r = 0.95), z is independent of both: SDMetrics scores pair trends
    on (x, y) alone. A synthetic table with y shuffled keeps every shape and loses that one
    correlation: its pair trends are 1 - |0.95 - 0| / 2 on the scored pair, and the mean over
    all three pairs (the two independent ones kept) is higher."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=2000)
    real = pd.DataFrame(
        {
            "x": x,
            "y": 0.95 * x + np.sqrt(1 - 0.95**2) * rng.normal(size=2000),
            "z": rng.normal(size=2000),
        }
    )
    synthetic = real.assign(y=rng.permutation(real["y"].to_numpy()))
    fidelity = synth.evaluate(real, synthetic, real.iloc[:500])["fidelity"]
    assert fidelity["pairs_scored"] == 1 and fidelity["pairs_total"] == 3
    assert fidelity["pair_thresholds"] == {"correlation": 0.5, "association": 0.3}
    r = float(np.corrcoef(real["x"], real["y"])[0, 1])
    r_synthetic = float(np.corrcoef(synthetic["x"], synthetic["y"])[0, 1])
    assert fidelity["column_pair_trends"] == pytest.approx(1 - abs(r - r_synthetic) / 2, abs=1e-4)
    assert fidelity["column_shapes"] == 1.0
    assert fidelity["column_pair_trends_all_pairs"] > fidelity["column_pair_trends"] + 0.25


def test_with_no_associated_pair_the_score_is_the_shapes_and_the_text_says_so() -> None:
    rng = np.random.default_rng(1)

    def table() -> pd.DataFrame:
        return pd.DataFrame(
            {"x": rng.normal(size=600), "z": rng.normal(size=600), "c": rng.choice(["a", "b"], 600)}
        )

    real = table()
    fidelity = synth.evaluate(real, table(), real.iloc[:100])["fidelity"]
    assert fidelity["pairs_scored"] == 0 and fidelity["pairs_total"] == 3
    assert fidelity["column_pair_trends"] is None
    assert fidelity["score"] == fidelity["column_shapes"]
    assert 0.5 < fidelity["column_pair_trends_all_pairs"] <= 1
    text = pair_trends_text(fidelity)
    assert text.startswith("not scored: none of the 3 pairs is associated in the real rows")
    assert f"every pair: {fidelity['column_pair_trends_all_pairs']:.3f}" in text
    scored = pair_trends_text({**fidelity, "column_pair_trends": 0.8, "pairs_scored": 1})
    assert scored.startswith("0.800 over the 1 of 3 pairs associated in the real rows")
