"""Synthetic values as precise as the real column's, for every generator that learns it; and
`cart` leaving out copies of rows seen once in training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import synth
from demo.cohort import HOSPITALS, cohort, schema
from synth.metadata import Column, TableMetadata, decimals_of
from synth.rows import canonical, row_keys
from tessera.errors import InvalidRequest


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1.0, 2.0, 30.0], 0),
        ([17.5, 22.0, 27.0], 1),
        ([12.34, 0.5, 3.0], 2),
        ([0.1, 0.2, 0.30000000000000004], 1),  # float noise is not a decimal
        ([1 / 3, 0.5], None),  # more than six decimals: continuous
        ([np.nan, np.nan], None),
        ([-2.125, 4.0], 3),
    ],
)
def test_a_columns_decimals_are_the_fewest_that_write_every_value(
    values: list[float], expected: int | None
) -> None:
    assert decimals_of(pd.Series(values)) == expected


def test_every_float_is_rounded_to_its_columns_decimals_and_integers_stay_whole() -> None:
    frame = sm.datasets.fair.load_pandas().data  # survey answers: ages like 17.5, all floats
    model = synth.train(frame)
    decimals = {c.name: c.decimals for c in model.metadata.columns}
    assert decimals["age"] == 1 and decimals["rate_marriage"] == 0
    assert decimals["affairs"] is None  # affairs per year: a continuous rate
    synthetic = model.sample(2000, seed=1)
    for name, digits in decimals.items():
        if digits is not None:
            values = synthetic[name].to_numpy()
            assert np.array_equal(values, np.round(values, digits)), name
    assert (synthetic["age"] * 10 % 5 == 0).all()  # 17.5, 22, 27, ... as asked
    demo = cohort(HOSPITALS[2])
    model = synth.train(demo, metadata=TableMetadata.from_schema(schema(), demo))
    sampled = model.sample(300, seed=2)
    assert sampled["age_months"].dtype == "int64"
    assert np.allclose(sampled["height_cm"].dropna(), sampled["height_cm"].dropna().round(1))
    weights = sampled["weight_kg"].dropna()
    assert np.allclose(weights, weights.round(2)) and not np.allclose(weights, weights.round(1))


def test_decimals_survive_save_and_load_and_bad_ones_are_refused(tmp_path: Path) -> None:
    demo = cohort(HOSPITALS[2])
    model = synth.train(demo, metadata=TableMetadata.from_schema(schema(), demo))
    loaded = synth.load(model.save(tmp_path / "m.tessera-synth"))
    assert loaded.metadata == model.metadata
    assert loaded.sample(50, seed=4).equals(model.sample(50, seed=4))
    raw = model.metadata.column("height_cm").to_json() | {"decimals": 40}
    with pytest.raises(InvalidRequest, match="decimals must be 0 to 6"):
        Column.from_json(raw)


def test_a_dp_generator_learns_no_decimals_from_the_rows() -> None:
    """`mst` rounds a float column to a thousandth of its declared range, whatever the rows
    carry: weights recorded to 0.001 kg still come out to 0.1 kg (declared 0.5 to 150)."""
    demo = cohort(HOSPITALS[2])
    demo["weight_kg"] = demo["weight_kg"] + 0.001  # three decimals in the rows
    model = synth.train(
        demo, "mst", metadata=TableMetadata.from_schema(schema(), demo), epsilon=1.0, iters=50
    )
    decimals = {c.name: c.decimals for c in model.metadata.columns}
    assert decimals["weight_kg"] == 1 and decimals["height_cm"] == 1  # ranges 149.5 and 180
    assert all(d is None for n, d in decimals.items() if n not in ("weight_kg", "height_cm"))
    weights = model.sample(200, seed=1)["weight_kg"].dropna()
    assert np.allclose(weights, weights.round(1))


def test_cart_leaves_out_copies_of_rows_seen_once_in_training() -> None:
    rng = np.random.default_rng(0)
    n = 400  # few-valued columns: many rows repeat, many are unique
    frame = pd.DataFrame(
        {
            "a": rng.integers(0, 3, n),
            "b": rng.integers(0, 4, n),
            "c": rng.choice(["x", "y", "z"], n),
            "d": rng.integers(0, 6, n),
            "e": rng.integers(0, 2, n),
        }
    )
    metadata = TableMetadata.from_frame(frame)
    keys = pd.Series(row_keys(canonical(frame, metadata), metadata))
    counts = keys.value_counts()
    unique, repeated = set(counts[counts == 1].index), set(counts[counts > 1].index)
    assert len(unique) > 50 and len(repeated) > 20

    def copies(model: synth.Synthesizer) -> tuple[int, int]:
        synthetic = model.sample(2000, seed=3)
        got = row_keys(canonical(synthetic, metadata), metadata)
        return sum(k in unique for k in got), sum(k in repeated for k in got)

    kept_uniques, kept_repeats = copies(synth.train(frame, drop_unique_copies=False))
    dropped_uniques, dropped_repeats = copies(synth.train(frame))
    assert kept_uniques > 100 and dropped_uniques == 0
    assert dropped_repeats > 0.8 * kept_repeats  # rows many share still appear
    with pytest.raises(InvalidRequest, match="drop_unique_copies must be true or false"):
        synth.train(frame, drop_unique_copies="yes")
