"""Every generator: trains on a real-shaped table, round-trips save/load, samples the declared
columns with their dtypes, is reproducible per seed, reports progress; bad input is refused
with a clear error."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import synth
from demo.cohort import HOSPITALS, cohort, schema
from synth import TableMetadata
from tessera.errors import InvalidRequest

PARAMS: dict[str, dict[str, Any]] = {
    "cart": {},
    "gaussian_copula": {},
    "ctgan": {"epochs": 2, "batch_size": 100},
    "tvae": {"epochs": 2, "batch_size": 100},
    "mst": {"epsilon": 1.0, "iters": 200},
}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return cohort(HOSPITALS[2])  # 450 rows, 8 columns, missing weights


@pytest.fixture(scope="module")
def metadata(frame: pd.DataFrame) -> TableMetadata:
    return TableMetadata.from_schema(schema(), frame)


TORCH = ("ctgan", "tvae")  # trained with torch: the slow tier (make test, not test-fast)
GENERATORS = [pytest.param(n, marks=pytest.mark.slow) if n in TORCH else n for n in PARAMS]


@pytest.fixture(scope="module")
def trained(frame: pd.DataFrame, metadata: TableMetadata) -> Callable[[str], tuple[Any, list]]:
    """Each generator trained once, when a test first asks for it (with the progress events it
    reported)."""
    done: dict[str, tuple[Any, list[Any]]] = {}

    def get(name: str) -> tuple[Any, list[Any]]:
        if name not in done:
            events: list[Any] = []
            model = synth.train(
                frame, name, metadata=metadata, progress=events.append, **PARAMS[name]
            )
            done[name] = (model, events)
        return done[name]

    return get


def test_the_registry_is_the_one_list_of_generators() -> None:
    assert sorted(synth.generator_names()) == sorted(PARAMS)
    assert all(synth.generator_class(n).name == n for n in synth.generator_names())
    assert synth.dp_generators() == ["mst"]
    with pytest.raises(InvalidRequest, match="is differentially private: give epsilon"):
        synth.check_request("mst")
    with pytest.raises(InvalidRequest, match="is not differentially private"):
        synth.check_request("cart", epsilon=1.0)
    assert synth.check_request("mst", epsilon=1.0).name == "mst"


@pytest.mark.parametrize("name", GENERATORS)
def test_samples_the_declared_columns_with_their_dtypes(
    name: str,
    trained: Callable[[str], tuple[Any, list]],
    frame: pd.DataFrame,
    metadata: TableMetadata,
) -> None:
    model, _ = trained(name)
    sample = model.sample(300, seed=1)
    assert list(sample.columns) == metadata.names
    assert len(sample) == 300
    # Never missing in training, so int64 and bool; a DP model decides nullability from its
    # noisy missing-cell count (mst keeps the cell about once in 740 columns, with fresh noise
    # each fit), and then samples the nullable Int64 and boolean.
    for name_, plain, nullable in (
        ("age_months", np.int64, "Int64"),
        ("length_of_stay_days", np.int64, "Int64"),
        ("icu_admission", bool, "boolean"),
    ):
        expected = nullable if model.metadata.column(name_).nullable else plain
        assert sample[name_].dtype == expected, name_
    assert sample["weight_kg"].dtype == np.float64
    assert isinstance(sample["sex"].dtype, pd.CategoricalDtype)
    assert (
        list(sample["diagnosis_group"].cat.categories) == schema().column("diagnosis_group").levels
    )
    assert sample["sex"].isin(["F", "M"]).all()
    assert sample["age_months"].between(0, 215).all()
    assert sample["weight_kg"].dropna().between(0.5, 150).all()


@pytest.mark.parametrize("name", GENERATORS)
def test_save_and_load_round_trip_and_sampling_is_reproducible_per_seed(
    name: str, trained: Callable[[str], tuple[Any, list]], tmp_path: Path
) -> None:
    model, _ = trained(name)
    path = model.save(tmp_path / f"{name}.tessera-synth")
    loaded = synth.load(path)
    assert type(loaded) is type(model)
    assert loaded.params == model.params
    assert loaded.metadata == model.metadata
    assert loaded.epsilon == model.epsilon
    first, again = loaded.sample(200, seed=7), loaded.sample(200, seed=7)
    pd.testing.assert_frame_equal(first, again)
    pd.testing.assert_frame_equal(first, model.sample(200, seed=7))
    assert not first.equals(loaded.sample(200, seed=8))
    manifest = json.loads(zipfile.ZipFile(path).read("manifest.json"))
    assert manifest["generator"] == name
    assert manifest["training_rows"] == 450


@pytest.mark.parametrize("name", GENERATORS)
def test_training_reports_progress(name: str, trained: Callable[[str], tuple[Any, list]]) -> None:
    model, events = trained(name)
    stages = [e.stage for e in events]
    assert stages[0] == "preparing" and stages[-1] == "trained"
    assert model.history == [e.to_json() for e in events]
    if name in ("ctgan", "tvae"):
        epochs = [e for e in events if e.epoch is not None]
        assert [e.epoch for e in epochs] == [1, 2]
        assert all(e.epochs == 2 and e.loss is not None for e in epochs)


@pytest.mark.parametrize("name", GENERATORS)
def test_only_the_dp_generator_reports_epsilon(
    name: str, trained: Callable[[str], tuple[Any, list]]
) -> None:
    model, _ = trained(name)
    if name in synth.dp_generators():
        assert model.epsilon == pytest.approx(1.0, abs=1e-9)
        assert model.delta == 1e-6
    else:
        assert model.epsilon is None and model.delta is None


def test_a_tampered_model_file_is_refused(
    trained: Callable[[str], tuple[Any, list]], tmp_path: Path
) -> None:
    model, _ = trained("cart")
    path = model.save(tmp_path / "m.zip")
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("cart.json"):
                data = data.replace(b"column", b"kolumn", 1)
            dst.writestr(item, data)
    with pytest.raises(InvalidRequest, match="does not match its hash"):
        synth.load(tampered)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(InvalidRequest, match="not a saved Tessera generator"):
        synth.load(tmp_path / "junk.zip")


def test_bad_requests_are_refused_clearly(frame: pd.DataFrame, metadata: TableMetadata) -> None:
    with pytest.raises(InvalidRequest, match="unknown generator 'gan'"):
        synth.train(frame, "gan")
    with pytest.raises(InvalidRequest, match="takes no parameter"):
        synth.train(frame, "cart", epochs=3)
    with pytest.raises(InvalidRequest, match="give epsilon"):
        synth.train(frame, "mst", metadata=metadata)
    with pytest.raises(InvalidRequest, match=r"not declared: .*weight_kg"):
        synth.train(frame, "mst", epsilon=1.0)  # bounds detected from the rows: refused
    with pytest.raises(InvalidRequest, match=r"declared column\(s\) missing from the data: sex"):
        synth.train(frame.drop(columns="sex"), "cart", metadata=metadata)
    bad = frame.copy()
    bad.loc[0, "sex"] = "X"
    levels = r"column 'sex': 1 row \(first: data row 1\) not among the declared levels"
    with pytest.raises(InvalidRequest, match=levels):
        synth.train(bad, "cart", metadata=metadata)
    with pytest.raises(InvalidRequest, match="'cuda' was asked for"):
        synth.train(frame, "ctgan", device="cuda", epochs=1)
    model, _ = synth.train(frame, "cart"), None
    with pytest.raises(InvalidRequest, match="positive integer"):
        model.sample(0)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ctgan", "tvae"])
def test_torch_generators_train_and_sample_on_cuda(
    name: str, frame: pd.DataFrame, metadata: TableMetadata, tmp_path: Path
) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = synth.train(frame, name, metadata=metadata, device="cuda", **PARAMS[name])
    assert model.device == "cuda"
    assert model._sdv._model._device.type == "cuda"  # ctgan's model trained there
    loaded = synth.load(model.save(tmp_path / "m.zip"), device="cuda")
    assert loaded._sdv._model._device.type == "cuda"
    sample = loaded.sample(100, seed=1)
    assert list(sample.dtypes) == list(model.sample(100, seed=1).dtypes) and len(sample) == 100
    on_cpu = synth.load(tmp_path / "m.zip", device="cpu")
    assert on_cpu.device == "cpu" and len(on_cpu.sample(100, seed=1)) == 100
