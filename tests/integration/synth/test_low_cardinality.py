"""The default generator passes the default release gates on a real low-cardinality table
(lifelines' `rossi`: 432 released prisoners, six yes/no columns), where the previous defaults
copied more training rows than real unseen rows repeat and let the membership attack through.
`benchmarks/low_cardinality.py` measures four such tables."""

from __future__ import annotations

import pandas as pd
import pytest
from lifelines.datasets import load_rossi

import synth
from synth.gates import ReleaseGates
from synth.holdout import split_holdout
from synth.verdict import verdict


def gated(frame: pd.DataFrame, seed: int, **params: object) -> tuple[dict, list]:
    train, holdout = split_holdout(frame, 0.2, seed=seed)
    model = synth.train(train, **params)
    evaluation = synth.evaluate(
        train, model.sample(len(train), seed=seed), holdout, metadata=model.metadata, seed=seed
    )
    return evaluation, ReleaseGates().apply(evaluation, model.epsilon)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_the_default_generator_passes_the_default_gates_on_rossi(seed: int) -> None:
    evaluation, outcomes = gated(load_rossi(), seed)
    assert [g.name for g in outcomes if not g.passed] == []
    privacy = evaluation["privacy"]
    assert privacy["exact_match_rate"] < privacy["exact_match_rate_holdout"]
    assert evaluation["fidelity"]["score"] > 0.95
    assert verdict(evaluation, outcomes)["verdict"] in ("pass", "needs attention")


def test_the_previous_defaults_fail_there() -> None:
    evaluation, outcomes = gated(load_rossi(), 2, min_samples_leaf=30, drop_unique_copies=False)
    failed = {g.name for g in outcomes if not g.passed}
    assert {"exact_match_margin", "dcr_not_below_holdout"} <= failed
    assert verdict(evaluation, outcomes)["verdict"] == "fail"
