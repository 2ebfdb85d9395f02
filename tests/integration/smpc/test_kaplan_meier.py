"""`kaplan_meier` by MPC against its plaintext twin and lifelines on the pooled rows.

Data shipped with lifelines: Walton's flies (163 rows, two groups), Rossi's recidivism data
(432 rows, weeks 1–52, 322 censored at week 52), the NCCTG lung cancer data (228 rows, four
ECOG groups, one of a single patient) and the German breast cancer study (686 rows, days
8–2659, three tumour grades), split unevenly across 3 and 5 parties.

In the `exact` mode the curves come from perturbed per-step counts (the module docstring): the
MPC's result equals its twin's (`reference_parties`: the same keys, the same perturbations)
exactly, and lies near lifelines' (every n within 3, survival within a bound measured per data
set); the log-rank statistic is lifelines' within 1e-6 relative.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from smpc import reference, simulate
from smpc.frames import uneven_shares as split
from smpc.statistics import reference_parties
from tessera.schemas import ColumnSpec, DatasetSchema

REL = 1e-6


def schema(time: str, high: int, event: str, groups: dict[str, list[str]]) -> DatasetSchema:
    return DatasetSchema(
        columns=[
            ColumnSpec(name=time, type="integer", min=0, max=high),
            ColumnSpec(name=event, type="integer", min=0, max=1),
            *(ColumnSpec(name=g, type="categorical", levels=lv) for g, lv in groups.items()),
        ]
    )


def assert_same(result: dict, expected: dict) -> None:
    """Counts, times and numbers at risk exactly; estimates to REL."""
    assert result["n"] == expected["n"]
    assert list(result["groups"]) == list(expected["groups"])
    for name, curve in result["groups"].items():
        want = expected["groups"][name]
        assert (curve["n"], curve["time"], curve["at_risk"]) == (
            want["n"],
            want["time"],
            want["at_risk"],
        ), name
        if want["survival"] is None:
            assert curve["survival"] is None
        else:
            assert curve["survival"] == pytest.approx(want["survival"], rel=REL, abs=1e-12)
    for key in ("statistic", "p_value"):
        want = expected["logrank"][key]
        assert result["logrank"][key] == (None if want is None else pytest.approx(want, rel=REL))
    assert result["logrank"]["df"] == expected["logrank"]["df"]


def step_function(curve: dict, high: int) -> np.ndarray:
    """S(t) at every grid time 0..high (1 before the first shown time)."""
    out = np.ones(high + 1)
    for t, s in zip(curve["time"], curve["survival"], strict=True):
        out[t:] = s
    return out


def survival_error(curve: dict, truth: dict, high: int) -> float:
    """max |S(t) − S_lifelines(t)| up to the shorter curve's last shown time."""
    end = min(max(curve["time"], default=0), max(truth["time"], default=0))
    return float(np.abs(step_function(curve, high) - step_function(truth, high))[: end + 1].max())


def assert_near(result: dict, truth: dict, high: int, bound: float) -> None:
    """The perturbed result near lifelines': the same groups suppressed, every n within 3,
    every shown risk set at least T (the shown numbers are perturbed), survival within
    `bound`, the log-rank test as lifelines' to REL."""
    assert (result["n"] is None) == (truth["n"] is None)
    if truth["n"] is not None:
        assert abs(result["n"] - truth["n"]) <= 3
    for name, curve in result["groups"].items():
        want = truth["groups"][name]
        assert (curve["n"] is None) == (want["n"] is None), name
        if want["n"] is None:
            continue
        assert abs(curve["n"] - want["n"]) <= 3, name
        if want["time"] and curve["time"]:
            assert survival_error(curve, want, high) <= bound, name
    for key in ("statistic", "p_value"):
        want = truth["logrank"][key]
        assert result["logrank"][key] == (None if want is None else pytest.approx(want, rel=REL))
    assert result["logrank"]["df"] == truth["logrank"]["df"]


def test_two_groups_near_lifelines_across_three_parties() -> None:
    from lifelines.datasets import load_waltons
    from lifelines.statistics import logrank_test

    flies = load_waltons()
    declared = schema("T", 80, "E", {"group": ["control", "miR-137"]})
    query = {"statistic": "kaplan_meier", "dataset": "w", "time": "T", "event": "E"}
    query["group"] = "group"
    frames = split(flies, 3)
    result = simulate(query, frames, declared)
    assert_same(result, reference_parties(query, frames, declared))
    truth = reference(query, flies, declared)
    assert_near(result, truth, 80, 0.15)
    # the 129 control flies within a few percent; the 34 of miR-137 within 0.15 (measured:
    # 0.025 and 0.118)
    control = survival_error(result["groups"]["control"], truth["groups"]["control"], 80)
    assert control <= 0.05
    control, treated = (flies[flies.group == g] for g in ("control", "miR-137"))
    test = logrank_test(control["T"], treated["T"], control["E"], treated["E"])
    assert result["logrank"]["statistic"] == pytest.approx(test.test_statistic, rel=REL)
    assert result["logrank"]["p_value"] == pytest.approx(test.p_value, rel=REL)
    assert result["logrank"]["df"] == 1
    # the same rows always get the same curves: repeating the query averages nothing away
    # (the log-rank statistic's last bits come from MPyC's probabilistic rounding)
    again = simulate(query, frames, declared)
    assert (again["n"], again["groups"]) == (result["n"], result["groups"])


@pytest.mark.slow
def test_truncated_curves_keep_the_whole_logrank_across_five_parties() -> None:
    """min_count 10 truncates both curves; the log-rank test still uses every row."""
    from lifelines.datasets import load_rossi
    from lifelines.statistics import logrank_test

    rossi = load_rossi().assign(fin=lambda d: d.fin.map({0: "no", 1: "yes"}))
    declared = schema("week", 52, "arrest", {"fin": ["no", "yes"]})
    query = {
        "statistic": "kaplan_meier",
        "dataset": "rossi",
        "time": "week",
        "event": "arrest",
        "group": "fin",
        "min_count": 10,
    }
    frames = split(rossi, 5)
    result = simulate(query, frames, declared)
    assert_same(result, reference_parties(query, frames, declared))
    assert_near(result, reference(query, rossi, declared), 52, 0.05)
    assert all(r >= 10 for curve in result["groups"].values() for r in curve["at_risk"])
    no, yes = (rossi[rossi.fin == level] for level in ("no", "yes"))
    test = logrank_test(no.week, yes.week, no.arrest, yes.arrest)
    assert result["logrank"]["statistic"] == pytest.approx(test.test_statistic, rel=REL)


def test_a_node_floor_suppresses_a_small_group_and_the_rest_are_compared() -> None:
    """ECOG 3 has one patient: party 1's floor of 5 (above the query's 2) suppresses it;
    the multivariate log-rank test compares ECOG 0, 1 and 2, with truncated tails."""
    from lifelines.datasets import load_lung
    from lifelines.statistics import multivariate_logrank_test

    lung = load_lung().rename(columns={"ph.ecog": "ecog"})[["time", "status", "ecog"]]
    lung["time"] = lung["time"] // 7  # weeks
    declared = schema("time", 150, "status", {"ecog": ["0", "1", "2", "3"]})
    query = {
        "statistic": "kaplan_meier",
        "dataset": "lung",
        "time": "time",
        "event": "status",
        "group": "ecog",
        "min_count": 2,
    }
    frames = split(lung, 3)
    result = simulate(query, frames, declared, min_count_floors=[0, 5, 0])
    assert_same(result, reference_parties(query, frames, declared, min_count_floors=[0, 5, 0]))
    assert_near(result, reference(query, lung, declared, min_count=5), 150, 0.15)
    assert result["n"] is None
    assert result["groups"]["3"] == {"n": None, "time": None, "survival": None, "at_risk": None}
    compared = lung[lung.ecog.isin([0, 1, 2])]
    test = multivariate_logrank_test(compared.time, compared.ecog, compared.status)
    assert result["logrank"]["statistic"] == pytest.approx(test.test_statistic, rel=REL)
    assert result["logrank"]["df"] == 2


def test_an_empty_site_and_a_level_absent_at_another() -> None:
    """Party 0 has no grade I tumour, party 2 no row matching `where`; grid of 391 weeks."""
    from lifelines.datasets import load_gbsg2

    gbsg = load_gbsg2()[["time", "cens", "tgrade", "age"]]
    gbsg["time"] = gbsg["time"] // 7
    declared = DatasetSchema(
        columns=[
            *schema("time", 390, "cens", {"tgrade": ["I", "II", "III"]}).columns,
            ColumnSpec(name="age", type="integer", min=0, max=120),
        ]
    )
    frames = [
        gbsg[gbsg.tgrade != "I"].iloc[:150],
        gbsg.iloc[150:500],
        gbsg.iloc[500:].assign(age=30),
    ]
    query = {
        "statistic": "kaplan_meier",
        "dataset": "gbsg2",
        "time": "time",
        "event": "cens",
        "group": "tgrade",
        "where": [["age", ">", 40]],
        "min_count": 3,
    }
    result = simulate(query, frames, declared)
    pooled = pd.concat(frames)
    assert_same(result, reference_parties(query, frames, declared))
    assert_near(result, reference(query, pooled, declared), 390, 0.15)
    assert abs(result["n"] - int((pooled.age > 40).sum())) <= 3
    assert result["logrank"]["df"] == 2


def test_one_group_has_no_logrank_test_and_no_events_no_statistic() -> None:
    from lifelines.datasets import load_waltons

    flies = load_waltons()
    single = schema("T", 80, "E", {"group": ["control"]})
    control = flies[flies.group == "control"]
    query = {"statistic": "kaplan_meier", "dataset": "w", "time": "T", "event": "E"}
    frames = split(control, 3)
    result = simulate({**query, "group": "group"}, frames, single)
    assert_same(result, reference_parties({**query, "group": "group"}, frames, single))
    assert_near(result, reference({**query, "group": "group"}, control, single), 80, 0.05)
    assert list(result["groups"]) == ["control"]
    assert result["logrank"] == {"statistic": None, "p_value": None, "df": None}

    censored = flies.assign(E=0)
    declared = schema("T", 80, "E", {"group": ["control", "miR-137"]})
    frames = split(censored, 3)
    result = simulate({**query, "group": "group"}, frames, declared)
    assert_same(result, reference_parties({**query, "group": "group"}, frames, declared))
    # no event: the perturbed curves stay near 1 (a perturbation may show a few), and the
    # log-rank covariance is zero
    assert_near(result, reference({**query, "group": "group"}, censored, declared), 80, 0.15)
    assert min(result["groups"]["control"]["survival"]) >= 0.95
    assert result["logrank"]["statistic"] is None

    ungrouped = simulate(query, split(flies, 3), declared)
    assert list(ungrouped["groups"]) == ["all"]
    assert abs(ungrouped["groups"]["all"]["n"] - len(flies)) <= 3
    assert ungrouped["logrank"]["statistic"] is None


# ---- dp: noisy per-step counts --------------------------------------------------------------


def step_error(curve: dict, fitter: object, high: int) -> float:
    """max over the grid 0..high of |S_dp(t) − S_lifelines(t)|, both as step functions."""
    import numpy as np

    grid = np.arange(high + 1)
    shown = np.searchsorted(curve["time"], grid, side="right") - 1
    survival = np.array(curve["survival"] or [1.0])  # an empty curve: S = 1 throughout
    noisy = np.where(shown >= 0, survival[np.maximum(shown, 0)], 1.0)
    exact = fitter.survival_function_at_times(grid).to_numpy()  # type: ignore[attr-defined]
    return float(np.abs(noisy - exact).max())


def assert_a_curve(curve: dict, threshold: int = 0) -> None:
    """Survival non-increasing within [0, 1]; risk sets non-increasing, at least T. With `dp`
    a small group's noisy n can be 0 (its sum of noisy cells at or below 0): then the curve
    is empty."""
    survival, at_risk = curve["survival"], curve["at_risk"]
    if curve["n"] == 0:
        assert curve["time"] == survival == at_risk == []
        return
    assert all(0 <= s <= 1 for s in survival)
    assert all(a >= b for a, b in itertools.pairwise(survival))
    assert all(a >= b >= threshold for a, b in itertools.pairwise(at_risk))
    assert at_risk[0] == curve["n"] and curve["time"] == sorted(set(curve["time"]))


def test_dp_curves_are_within_a_few_noise_scales_of_lifelines() -> None:
    """ε = 1 for the whole table of per-day event and censoring counts (Δ = 1, b = 1), both
    groups in parallel. The unit of error: b·√L/n (the noise of a cumulative count over L grid
    steps, relative to the group's n); in 20 000 plaintext draws of the same post-processing
    the largest error was about 4 units (Waltons' control group, Rossi)."""
    from lifelines import KaplanMeierFitter
    from lifelines.datasets import load_waltons

    flies = load_waltons()
    query = {"statistic": "kaplan_meier", "dataset": "w", "time": "T", "event": "E"}
    declared = schema("T", 80, "E", {"group": ["control", "miR-137"]})
    dp = {"epsilon": 1.0, "delta": 1e-6}
    result = simulate({**query, "group": "group", "dp": dp}, split(flies, 3), declared)
    assert result["dp"] == {
        "epsilon": 1.0,
        "delta": 1e-6,
        "mechanism": "discrete_laplace",
        "epsilon_split": {"count": 1.0},
        "noise_scale": {"count": 1.0},
    }
    assert result["logrank"] == {"statistic": None, "p_value": None, "df": None}
    assert result["n"] == sum(c["n"] for c in result["groups"].values())
    for name, curve in result["groups"].items():
        rows = flies[flies.group == name]
        assert abs(curve["n"] - len(rows)) <= 15 * (2 * 81) ** 0.5  # 162 noisy cells
        assert_a_curve(curve)
        fitter = KaplanMeierFitter().fit(rows["T"], rows["E"])
        assert step_error(curve, fitter, 80) <= 10 * 81**0.5 / len(rows)
    assert (
        result["groups"]["control"]
        != reference({**query, "group": "group", "dp": dp}, flies, declared)["groups"]["control"]
    )


def test_dp_error_shrinks_as_epsilon_grows() -> None:
    """Rossi (432 rows, weeks 0–52): at ε = 8 the curve is within 0.02 of lifelines' (10 units
    of b·√L/n), and closer than at ε = 0.25 (median error there about 0.08)."""
    from lifelines import KaplanMeierFitter
    from lifelines.datasets import load_rossi

    rossi = load_rossi()
    declared = schema("week", 52, "arrest", {})
    query = {"statistic": "kaplan_meier", "dataset": "r", "time": "week", "event": "arrest"}
    fitter = KaplanMeierFitter().fit(rossi.week, rossi.arrest)
    frames = split(rossi, 3)
    errors = {}
    for epsilon in (0.25, 8.0):
        result = simulate({**query, "dp": {"epsilon": epsilon}}, frames, declared)
        curve = result["groups"]["all"]
        assert_a_curve(curve)
        errors[epsilon] = step_error(curve, fitter, 52)
        assert errors[epsilon] <= 10 * 53**0.5 / (epsilon * 432)
    assert errors[8.0] < errors[0.25]


def test_dp_min_count_compares_noisy_values_and_the_row_rule_is_still_pooled() -> None:
    """min_count 50: a curve stops where its post-processed risk set drops below 50, a group
    whose noisy n is below 50 is suppressed (the noisy n sums the noisy counts of 2 × 81 cells:
    at ε = 2 its standard deviation is about 9, so 34 flies would pass 40 one run in four; at
    ε = 8 it is below 1); a time off the grid at one site is refused over
    all sites together, as in the exact mode."""
    from lifelines.datasets import load_waltons

    from tessera.errors import DisclosureRefused

    flies = load_waltons()
    declared = schema("T", 80, "E", {"group": ["control", "miR-137"]})
    query = {
        "statistic": "kaplan_meier",
        "dataset": "w",
        "time": "T",
        "event": "E",
        "group": "group",
        "min_count": 50,
        "dp": {"epsilon": 8.0},
    }
    frames = split(flies, 3)
    result = simulate(query, frames, declared)
    assert result["groups"]["miR-137"] == {  # 34 flies
        "n": None,
        "time": None,
        "survival": None,
        "at_risk": None,
    }
    assert result["n"] is None
    control = result["groups"]["control"]
    assert_a_curve(control, threshold=50)
    assert control["time"][-1] < 75  # the exact risk set is below 40 from day 63 on

    frames[1] = frames[1].assign(T=frames[1]["T"].where(frames[1].index != frames[1].index[0], 81))
    with pytest.raises(DisclosureRefused, match="whole number within the time column"):
        simulate(query, frames, declared)
