"""The verdict: fail when a gate failed, needs attention when a figure cannot be told from
chance, pass otherwise; several verdicts make one, the worst."""

from __future__ import annotations

from typing import Any

import pytest

from synth.gates import ReleaseGates
from synth.verdict import combine, uncertainties, verdict


def evaluation(**changes: Any) -> dict[str, Any]:
    """A clear evaluation of 1 000 holdout rows, changed where a test says."""
    base: dict[str, Any] = {
        "fidelity": {"score": 0.93},
        "utility": {
            "target": "icu",
            "metric": "roc_auc",
            "chance": 0.5,
            "test_rows": 1000,
            "trtr": 0.80,
            "tstr": 0.78,
            "gap": 0.02,
            "ci": {"trtr": [0.77, 0.83], "tstr": [0.75, 0.81], "gap": [0.0, 0.04]},
        },
        "privacy": {
            "exact_match_rate": 0.0,
            "exact_match_rate_holdout": 0.0,
            "dcr_synthetic_median": 0.03,
            "dcr_holdout_median": 0.03,
            "dcr_closer_p_value": 0.6,
            "mia_auc": 0.51,
            "mia_advantage": 0.02,
            "mia_rows": 1000,
            "ci": {
                "exact_match_rate": [0.0, 0.001],
                "exact_match_rate_holdout": [0.0, 0.004],
                "mia_auc": [0.49, 0.53],
                "mia_advantage": [0.0, 0.06],
            },
        },
    }
    for path, value in changes.items():
        part, key = path.split("__")
        if key == "ci":
            base[part]["ci"] |= value
        else:
            base[part][key] = value
    return base


def gates_of(report: dict[str, Any]) -> list[Any]:
    return ReleaseGates().apply(report, epsilon=None)


def test_a_clear_candidate_passes_with_one_plain_reason() -> None:
    report = evaluation()
    got = verdict(report, gates_of(report))
    assert got["verdict"] == "pass"
    assert got["reasons"][0].startswith("Every release gate passed (fidelity, exact match margin")


def test_a_failed_gate_fails_and_says_which_in_plain_words() -> None:
    report = evaluation(privacy__exact_match_rate=0.3, privacy__exact_match_rate_holdout=0.1)
    got = verdict(report, gates_of(report))
    assert got["verdict"] == "fail"
    assert got["reasons"] == [
        "More synthetic rows copy a real patient's row exactly than real unseen rows do, "
        "beyond the allowed margin (measured 0.3, limit 0.11; gate exact_match_margin)."
    ]
    unmeasured = verdict({}, ReleaseGates().apply({}, None))
    assert unmeasured["verdict"] == "fail"
    assert "could not be measured" in unmeasured["reasons"][0]


def test_the_membership_gate_is_on_by_default_and_catches_an_advantage_of_025() -> None:
    assert ReleaseGates().max_mia_advantage == 0.1
    leak = evaluation(
        privacy__mia_auc=0.625,
        privacy__mia_advantage=0.25,
        privacy__ci={"mia_auc": [0.56, 0.69], "mia_advantage": [0.12, 0.38]},
    )
    [gate] = [g for g in gates_of(leak) if g.name == "max_mia_advantage"]
    assert not gate.passed and gate.value == 0.25 and gate.threshold == 0.1
    got = verdict(leak, gates_of(leak))
    assert got["verdict"] == "fail"
    assert "membership attack can tell whose rows were used" in got["reasons"][0]


def test_an_attack_not_shown_to_exceed_the_limit_passes_the_gate_but_needs_attention() -> None:
    noisy = evaluation(
        privacy__mia_auc=0.56,
        privacy__mia_advantage=0.12,
        privacy__mia_rows=86,
        privacy__ci={"mia_auc": [0.49, 0.63], "mia_advantage": [0.0, 0.26]},
    )
    [gate] = [g for g in gates_of(noisy) if g.name == "max_mia_advantage"]
    assert gate.passed and "(95 % interval 0–0.26)" in gate.message
    shown = evaluation(privacy__mia_advantage=0.12, privacy__ci={"mia_advantage": [0.02, 0.22]})
    assert next(g for g in gates_of(shown) if g.name == "max_mia_advantage").passed
    got = verdict(noisy, gates_of(noisy))
    assert got["verdict"] == "needs attention"
    assert "with 86 real unseen rows it could be anywhere from 0.00 to 0.26" in got["reasons"][0]
    # Without an interval the estimate alone is held to the limit.
    bare = evaluation(privacy__mia_advantage=0.12)
    del bare["privacy"]["ci"]
    assert not next(g for g in gates_of(bare) if g.name == "max_mia_advantage").passed


def test_utility_on_a_few_test_rows_is_a_warning_not_a_result() -> None:
    small = evaluation(utility__test_rows=24)
    warnings = uncertainties(small, gates_of(small))
    assert warnings["utility"].startswith("Utility was tested on only 24 real rows")
    assert verdict(small, gates_of(small))["verdict"] == "needs attention"
    chance = evaluation(utility__trtr=0.55, utility__ci={"trtr": [0.42, 0.68]})
    message = uncertainties(chance)["utility"]
    assert "no better than chance" in message and "0.42–0.68" in message
    wide = evaluation(utility__ci={"tstr": [0.55, 0.92]})
    assert "too uncertain to compare" in uncertainties(wide)["utility"]
    r2 = evaluation(
        utility__metric="r2",
        utility__chance=0.0,
        utility__trtr=0.05,
        utility__ci={"trtr": [-0.1, 0.2]},
    )
    assert "R² 0.05" in uncertainties(r2)["utility"]


def test_uncertain_baselines_borderline_distances_and_no_gates_need_attention() -> None:
    copies = evaluation(
        privacy__exact_match_rate=0.05,
        privacy__exact_match_rate_holdout=0.08,
        privacy__ci={"exact_match_rate_holdout": [0.03, 0.19]},
    )
    assert "the comparison is uncertain" in uncertainties(copies)["exact_copies"]
    borderline = evaluation(privacy__dcr_closer_p_value=0.03)
    assert verdict(borderline, gates_of(borderline))["verdict"] == "needs attention"
    assert "borderline" in uncertainties(borderline, gates_of(borderline))["dcr"]
    ungated = verdict(evaluation(), [])
    assert ungated["verdict"] == "needs attention"
    assert ungated["reasons"][0].startswith("No release gate was applied")
    assert verdict(evaluation(), None)["verdict"] == "needs attention"


def test_gates_as_json_give_the_same_verdict() -> None:
    report = evaluation(privacy__exact_match_rate=0.3)
    outcomes = gates_of(report)
    assert verdict(report, [g.model_dump(mode="json") for g in outcomes]) == verdict(
        report, outcomes
    )


def test_the_worst_verdict_wins_and_keeps_its_reasons_by_name() -> None:
    ok = {"verdict": "pass", "reasons": ["fine"]}
    unsure = {"verdict": "needs attention", "reasons": ["too few rows"]}
    bad = {"verdict": "fail", "reasons": ["copies"]}
    assert combine([ok, ok]) == {"verdict": "pass", "reasons": ["fine", "fine"]}
    assert combine({"hospital_a": ok, "hospital_b": unsure, "hospital_c": unsure}) == {
        "verdict": "needs attention",
        "reasons": ["hospital_b: too few rows", "hospital_c: too few rows"],
    }
    assert combine([unsure, bad, ok])["verdict"] == "fail"
    with pytest.raises(ValueError, match="no verdict"):
        combine([])
    with pytest.raises(ValueError, match="not a verdict"):
        combine([{"verdict": "maybe"}])
