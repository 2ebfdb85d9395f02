"""`synth.train_pooled`: MST measured by MPC over several hospitals' frames (one MPyC party
process per frame, TLS on loopback), its exact privacy accounting, and its refusals."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import synth
from demo.cohort import HOSPITALS, cohort, schema
from smpc.noise import honest, sum_rho
from synth.accounting import epsilon_for, rho_for, rho_of_spends
from synth.metadata import TableMetadata
from synth.pooled import train_pooled
from tessera.errors import InvalidRequest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def frames() -> list:
    return [cohort(h) for h in HOSPITALS]


@pytest.fixture(scope="module")
def pooled(frames: list) -> synth.Synthesizer:
    return train_pooled(
        frames, metadata=TableMetadata.from_schema(schema()), epsilon=1.0, iters=200, seed=3
    )


def test_a_pooled_model_samples_the_declared_table(pooled: synth.Synthesizer) -> None:
    rows = pooled.sample(400, seed=1)
    assert list(rows.columns) == schema().names
    assert len(rows) == 400
    assert rows["age_months"].between(0, 215).all()
    assert set(rows["diagnosis_group"].dropna()) <= set(schema().column("diagnosis_group").levels)
    assert pooled.training_rows is None  # nobody learns the pooled count
    assert pooled.parties == 3
    # sampling without a seed uses the seed given at training, so it is reproducible
    assert pooled.sample(50).equals(pooled.sample(50))


def test_the_accounting_is_exact_and_recomputable(pooled: synth.Synthesizer) -> None:
    accounting = pooled.accounting
    spends = accounting.to_json()["spends"]
    assert spends and all(s["mechanism"] == "distributed-gaussian" for s in spends)
    assert all(s["honest_parties"] == honest(3) for s in spends)
    # one-way marginals, a selection table for every pair, and the tree's two-way marginals
    columns = len(schema().names)
    labels = [s["measured"] for s in spends]
    assert sum(lab.startswith("one-way") for lab in labels) == columns
    assert sum(lab.startswith("selection table") for lab in labels) == columns * (columns - 1) // 2
    assert sum(lab.startswith("two-way") for lab in labels) == columns - 1
    # rho recomputed from each party's noise variance, the honest parties and the cells alone
    recomputed = rho_of_spends(spends)
    assert recomputed == pytest.approx(accounting.spent, rel=1e-12)
    assert recomputed <= rho_for(1.0, pooled.delta) * (1 + 1e-9)
    assert epsilon_for(recomputed, pooled.delta) == pytest.approx(pooled.epsilon, rel=1e-9)
    assert pooled.epsilon <= 1.0 + 1e-6
    for s in spends:  # the honest parties' noise alone is as wide as the budget asks
        variance = Fraction(s["share_variance"])
        assert s["sigma"] == pytest.approx(math.sqrt(honest(3) * float(variance)))
        assert sum_rho(variance, honest(3), s["cells"]) == pytest.approx(s["rho"], rel=1e-12)


def test_the_pooled_model_is_closer_to_the_union_than_a_site_alone(
    frames: list, pooled: synth.Synthesizer
) -> None:
    import pandas as pd

    union = pd.concat(frames, ignore_index=True)
    share = float((union["diagnosis_group"] == "respiratory").mean())
    cohort_share = float((pooled.sample(3000, seed=2)["diagnosis_group"] == "respiratory").mean())
    smallest = frames[-1]
    site_share = float((smallest["diagnosis_group"] == "respiratory").mean())
    assert abs(cohort_share - share) < abs(site_share - share) + 0.03


def test_a_pooled_model_saves_and_loads(pooled: synth.Synthesizer, tmp_path: Path) -> None:
    path = pooled.save(tmp_path / "pooled.tessera-synth")
    loaded = synth.load(path)
    assert loaded.parties == 3
    assert loaded.sample(20, seed=4).equals(pooled.sample(20, seed=4))


def test_refusals_come_before_any_party_starts(frames: list) -> None:
    metadata = TableMetadata.from_schema(schema())
    with pytest.raises(InvalidRequest, match="3 to 16"):
        train_pooled(frames[:2], metadata=metadata, epsilon=1.0)
    with pytest.raises(InvalidRequest, match="pooled synthesizer is one of"):
        train_pooled(frames, "cart", metadata=metadata, epsilon=1.0)
    with pytest.raises(InvalidRequest, match="noisy pair tables"):
        train_pooled(frames, metadata=metadata, epsilon=1.0, selection="exponential")
    undeclared = TableMetadata.from_frame(frames[0])
    with pytest.raises(InvalidRequest, match="declared domain"):
        train_pooled(frames, metadata=undeclared, epsilon=1.0)


def test_noise_is_never_seeded(frames: list) -> None:
    """Two trainings with the same seed open different noisy measurements (each party's noise
    comes from the operating system), so the seed cannot be used to subtract the noise."""
    metadata = TableMetadata.from_schema(schema())
    small = [f.iloc[:120] for f in frames]
    a = train_pooled(small, metadata=metadata, epsilon=1.0, iters=20, seed=5)
    b = train_pooled(small, metadata=metadata, epsilon=1.0, iters=20, seed=5)
    weights_a = np.concatenate([e.fine_weights for e in a.encodings])
    weights_b = np.concatenate([e.fine_weights for e in b.encodings])
    assert not np.array_equal(weights_a, weights_b)
