"""The `Synthesizer` interface, the generator registry, `train` and `load`.

A generator subclasses `Synthesizer` and writes `_fit(frame)`, `_sample(n, seed)`, and
`_save_state(folder)` / `_load_state(folder)`; the public `fit`, `sample`, `save` and `load`
check input, keep the metadata and give every generator the same file format:

    model.tessera-synth (a zip)
      manifest.json   generator, its parameters, metadata, epsilon/delta, device, versions,
                      training history, and the SHA-256 of every other file
      state/...       what the generator itself writes

`load` checks the manifest's hashes before a generator reads its state. Generators whose
library can only save pickles (the SDV ones) say so in `pickled_state`: load such a model only
from a file this node wrote itself (a model never leaves its node; only approved synthetic data
does).

Torch and SDV are imported inside the generators that need them, never here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import time
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from synth.metadata import TableMetadata
from tessera.errors import InvalidRequest

FORMAT = "tessera-synth/1"
log = logging.getLogger("tessera.synth")


@dataclass(frozen=True)
class TrainingProgress:
    """One progress event: a stage (`preparing`, `training`, `sampling`, ...) and, for
    generators trained in epochs, the epoch (1-based), the number of epochs and the loss."""

    stage: str
    message: str = ""
    epoch: int | None = None
    epochs: int | None = None
    loss: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != ""}


ProgressCallback = Callable[[TrainingProgress], None]


def resolve_device(device: str) -> str:
    """`auto` is `cuda` when torch sees a CUDA device, else `cpu`; `cuda` without one is an
    error, not a silent fallback."""
    if device not in ("auto", "cpu", "cuda"):
        raise InvalidRequest(f"device must be auto, cpu or cuda, not {device!r}")
    if device == "cpu":
        return "cpu"
    try:
        import torch
    except ImportError:
        if device == "cuda":
            raise InvalidRequest("device 'cuda' needs torch, which is not installed") from None
        return "cpu"
    available = bool(torch.cuda.is_available())
    if device == "cuda" and not available:
        raise InvalidRequest("device 'cuda' was asked for, but torch sees no CUDA device")
    return "cuda" if available else "cpu"


class Synthesizer(ABC):
    """A generator of synthetic rows, trained on one table.

    `epsilon`/`delta` are None unless the generator is differentially private; then they are
    what training actually spent. `history` holds the training progress events.
    """

    name: ClassVar[str]
    license: ClassVar[str]  # the SPDX licence of the library that does the work
    differentially_private: ClassVar[bool] = False
    uses_device: ClassVar[bool] = False  # trains with torch, on `device`
    pickled_state: ClassVar[bool] = False
    param_names: ClassVar[tuple[str, ...]] = ()  # the parameters `__init__` accepts

    def __init__(
        self,
        metadata: TableMetadata | None = None,
        *,
        device: str = "auto",
        progress: ProgressCallback | None = None,
        **params: Any,
    ) -> None:
        unknown = sorted(set(params) - set(self.param_names))
        if unknown:
            known = ", ".join(self.param_names) or "none"
            raise InvalidRequest(
                f"generator {self.name!r} takes no parameter(s) {', '.join(unknown)} "
                f"(known: {known})",
                {"generator": self.name, "unknown": unknown, "known": list(self.param_names)},
            )
        self.metadata = metadata
        self.params: dict[str, Any] = dict(params)
        self.device = resolve_device(device) if self.uses_device else "cpu"
        self._progress = progress
        self.history: list[dict[str, Any]] = []
        self.epsilon: float | None = None
        self.delta: float | None = None
        self.fit_seconds: float | None = None
        self.training_rows: int | None = None
        self._fitted = False

    # ---- the public surface -----------------------------------------------------------

    def fit(self, frame: pd.DataFrame, metadata: TableMetadata | None = None) -> Synthesizer:
        """Check the frame against the metadata (given, set at construction, or detected),
        then train. Returns self."""
        if metadata is not None:
            self.metadata = metadata
        if self.metadata is None:
            self.metadata = TableMetadata.from_frame(frame)
        checked = self.metadata.check(frame)
        self.metadata = self.metadata.with_missing_rates(checked)
        if not self.differentially_private:  # decimals are read off the rows: not under ε
            self.metadata = self.metadata.with_decimals(checked)
        self.report(TrainingProgress("preparing", f"{len(checked)} rows, {checked.shape[1]} cols"))
        started = time.perf_counter()
        self._fit(checked)
        self.fit_seconds = round(time.perf_counter() - started, 3)
        self.training_rows = len(checked)
        self._fitted = True
        self.report(TrainingProgress("trained", f"in {self.fit_seconds:.1f} s"))
        return self

    def sample(self, n: int, seed: int | None = None) -> pd.DataFrame:
        """`n` synthetic rows with the training table's columns, order and dtypes, each value
        as precise as the column's (`TableMetadata.restore`: integers whole, floats to the
        decimals their training values carry, within the bounds), for every generator."""
        if not self._fitted or self.metadata is None:
            raise InvalidRequest(f"generator {self.name!r} is not trained yet")
        if not isinstance(n, int) or n < 1:
            raise InvalidRequest("the number of rows to sample must be a positive integer")
        return self.metadata.restore(self._sample(n, seed))

    def save(self, path: str | Path) -> Path:
        """Write the fitted generator to one file (the format in the module doc)."""
        if not self._fitted or self.metadata is None:
            raise InvalidRequest(f"generator {self.name!r} is not trained yet")
        path = Path(path)
        with tempfile.TemporaryDirectory() as tmp:
            state = Path(tmp) / "state"
            state.mkdir()
            self._save_state(state)
            files = sorted(p for p in state.rglob("*") if p.is_file())
            manifest = {
                "format": FORMAT,
                "generator": self.name,
                "license": self.license,
                "params": self.params,
                "metadata": self.metadata.to_json(),
                "epsilon": self.epsilon,
                "delta": self.delta,
                "device": self.device,
                "fit_seconds": self.fit_seconds,
                "training_rows": self.training_rows,
                "history": self.history,
                "pickled_state": self.pickled_state,
                "versions": _versions(),
                "files": {str(p.relative_to(tmp)): _sha256(p) for p in files},
            }
            partial = path.with_name(path.name + ".partial")
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
                archive.writestr("manifest.json", json.dumps(manifest, indent=2, default=str))
                for p in files:
                    archive.write(p, str(p.relative_to(tmp)))
            partial.replace(path)  # never a half-written model under the final name
        return path

    def report(self, event: TrainingProgress) -> None:
        """Record a progress event and pass it to the callback (a failing callback does not
        stop training)."""
        self.history.append(event.to_json())
        if self._progress is not None:
            try:
                self._progress(event)
            except Exception:  # a broken progress display must not lose the training
                log.warning("the progress callback failed", exc_info=True)

    # ---- what a generator writes --------------------------------------------------------

    @abstractmethod
    def _fit(self, frame: pd.DataFrame) -> None:
        """Train on `frame` (checked: the declared columns in order, numbers as float,
        categoricals as text, booleans as bool or None)."""

    @abstractmethod
    def _sample(self, n: int, seed: int | None) -> pd.DataFrame:
        """`n` rows (any dtypes: `restore` shapes them)."""

    @abstractmethod
    def _save_state(self, folder: Path) -> None: ...

    @abstractmethod
    def _load_state(self, folder: Path) -> None: ...


GENERATORS: dict[str, type[Synthesizer]] = {}


def register(cls: type[Synthesizer]) -> type[Synthesizer]:
    """Class decorator: add a generator to the registry under its `name`."""
    GENERATORS[cls.name] = cls
    return cls


def generator_class(name: str) -> type[Synthesizer]:
    from synth import generators  # noqa: F401 -- registers every generator

    try:
        return GENERATORS[name]
    except KeyError:
        raise InvalidRequest(
            f"unknown generator {name!r}; known: {', '.join(sorted(GENERATORS))}",
            {"generator": name, "known": sorted(GENERATORS)},
        ) from None


def generator_names() -> list[str]:
    """Every registered generator (the one list: the coordinator and the node read it here)."""
    from synth import generators  # noqa: F401 -- registers every generator

    return list(GENERATORS)


def dp_generators() -> list[str]:
    """The registered generators that are differentially private."""
    return [name for name in generator_names() if GENERATORS[name].differentially_private]


def check_request(
    generator: str, epsilon: float | None = None, delta: float | None = None
) -> type[Synthesizer]:
    """The generator a request names, held to its registry entry: a known name, and epsilon
    (and delta) given exactly when it is differentially private. `InvalidRequest` otherwise.
    The coordinator applies it to a synthesis request, the node to a job it is offered."""
    cls = generator_class(generator)
    private = dp_generators()
    if cls.differentially_private and epsilon is None:
        raise InvalidRequest(
            f"generator {generator!r} is differentially private: give epsilon",
            {"generator": generator, "field": "epsilon"},
        )
    if not cls.differentially_private and (epsilon is not None or delta):
        raise InvalidRequest(
            f"generator {generator!r} is not differentially private: epsilon and delta apply "
            f"to {', '.join(private)}",
            {"generator": generator, "field": "epsilon"},
        )
    return cls


def train(
    frame: pd.DataFrame,
    generator: str = "cart",
    *,
    metadata: TableMetadata | None = None,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    **params: Any,
) -> Synthesizer:
    """Train `generator` on `frame` and return the fitted model."""
    cls = generator_class(generator)
    return cls(metadata, device=device, progress=progress, **params).fit(frame)


def load(path: str | Path, device: str = "auto") -> Synthesizer:
    """A generator saved by `Synthesizer.save`, its files checked against the manifest."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise InvalidRequest(f"{path} is not a saved Tessera generator: {exc}") from None
    with archive, tempfile.TemporaryDirectory() as tmp:
        try:
            manifest = json.loads(archive.read("manifest.json"))
        except (KeyError, ValueError):
            raise InvalidRequest(f"{path} has no readable manifest.json") from None
        if manifest.get("format") != FORMAT:
            raise InvalidRequest(f"{path} is not in the {FORMAT} format")
        expected = manifest.get("files", {})
        names = [n for n in archive.namelist() if n != "manifest.json"]
        if sorted(names) != sorted(expected):
            raise InvalidRequest(f"{path}: its files do not match its manifest")
        for name in names:
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise InvalidRequest(f"{path}: unsafe file name in the archive")
            archive.extract(name, tmp)
            if _sha256(Path(tmp) / name) != expected[name]:
                raise InvalidRequest(f"{path}: {name} does not match its hash in the manifest")
        cls = generator_class(manifest["generator"])
        model = cls(
            TableMetadata.from_json(manifest["metadata"]),
            device=device if cls.uses_device else "cpu",
            **manifest.get("params", {}),
        )
        model._load_state(Path(tmp) / "state")
        model.epsilon, model.delta = manifest.get("epsilon"), manifest.get("delta")
        model.fit_seconds = manifest.get("fit_seconds")
        model.training_rows = manifest.get("training_rows")
        model.history = list(manifest.get("history", []))
        model._fitted = True
    return model


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for package in ("tessera", "sdv", "torch", "mbi", "pandas", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[package] = metadata.version(package)
    return out
