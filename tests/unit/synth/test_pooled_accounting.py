"""The pooled measurement's accounting, checked against the noise actually drawn.

`SecureMeasurer` runs here on a stand-in for MPyC's runtime that plays one party of three (the
others contribute nothing, so the opened sum is this party's noisy counts). The discrete
Gaussian sampler is wrapped to record every draw's variance parameter and size; ρ recomputed
from those draws alone, by the bound of a sum of the honest parties' shares, must equal what the
accountant recorded, and the ε converted from it the ε the model reports (≤ the ε asked).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import pytest

import synth.pooled as pooled
from demo.cohort import HOSPITALS, cohort, schema
from smpc.noise import honest, sum_rho
from synth.accounting import ZCDPAccountant, epsilon_for, rho_for, rho_of_spends
from synth.generators.mst import Measurements
from synth.metadata import TableMetadata


class _Array:
    def __init__(self, values: np.ndarray) -> None:
        self.values = np.asarray(values, dtype=object)

    def __add__(self, other: _Array) -> _Array:
        return _Array(self.values + other.values)


class _SecInt:
    @staticmethod
    def array(values: np.ndarray) -> _Array:
        return _Array(values)


class OneOfThree:
    """The part of MPyC's runtime `SecureMeasurer` uses, as party 0 of 3 whose peers input
    zeros."""

    parties = [object(), object(), object()]

    def SecInt(self, bits: int) -> type[_SecInt]:
        return _SecInt

    def input(self, mine: _Array) -> list[_Array]:
        zeros = _Array(np.zeros(len(mine.values), dtype=object))
        return [mine, zeros, zeros]

    async def output(self, total: _Array) -> np.ndarray:
        return np.asarray(total.values, dtype=np.int64)


def drive(coroutine: Any) -> Any:
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the stand-in never waits")


def test_rho_recomputed_from_the_draws_is_what_was_recorded(monkeypatch) -> None:
    draws: list[tuple[Fraction, int]] = []
    sample = pooled.discrete_gaussian

    def recording(variance: Fraction, size: int) -> np.ndarray:
        draws.append((variance, size))
        return sample(variance, size)

    monkeypatch.setattr(pooled, "discrete_gaussian", recording)
    metadata = TableMetadata.from_schema(schema())
    query = pooled.measurement_query(metadata, 1.0, None, {"iters": 20})
    model = pooled.pooled_model(query)
    frame = model.metadata.check(cohort(HOSPITALS[0]))
    accountant = ZCDPAccountant(rho_for(model.target_epsilon, model.target_delta))
    measurer = pooled.SecureMeasurer(OneOfThree(), accountant)
    measured = drive(model.measure(frame, measurer))

    shares = honest(3)
    from_draws = sum(sum_rho(variance, shares, size) for variance, size in draws)
    assert len(draws) == len(accountant.spends)  # one draw per measurement, nothing unrecorded
    assert from_draws == pytest.approx(accountant.spent, rel=1e-12)
    assert from_draws == pytest.approx(rho_of_spends(accountant.to_json()["spends"]), rel=1e-12)
    assert from_draws <= rho_for(1.0, model.target_delta) * (1 + 1e-9)
    # every draw was at least the honest parties' share of the scale the budget calls for
    for (variance, _), spend in zip(draws, accountant.spends, strict=True):
        assert shares * float(variance) >= 1 / (2 * spend.rho) * (1 - 1e-9)
    # and the model fitted on what was opened reports the epsilon those draws give
    again = pooled.pooled_model(query)
    again.fit_measurements(Measurements.from_json(measured.to_json(), again.metadata))
    assert again.epsilon == pytest.approx(epsilon_for(from_draws, model.target_delta), rel=1e-9)
    assert again.epsilon <= 1.0 + 1e-9
    # selection tables for every pair, before the tree's own tables
    labels = [s.measured for s in accountant.spends]
    first_two_way = next(i for i, lab in enumerate(labels) if lab.startswith("two-way"))
    assert all(lab.startswith(("one-way", "selection")) for lab in labels[:first_two_way])
