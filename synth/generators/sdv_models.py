"""The SDV generators: `gaussian_copula`, `ctgan` and `tvae` (SDV 2.x; BUSL-1.1, see
docs/licensing.md).

Metadata is never detected by SDV: each column's sdtype comes from Tessera's `TableMetadata`
(declared schema or detection), so an integer column with few values stays numerical, not
SDV's `ordinal`. CTGAN and TVAE train with torch on `device` (`cuda` when asked or, with
`auto`, when torch sees a CUDA device); their epochs and losses are reported as progress while
they train. SDV samples with an internal fixed seed; `sample(n, seed)` sets SDV's random state
from `seed` (a fresh random one when `seed` is None), so samples are reproducible per seed.

The state is SDV's own file, a cloudpickle (`pickled_state`): load it only from a file this
node wrote itself.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from synth.base import Synthesizer, TrainingProgress, register
from synth.metadata import TableMetadata
from tessera.errors import InvalidRequest

TABLE = "table"
_PATCH_LOCK = threading.Lock()  # the epoch hook patches a module global of ctgan


def sdv_metadata(metadata: TableMetadata) -> Any:
    """SDV's `Metadata` for one table, sdtypes taken from Tessera's metadata."""
    from sdv.metadata import Metadata

    columns: dict[str, dict[str, Any]] = {}
    for c in metadata.columns:
        if c.is_numeric:
            columns[c.name] = {"sdtype": "numerical"}
        elif c.kind == "boolean":
            columns[c.name] = {"sdtype": "boolean"}
        else:
            columns[c.name] = {"sdtype": "categorical"}
    return Metadata.load_from_dict(
        {"tables": {TABLE: {"columns": columns}}, "METADATA_SPEC_VERSION": "V1"}
    )


def _for_sdv(frame: pd.DataFrame, metadata: TableMetadata) -> pd.DataFrame:
    """The checked training frame in dtypes SDV's transformers take."""
    out: dict[str, pd.Series] = {}
    for c in metadata.columns:
        s = frame[c.name]
        if c.kind == "boolean":
            out[c.name] = s.astype("boolean")
        elif c.kind == "categorical":
            out[c.name] = s.astype(object)
        else:
            out[c.name] = s.astype(float)
    return pd.DataFrame(out).reset_index(drop=True)


class SDVSynthesizer(Synthesizer):
    """Shared by the three SDV generators: metadata, fit, seeded sampling, save and load."""

    license = "BUSL-1.1"
    pickled_state = True
    sdv_params: ClassVar[tuple[str, ...]] = ()  # passed to the SDV synthesizer as they are

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sdv: Any = None

    def _synthesizer(self, metadata: Any) -> Any:
        raise NotImplementedError

    def _fit(self, frame: pd.DataFrame) -> None:
        assert self.metadata is not None
        self._sdv = self._synthesizer(sdv_metadata(self.metadata))
        data = _for_sdv(frame, self.metadata)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._train(data)

    def _train(self, data: pd.DataFrame) -> None:
        self._sdv.fit({TABLE: data})

    def _sample(self, n: int, seed: int | None) -> pd.DataFrame:
        self._sdv.reset_sampling()  # RDT's transformers draw from their own seeded states too
        self._sdv._set_random_state(seed if seed is not None else secrets.randbits(31))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sampled = self._sdv.sample(n)
        if isinstance(sampled, dict):
            sampled = sampled[TABLE]
        return sampled

    def _save_state(self, folder: Path) -> None:
        self._sdv.save(str(folder / "sdv.pkl"))

    def _load_state(self, folder: Path) -> None:
        from sdv.utils import load_synthesizer

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._sdv = load_synthesizer(str(folder / "sdv.pkl"))
        if not isinstance(self._sdv, self._synthesizer_class()):
            raise InvalidRequest(f"the saved state is not a {self.name} model")
        model = getattr(self._sdv, "_model", None)
        if self.uses_device and model is not None and hasattr(model, "set_device"):
            import torch

            model.set_device(torch.device(self.device))

    def _synthesizer_class(self) -> Any:
        raise NotImplementedError


@register
class GaussianCopula(SDVSynthesizer):
    """SDV's Gaussian copula: each column's marginal, then a Gaussian dependence between them.

    `default_distribution` is SDV's own default, `beta`. `gaussian_kde` (kernel density
    marginals) fits skewed and multi-modal clinical columns better (fidelity 0.90 instead of
    0.86 on gbsg2, docs/synthetic.md) but samples in time quadratic in the training rows (14 s
    for 1 000 rows, 80 s for 3 000): ask for it on small tables only. `snap_to_observed=True`
    moves each synthetic number to the nearest value the column took in training: shapes
    improve a little on coarse grids, at a cost in distance to the closest record.
    """

    name = "gaussian_copula"
    param_names = ("default_distribution", "numerical_distributions", "snap_to_observed")

    def _synthesizer_class(self) -> Any:
        from sdv.single_table import GaussianCopulaSynthesizer

        return GaussianCopulaSynthesizer

    def _synthesizer(self, metadata: Any) -> Any:
        from sdv.single_table import GaussianCopulaSynthesizer

        distributions = self.params.get("numerical_distributions") or {}
        assert self.metadata is not None
        unknown = sorted(set(distributions) - set(self.metadata.names))
        if unknown:
            raise InvalidRequest(
                f"numerical_distributions names column(s) {', '.join(unknown)} not in the table"
            )
        return GaussianCopulaSynthesizer(
            metadata,
            default_distribution=self.params.get("default_distribution", "beta"),
            numerical_distributions=distributions or None,
        )

    def _fit(self, frame: pd.DataFrame) -> None:
        super()._fit(frame)
        self._observed = {
            c.name: np.unique(frame[c.name].dropna().to_numpy(dtype=float))
            for c in self.metadata.columns  # type: ignore[union-attr]
            if c.is_numeric
        }

    def _sample(self, n: int, seed: int | None) -> pd.DataFrame:
        sampled = super()._sample(n, seed)
        if self.params.get("snap_to_observed"):
            for name, values in getattr(self, "_observed", {}).items():
                if len(values):
                    sampled[name] = _snap(sampled[name].to_numpy(dtype=float), values)
        return sampled

    def _save_state(self, folder: Path) -> None:
        super()._save_state(folder)
        if self.params.get("snap_to_observed"):
            np.savez(folder / "observed.npz", **getattr(self, "_observed", {}))

    def _load_state(self, folder: Path) -> None:
        super()._load_state(folder)
        path = folder / "observed.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as stored:
                self._observed = {k: stored[k] for k in stored.files}


def _snap(values: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Each value moved to the nearest of `observed` (sorted); missing stays missing."""
    out = values.copy()
    present = ~np.isnan(values)
    x = values[present]
    pos = np.clip(np.searchsorted(observed, x), 1, max(len(observed) - 1, 1))
    lo = observed[np.minimum(pos - 1, len(observed) - 1)]
    hi = observed[np.minimum(pos, len(observed) - 1)]
    out[present] = np.where(np.abs(x - lo) <= np.abs(hi - x), lo, hi)
    return out


class _TorchSDV(SDVSynthesizer):
    """CTGAN and TVAE: torch models trained in epochs on `device`, with progress per epoch."""

    uses_device = True
    epochs_default: ClassVar[int] = 300
    module: ClassVar[str]  # the ctgan module whose training loop iterates the epochs

    def _kwargs(self) -> dict[str, Any]:
        kwargs = {k: v for k, v in self.params.items() if k in self.sdv_params}
        kwargs.setdefault("epochs", self.epochs_default)
        kwargs["enable_gpu"] = self.device == "cuda"
        kwargs["verbose"] = True  # the epoch hook needs the loop's progress calls
        return kwargs

    def _train(self, data: pd.DataFrame) -> None:
        epochs = int(self._kwargs()["epochs"])
        with self._epoch_hook(epochs):
            self._sdv.fit({TABLE: data})

    @contextlib.contextmanager
    def _epoch_hook(self, epochs: int) -> Iterator[None]:
        """Report each epoch and its loss: ctgan's training loop iterates its epochs through
        `tqdm`, which is swapped, while this generator trains, for an iterator that reports."""
        import importlib

        module = importlib.import_module(self.module)
        owner = self

        class EpochReporter:
            def __init__(self, iterable: Any, *args: Any, **kwargs: Any) -> None:
                self.iterable = iterable

            def __iter__(self) -> Iterator[Any]:
                for i in self.iterable:
                    yield i
                    owner._report_epoch(i + 1, epochs)

            def set_description(self, *args: Any, **kwargs: Any) -> None:
                pass

        with _PATCH_LOCK:
            original = getattr(module, "tqdm")  # noqa: B009 -- ctgan's module global
            setattr(module, "tqdm", EpochReporter)  # noqa: B010
            try:
                yield
            finally:
                setattr(module, "tqdm", original)  # noqa: B010

    def _report_epoch(self, epoch: int, epochs: int) -> None:
        model = getattr(self._sdv, "_model", None)
        losses = getattr(model, "loss_values", None)
        loss = None
        if isinstance(losses, pd.DataFrame) and len(losses):
            last = losses[losses["Epoch"] == losses["Epoch"].max()]
            column = "Generator Loss" if "Generator Loss" in last else "Loss"
            with contextlib.suppress(Exception):
                loss = float(last[column].astype(float).mean())
        self.report(TrainingProgress("training", "", epoch=epoch, epochs=epochs, loss=loss))


@register
class CTGAN(_TorchSDV):
    """SDV's CTGAN: a conditional GAN over mode-normalised numbers and one-hot categories."""

    name = "ctgan"
    module = "ctgan.synthesizers.ctgan"
    sdv_params = (
        "epochs",
        "batch_size",
        "embedding_dim",
        "generator_dim",
        "discriminator_dim",
        "generator_lr",
        "discriminator_lr",
        "discriminator_steps",
        "pac",
    )
    param_names = sdv_params

    def _synthesizer_class(self) -> Any:
        from sdv.single_table import CTGANSynthesizer

        return CTGANSynthesizer

    def _synthesizer(self, metadata: Any) -> Any:
        from sdv.single_table import CTGANSynthesizer

        return CTGANSynthesizer(metadata, **self._kwargs())


@register
class TVAE(_TorchSDV):
    """SDV's TVAE: a variational autoencoder over the same encoding as CTGAN."""

    name = "tvae"
    module = "ctgan.synthesizers.tvae"
    sdv_params = (
        "epochs",
        "batch_size",
        "embedding_dim",
        "compress_dims",
        "decompress_dims",
        "l2scale",
        "loss_factor",
    )
    param_names = sdv_params

    def _synthesizer_class(self) -> Any:
        from sdv.single_table import TVAESynthesizer

        return TVAESynthesizer

    def _synthesizer(self, metadata: Any) -> Any:
        from sdv.single_table import TVAESynthesizer

        return TVAESynthesizer(metadata, **self._kwargs())
