"""Release gates: the thresholds a synthetic candidate must meet before any steward sees it.

A node's policy sets them (`[policy.synthesis.gates]`); absent fields keep the defaults here.
`ReleaseGates.apply(evaluation, epsilon)` measures a candidate's evaluation (`synth.evaluate`)
against each gate that is set and returns one `GateOutcome` per gate: a candidate is offered
for review only if every outcome passed. A gate set to None is not applied.

Defaults: fidelity at least 0.75; no more exact copies of training rows than real unseen rows
have, plus one percentage point; and synthetic rows no closer to the training rows than real
unseen rows are (`dcr_alpha` 0.01: a one-sided Mann-Whitney test of the two DCR samples must
not find them closer at that level). That last gate is a test rather than a comparison of
medians because the holdout's own DCR varies by about ±10 % between splits of a few hundred
rows: a faithful generator's median lands below the holdout's about half the time, by chance,
while one that memorises (TVAE's: 1/50 of it) is found out at any sample size. A plain ratio of
medians is there too (`min_dcr_ratio`, off by default; 1.0 is "not below").

The membership-inference gate is on by default (`max_mia_advantage` 0.1): the attack of
`synth.evaluate` may tell training rows from real unseen rows at most that much better than a
coin (advantage 2·AUC − 1; 0.1 is an AUC of 0.55). On a few hundred holdout rows the attack's
estimate moves by about ±0.1 by chance alone, so, like the DCR gate, this one is a test: it
fails a candidate when the advantage is shown to exceed the limit, i.e. the low end of its
95 % interval lies above it. Where the interval straddles the limit the gate passes and the
verdict (`synth.verdict`) says the holdout was too small to tell ("needs attention"); only an
interval wholly below the limit lets the verdict pass. An evaluation without intervals is held
to the estimate alone. The validity, utility and differential-privacy gates are off
unless the policy sets them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from tessera.schemas import GateOutcome


@dataclass(frozen=True)
class ReleaseGates:
    min_fidelity: float | None = 0.75
    max_exact_match_rate: float | None = None  # an absolute cap on the copy rate
    exact_match_margin: float | None = 0.01  # copies <= the holdout's rate + this
    dcr_alpha: float | None = 0.01  # "synthetic closer than holdout" not significant at this
    min_dcr_ratio: float | None = None  # DCR median: synthetic >= this * holdout's
    max_mia_advantage: float | None = 0.1  # unless chance explains it (the module doc)
    min_validity: float | None = None
    max_utility_gap: float | None = None  # TRTR - TSTR, when the request names a target
    dp_required: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "dp_required":
                if not isinstance(value, bool):
                    raise ValueError("dp_required must be true or false")
                continue
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{f.name} must be a number or absent")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{f.name} must be a non-negative number")
            if f.name != "min_dcr_ratio" and value > 1:
                raise ValueError(f"{f.name} must lie in [0, 1]")

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def apply(self, evaluation: dict[str, Any], epsilon: float | None) -> list[GateOutcome]:
        fidelity = evaluation.get("fidelity", {})
        privacy = evaluation.get("privacy", {})
        utility = evaluation.get("utility", {})
        out: list[GateOutcome] = []
        if self.dp_required:
            out.append(
                GateOutcome(
                    name="dp_required",
                    passed=epsilon is not None,
                    value=epsilon,
                    message="differentially private generator"
                    if epsilon is not None
                    else "the policy requires a differentially private generator",
                )
            )
        if self.min_fidelity is not None:
            out.append(_at_least("min_fidelity", fidelity.get("score"), self.min_fidelity))
        if self.min_validity is not None:
            out.append(_at_least("min_validity", fidelity.get("validity"), self.min_validity))
        rate = privacy.get("exact_match_rate")
        if self.max_exact_match_rate is not None:
            out.append(_at_most("max_exact_match_rate", rate, self.max_exact_match_rate))
        if self.exact_match_margin is not None:
            baseline = privacy.get("exact_match_rate_holdout")
            limit = None if baseline is None else baseline + self.exact_match_margin
            out.append(
                _at_most(
                    "exact_match_margin",
                    rate,
                    limit,
                    f"exact copies of training rows at most the holdout's rate "
                    f"({_fmt(baseline)}) + {self.exact_match_margin:g}",
                )
            )
        if self.dcr_alpha is not None:
            p_value = privacy.get("dcr_closer_p_value")
            out.append(
                _at_least(
                    "dcr_not_below_holdout",
                    p_value,
                    self.dcr_alpha,
                    "synthetic rows no closer to the training rows than holdout rows "
                    f"(medians {_fmt(privacy.get('dcr_synthetic_median'))} vs "
                    f"{_fmt(privacy.get('dcr_holdout_median'))}; one-sided p-value at least "
                    f"{self.dcr_alpha:g})",
                )
            )
        if self.min_dcr_ratio is not None:
            synthetic, holdout = (
                privacy.get("dcr_synthetic_median"),
                privacy.get("dcr_holdout_median"),
            )
            limit = None if holdout is None else self.min_dcr_ratio * holdout
            out.append(
                _at_least(
                    "min_dcr_ratio",
                    synthetic,
                    limit,
                    f"median distance to the closest training record at least "
                    f"{self.min_dcr_ratio:g} x the holdout's ({_fmt(holdout)})",
                )
            )
        if self.max_mia_advantage is not None:
            out.append(_mia(privacy, self.max_mia_advantage))
        if self.max_utility_gap is not None and utility.get("target") is not None:
            out.append(_at_most("max_utility_gap", utility.get("gap"), self.max_utility_gap))
        return out


def _mia(privacy: dict[str, Any], limit: float) -> GateOutcome:
    """Fails when the attack's advantage is shown to exceed `limit`: the low end of its 95 %
    interval lies above it (the estimate alone when the evaluation gives no interval)."""
    advantage = privacy.get("mia_advantage")
    interval = (privacy.get("ci") or {}).get("mia_advantage")
    what = f"membership attack advantage not shown to exceed {limit:g}"
    if advantage is None or interval is None:
        return _at_most("max_mia_advantage", advantage, limit, what)
    low, high = float(interval[0]), float(interval[1])
    return GateOutcome(
        name="max_mia_advantage",
        passed=low <= limit,
        value=float(advantage),
        threshold=limit,
        message=f"{what} (low end of its 95 % interval at most the limit): {float(advantage):.4g} "
        f"(95 % interval {low:.3g}–{high:.3g})",
    )


def passed(outcomes: list[GateOutcome]) -> bool:
    return all(o.passed for o in outcomes)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _at_least(name: str, value: Any, threshold: float | None, what: str = "") -> GateOutcome:
    return _compare(name, value, threshold, what, f"{name.removeprefix('min_')} at least", 1)


def _at_most(name: str, value: Any, threshold: float | None, what: str = "") -> GateOutcome:
    return _compare(name, value, threshold, what, f"{name.removeprefix('max_')} at most", -1)


def _compare(
    name: str, value: Any, threshold: float | None, what: str, default: str, sign: int
) -> GateOutcome:
    """Passed when `sign * (value - threshold) >= 0`; the message is `what`, or `default`
    followed by the threshold, then the value."""
    if value is None or threshold is None:
        return GateOutcome(
            name=name, passed=False, value=value, threshold=threshold, message="not measured"
        )
    measured, limit = float(value), float(threshold)
    return GateOutcome(
        name=name,
        passed=sign * (measured - limit) >= 0,
        value=measured,
        threshold=limit,
        message=f"{what or f'{default} {limit:g}'}: {measured:.4g}",
    )
