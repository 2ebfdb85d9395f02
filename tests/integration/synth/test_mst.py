"""MST's privacy accounting: the ε a model reports is the ε its noise actually spent.

The Gaussian noise MST draws is recorded as it is drawn (its generator is wrapped), so the
test checks the noise scales of the draws themselves, not only what MST wrote down."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

import synth
from demo.cohort import HOSPITALS, cohort, schema
from synth import accounting
from synth.accounting import ZCDPAccountant, epsilon_for, rho_for, rho_of_spends
from synth.generators import mst
from synth.metadata import Column, TableMetadata
from tessera.schemas import ColumnSpec, DatasetSchema


class RecordingRng:
    """numpy's Generator, recording every normal() draw's scale and size."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng()
        self.normals: list[tuple[float, int]] = []
        self.choices = 0

    def normal(self, loc: float, scale: float, size: Any = None) -> Any:
        self.normals.append((float(scale), int(np.prod(size))))
        return self.rng.normal(loc, scale, size)

    def choice(self, *args: Any, **kwargs: Any) -> Any:
        self.choices += 1
        return self.rng.choice(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rng, name)


def test_conversions_are_tight_and_inverse() -> None:
    for rho in (0.001, 0.0175, 0.5, 2.0):
        for delta in (1e-5, 1e-6, 1e-9):
            eps = epsilon_for(rho, delta)
            classic = rho + 2 * math.sqrt(rho * math.log(1 / delta))
            assert eps <= classic
            assert accounting.delta_for(rho, eps) <= delta * (1 + 1e-6)
            assert rho_for(eps, delta) == pytest.approx(rho, rel=1e-6)
    # δ(ρ, ε) is the minimum over α of the Canonne-Kamath-Steinke bound: check on a grid
    rho = rho_for(1.0, 1e-6)
    alpha = np.linspace(1.0001, 100, 400_000)
    bound = np.exp((alpha - 1) * (alpha * rho - 1.0)) / (alpha - 1) * (1 - 1 / alpha) ** alpha
    assert bound.min() == pytest.approx(1e-6, rel=1e-4)
    classic = (math.sqrt(math.log(1e6) + 1) - math.sqrt(math.log(1e6))) ** 2  # ρ + 2√(ρL) = 1
    assert 0.017 < classic < rho


def test_the_accountant_refuses_to_overspend() -> None:
    ledger = ZCDPAccountant(0.01)
    sigma = ledger.gaussian("marginal a", 0.006)
    assert sigma == pytest.approx(1 / math.sqrt(2 * 0.006))
    assert ledger.exponential("select", 0.003) == pytest.approx(math.sqrt(8 * 0.003))
    with pytest.raises(RuntimeError, match="exceed the budget"):
        ledger.gaussian("marginal b", 0.002)
    assert ledger.spent == pytest.approx(0.009)
    assert rho_of_spends(ledger.to_json()["spends"]) == pytest.approx(0.009)


@pytest.mark.parametrize(
    "epsilon",
    [pytest.param(0.5, marks=pytest.mark.slow), 1.0, pytest.param(4.0, marks=pytest.mark.slow)],
)
def test_the_reported_epsilon_is_the_epsilon_the_noise_spent(
    epsilon: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = cohort(HOSPITALS[2])
    metadata = TableMetadata.from_schema(schema(), frame)
    recorder = RecordingRng()
    monkeypatch.setattr(mst.np.random, "default_rng", lambda *a: recorder)
    model = synth.train(frame, "mst", metadata=metadata, epsilon=epsilon, iters=100)
    monkeypatch.undo()
    d = len(metadata.columns)
    # Every Gaussian draw: one per one-way marginal, one per tree edge (d - 1).
    assert len(recorder.normals) == d + (d - 1)
    rho_from_draws = sum(1 / (2 * scale**2) for scale, _ in recorder.normals)
    # Every exponential-mechanism draw: one per edge, each recorded with its epsilon.
    assert recorder.choices == d - 1
    spends = model.accounting.to_json()["spends"]  # type: ignore[union-attr]
    exponential = [s for s in spends if s["mechanism"] == "exponential"]
    assert len(exponential) == d - 1
    rho_from_selection = sum(s["epsilon"] ** 2 / 8 for s in exponential)
    spent = rho_from_draws + rho_from_selection
    assert [s["sigma"] for s in spends if s["mechanism"] == "gaussian"] == pytest.approx(
        [scale for scale, _ in recorder.normals]
    )
    assert epsilon_for(spent, model.delta) == pytest.approx(epsilon, rel=1e-6)  # type: ignore[arg-type]
    assert model.epsilon == pytest.approx(epsilon, rel=1e-6)
    assert model.epsilon <= epsilon * (1 + 1e-9)  # type: ignore[operator]


def test_the_reported_epsilon_survives_save_and_load(tmp_path: Any) -> None:
    frame = cohort(HOSPITALS[2])
    metadata = TableMetadata.from_schema(schema(), frame)
    model = synth.train(frame, "mst", metadata=metadata, epsilon=2.0, delta=1e-7, iters=100)
    loaded = synth.load(model.save(tmp_path / "mst.zip"))
    assert (loaded.epsilon, loaded.delta) == (model.epsilon, 1e-7)
    spends = loaded.accounting.to_json()["spends"]  # type: ignore[union-attr]
    assert epsilon_for(rho_of_spends(spends), 1e-7) == pytest.approx(2.0, rel=1e-6)


@pytest.mark.slow  # trains mst at several epsilons
def test_more_epsilon_means_less_noise_and_better_fidelity() -> None:
    frame = cohort(HOSPITALS[0])
    metadata = TableMetadata.from_schema(schema(), frame)
    scores = []
    for epsilon in (0.05, 20.0):
        model = synth.train(frame, "mst", metadata=metadata, epsilon=epsilon, iters=200)
        sample = model.sample(len(frame), seed=1)
        scores.append(synth.evaluate(frame, sample, frame.iloc[:200], metadata=metadata))
    low, high = (s["fidelity"]["column_shapes"] for s in scores)
    assert high > 0.9 and high > low + 0.05


def test_dp_output_follows_the_declared_domain_not_the_rows() -> None:
    frame = pd.DataFrame({"x": np.zeros(300), "c": ["a"] * 300})
    declared = TableMetadata.from_schema(
        DatasetSchema(
            columns=[
                {"name": "x", "type": "float", "min": 0, "max": 100},
                {"name": "c", "type": "categorical", "levels": ["a", "b"]},
            ]
        ),
        frame,
    )
    model = synth.train(frame, "mst", metadata=declared, epsilon=5.0, iters=100)
    sample = model.sample(500, seed=2)
    assert (sample["x"] == 0).mean() > 0.9  # a spike at the bound stays a spike
    # within the declared bounds; missing where the noisy missing cell made x nullable (the
    # rows have none, but that decision is the noise's, once in a few hundred fits)
    assert sample["x"].dropna().between(0, 100).all()
    assert list(sample["c"].cat.categories) == ["a", "b"]


def test_nullability_follows_the_noisy_missing_cell_not_the_rows() -> None:
    """A column never missing in training is still nullable when its noisy missing cell
    survives compression (and a column missing in training is not, when it is dropped): the
    output's dtypes reveal only the noisy estimate."""
    never = Column(ColumnSpec(name="a", type="integer", min=0, max=10), declared=True)
    often = Column(
        ColumnSpec(name="b", type="integer", min=0, max=10),
        nullable=True,
        missing_rate=0.3,
        declared=True,
    )
    kept = mst.Encoding(
        never, 3, coarse_of_fine=np.array([0, 0, 1]), fine_weights=np.array([60.0, 20.0, 20.0])
    )
    dropped = mst.Encoding(
        often, 3, coarse_of_fine=np.array([0, 1, -1]), fine_weights=np.array([50.0, 50.0, 0.0])
    )
    out = mst._dp_nullability(TableMetadata((never, often)), [kept, dropped])
    assert out.column("a").nullable and out.column("a").missing_rate == 0.2
    assert not out.column("b").nullable and out.column("b").missing_rate == 0.0


@pytest.mark.parametrize(
    ("n_hat", "sigma", "cap", "cells"),
    [
        (549, 24.0, 64, 32),  # gbsg2 at epsilon 1: a 64-cell grid would be mostly noise
        (549, 5.1, 64, 64),  # the same rows at epsilon 5
        (16_152, 24.0, 64, 64),  # randhie: capped at fine_bins
        (10, 24.0, 64, 8),  # never fewer than 8
        (10, 24.0, 4, 4),  # nor more than fine_bins
    ],
)
def test_the_grid_is_as_fine_as_the_noise_allows(
    n_hat: float, sigma: float, cap: int, cells: int
) -> None:
    assert mst.grid_cells(n_hat, sigma, cap) == cells


@pytest.mark.slow  # trains mst twice
def test_few_rows_at_a_small_epsilon_get_a_coarser_grid() -> None:
    frame = cohort(HOSPITALS[2])
    metadata = TableMetadata.from_schema(schema(), frame)
    small = synth.train(frame.head(150), "mst", metadata=metadata, epsilon=0.5, iters=50)
    large = synth.train(frame, "mst", metadata=metadata, epsilon=8.0, iters=50)
    weight = {
        m: next(e for e in m.encodings if e.column.name == "weight_kg") for m in (small, large)
    }
    assert weight[small].fine < weight[large].fine == 64 + 3  # 64 cells, two bounds, missing
