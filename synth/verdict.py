"""The verdict on a synthetic candidate, in words a data protection officer can act on.

`verdict(evaluation, gates)` reads one evaluation (`synth.evaluate`, with its intervals) and
the release gates' outcomes (`synth.gates.ReleaseGates.apply`) and returns

    {"verdict": "pass" | "needs attention" | "fail", "reasons": [sentences]}

- **fail** when a gate failed: the reasons say which, in plain words, with the figures;
- **needs attention** when no gate failed but something cannot be told: a sample too small for
  a figure to mean anything (utility tested on a few dozen rows, or on rows where a model
  trained on the real data does no better than chance), an interval that reaches past a gate's
  limit (a membership attack that cannot be ruled out), a baseline too uncertain to compare
  copies with, a DCR test that is borderline, or no gate applied at all;
- **pass** otherwise.

`uncertainties(evaluation, gates)` gives the same warnings keyed by the figure they concern,
so that a report can print each in place of a number that would otherwise look meaningful.
`combine(verdicts)` makes one verdict of several (a pooled release shows each hospital's
evaluation with its own verdict): the worst wins, and the reasons of each are kept, prefixed
with its name when the verdicts are given by name.

A pure function of aggregates the card already holds: it discloses nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

VERDICTS = ("pass", "needs attention", "fail")
MIN_TEST_ROWS = 50  # fewer test rows cannot tell one model's utility from another's
MAX_UTILITY_CI_WIDTH = 0.2  # a TSTR interval wider than this compares with nothing
MAX_BASELINE_CI_WIDTH = 0.1  # the holdout's copy rate known no better than this
DCR_BORDERLINE_P = 0.05  # a DCR test below this (but above the gate's alpha) is borderline
DEFAULT_MIA_LIMIT = 0.1

_GATE_WORDS = {
    "min_fidelity": "the synthetic data resemble the real data too little",
    "min_validity": "synthetic values fall outside the real ranges or categories too often",
    "exact_match_margin": (
        "more synthetic rows copy a real patient's row exactly than real unseen rows do, "
        "beyond the allowed margin"
    ),
    "max_exact_match_rate": "too many synthetic rows copy a real patient's row exactly",
    "dcr_not_below_holdout": (
        "synthetic rows lie closer to the real training rows than real unseen rows do: "
        "the generator memorised some of them"
    ),
    "min_dcr_ratio": "synthetic rows lie too close to the real training rows",
    "max_mia_advantage": (
        "a membership attack can tell whose rows were used for training better than the "
        "limit allows"
    ),
    "max_utility_gap": (
        "models trained on the synthetic data predict much worse than models trained on the "
        "real data"
    ),
    "dp_required": "the policy requires a differentially private generator",
}


def verdict(evaluation: Mapping[str, Any], gates: Sequence[Any] | None = None) -> dict[str, Any]:
    """The verdict of one evaluation and its gates' outcomes (`GateOutcome`s or their JSON
    form; None when no gate was applied). See the module doc."""
    outcomes = [_as_dict(g) for g in gates or []]
    failed = [g for g in outcomes if not g.get("passed")]
    if failed:
        return {"verdict": "fail", "reasons": [_failure(g) for g in failed]}
    reasons = list(uncertainties(evaluation, outcomes).values())
    if not outcomes:
        reasons.insert(0, "No release gate was applied: nothing was checked against a limit.")
    if reasons:
        return {"verdict": "needs attention", "reasons": reasons}
    names = ", ".join(_short(g["name"]) for g in outcomes)
    return {
        "verdict": "pass",
        "reasons": [
            f"Every release gate passed ({names}), and every privacy and utility figure rests "
            "on enough rows to be told apart from chance."
        ],
    }


def combine(verdicts: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]]) -> dict:
    """One verdict of several: the worst wins; the reasons of the verdicts that are that bad
    are kept (prefixed with each one's name when given as a mapping name -> verdict)."""
    named = (
        list(verdicts.items()) if isinstance(verdicts, Mapping) else [(None, v) for v in verdicts]
    )
    if not named:
        raise ValueError("no verdict to combine")
    for _, v in named:
        if v.get("verdict") not in VERDICTS:
            raise ValueError(f"not a verdict: {v.get('verdict')!r}")
    worst = max((v["verdict"] for _, v in named), key=VERDICTS.index)
    reasons = [
        f"{name}: {reason}" if name is not None else reason
        for name, v in named
        if v["verdict"] == worst
        for reason in v.get("reasons", [])
    ]
    return {"verdict": worst, "reasons": reasons}


def uncertainties(
    evaluation: Mapping[str, Any], gates: Sequence[Any] | None = None
) -> dict[str, str]:
    """What the evaluation cannot tell, keyed by the figure (`utility`, `mia`,
    `exact_copies`, `dcr`): one plain-words sentence each."""
    outcomes = {g["name"]: g for g in (_as_dict(x) for x in gates or [])}
    out: dict[str, str] = {}
    utility = evaluation.get("utility") or {}
    privacy = evaluation.get("privacy") or {}
    ci_u = utility.get("ci") or {}
    if utility.get("target") is not None:
        message = _utility_warning(utility, ci_u)
        if message:
            out["utility"] = message
    ci_p = privacy.get("ci") or {}
    mia, mia_ci = privacy.get("mia_advantage"), ci_p.get("mia_advantage")
    gate = outcomes.get("max_mia_advantage")
    limit = gate.get("threshold") if gate else DEFAULT_MIA_LIMIT
    if mia is not None and mia_ci is not None and limit is not None and mia_ci[1] > limit:
        rows = privacy.get("mia_rows")
        above = mia > limit
        out["mia"] = (
            f"The membership attack's advantage is {mia:.2f}"
            + (", above the limit, but" if above else ",")
            + f" and with {_rows(rows, 'real unseen rows')} it could be anywhere from "
            f"{mia_ci[0]:.2f} to {mia_ci[1]:.2f} (95 % interval), past the limit of "
            f"{limit:g}: too few rows to tell whether the attack works. Hold out more rows, "
            "or treat the data as possibly revealing who was in it."
        )
    rate, base = privacy.get("exact_match_rate"), privacy.get("exact_match_rate_holdout")
    base_ci = ci_p.get("exact_match_rate_holdout")
    if rate and base_ci is not None and base_ci[1] - base_ci[0] > MAX_BASELINE_CI_WIDTH:
        out["exact_copies"] = (
            f"{rate:.1%} of the synthetic rows copy a training row; real unseen rows do "
            f"{_pct(base)}, but on {_rows(privacy.get('mia_rows'), 'rows')} that rate could be "
            f"anywhere from {base_ci[0]:.1%} to {base_ci[1]:.1%}: the comparison is uncertain."
        )
    p_value = privacy.get("dcr_closer_p_value")
    dcr_gate = outcomes.get("dcr_not_below_holdout")
    borderline = p_value is not None and p_value < DCR_BORDERLINE_P
    if borderline and (dcr_gate is None or dcr_gate["passed"]):
        out["dcr"] = (
            f"Synthetic rows lie somewhat closer to the training rows than real unseen rows do "
            f"(one-sided test p = {p_value:.3g}): not enough to fail the gate, but borderline."
        )
    return out


def _utility_warning(utility: Mapping[str, Any], ci: Mapping[str, Any]) -> str | None:
    target, rows = utility.get("target"), utility.get("test_rows")
    metric = "AUC" if utility.get("metric") == "roc_auc" else "R²"
    chance = utility.get("chance", 0.5 if metric == "AUC" else 0.0)
    trtr, tstr = utility.get("trtr"), utility.get("tstr")
    if rows is not None and rows < MIN_TEST_ROWS:
        return (
            f"Utility was tested on only {rows} real rows: too few to tell whether models "
            f"trained on the synthetic data predict {target!s} well. Its figures are not results."
        )
    if trtr is None or tstr is None:
        return f"Utility could not be measured for {target!s} (too few test rows or classes)."
    trtr_ci, tstr_ci = ci.get("trtr"), ci.get("tstr")
    if trtr_ci is not None and trtr_ci[0] <= chance:
        return (
            f"A model trained on the real rows predicts {target!s} no better than chance on the "
            f"{_rows(rows, 'test rows')} ({metric} {trtr:.2f}, 95 % interval {trtr_ci[0]:.2f}–"
            f"{trtr_ci[1]:.2f}; chance is {chance:g}): the utility comparison says nothing here."
        )
    if tstr_ci is not None and tstr_ci[1] - tstr_ci[0] > MAX_UTILITY_CI_WIDTH:
        return (
            f"Utility on {_rows(rows, 'test rows')} is too uncertain to compare: the synthetic "
            f"data's {metric} could be anywhere from {tstr_ci[0]:.2f} to {tstr_ci[1]:.2f}."
        )
    return None


def _failure(gate: Mapping[str, Any]) -> str:
    name = str(gate.get("name"))
    words = _GATE_WORDS.get(name, f"the gate {name} failed")
    if gate.get("value") is None:
        return f"{_capital(words)}: it could not be measured, so the candidate is held back."
    value, limit = gate["value"], gate.get("threshold")
    figures = f"measured {value:.3g}" + ("" if limit is None else f", limit {limit:.3g}")
    return f"{_capital(words)} ({figures}; gate {name})."


def _as_dict(gate: Any) -> dict[str, Any]:
    if isinstance(gate, Mapping):
        return dict(gate)
    dump = getattr(gate, "model_dump", None)
    if dump is None:
        raise TypeError(f"not a gate outcome: {gate!r}")
    return dict(dump(mode="json"))


def _short(name: str) -> str:
    return name.removeprefix("min_").removeprefix("max_").replace("_", " ")


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _rows(n: Any, what: str) -> str:
    return f"{n} {what}" if n is not None else what


def _pct(value: Any) -> str:
    return "–" if value is None else f"{value:.1%}"
