"""`cart`: sequential classification and regression trees, the method of R's synthpop
(Nowok, Raab and Dibben, 2016), on scikit-learn (BSD-3-Clause). Tessera's default generator:
it scored best on fidelity and utility in our measurements at the lowest fit time, and it runs
no BUSL-licensed code (docs/synthetic.md, docs/licensing.md).

The columns are synthesised one after another, in the table's order. The first is drawn from
its own values. Each later column gets a tree fitted on the columns before it (a
classification tree for categories and booleans, a regression tree for numbers; leaves of at
least `min_samples_leaf` training rows): a synthetic row is sent down that tree using its
already synthesised values, and takes the value of a training row drawn at random from the leaf
it lands in. A number drawn this way is smoothed by Gaussian noise with `smoothing` times the
leaf's Silverman bandwidth, except values that are a spike of the column (a bound or a value
held by at least a tenth of the rows), which are kept as they are, and numbers never leave the
range the column took in training. A column with missing values first draws whether the value
is missing from a tree of its own.

A synthetic row equal to a row that appears once in the training rows (a replicated unique,
synthpop's `rm.replicated.uniques`) is left out and drawn again (`drop_unique_copies`, on by
default): such a row is the one copy that singles a patient out. Rows equal to training rows
that many patients share stay, as they would in any faithful sample.

Defaults (`min_samples_leaf=60`, `smoothing=1.5`, `drop_unique_copies=True`) were chosen by
measurement for privacy first: synthpop's own (leaves of 5, smoothing 1) gave synthetic rows
closer to the training rows than real unseen rows are on small clinical tables; leaves of 30
kept the distance to the closest record above the holdout's, but on small low-cardinality
tables (lifelines `rossi`: 345 training rows, mostly binary) copied more training rows than
real unseen rows repeat and let the membership attack reach an advantage of 0.2; leaves of 60
with replicated uniques left out pass every default gate there, for about 0.005 of fidelity
(docs/synthetic.md, `benchmarks/low_cardinality.py`).

The model keeps, per leaf, the training values it draws from, and the keys of the unique
training rows: it must never leave the node (only evaluated, approved synthetic rows do). It
is saved without pickles: each tree as its node arrays, walked here with numpy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synth.base import Synthesizer, TrainingProgress, log, register
from synth.metadata import Column
from synth.rows import canonical, row_keys
from tessera.errors import InvalidRequest

SPIKE_SHARE = 0.1  # a value held by at least this share of a column's rows is not smoothed
MIN_SAMPLES_LEAF = 60
UNIQUE_ROUNDS = 20


@dataclass
class Tree:
    """A fitted decision tree as arrays; `apply` gives each row's leaf."""

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    missing_left: np.ndarray

    @classmethod
    def from_sklearn(cls, model: Any) -> Tree:
        t = model.tree_
        return cls(
            t.children_left.astype(np.int64),
            t.children_right.astype(np.int64),
            t.feature.astype(np.int64),
            t.threshold.astype(float),
            np.asarray(t.missing_go_to_left, dtype=bool),
        )

    def apply(self, x: np.ndarray) -> np.ndarray:
        node = np.zeros(len(x), dtype=np.int64)
        active = self.left[node] >= 0
        rows = np.arange(len(x))
        while active.any():
            r, n = rows[active], node[active]
            value = x[r, self.feature[n]]
            go_left = np.where(np.isnan(value), self.missing_left[n], value <= self.threshold[n])
            node[r] = np.where(go_left, self.left[n], self.right[n])
            active = self.left[node] >= 0
        return node

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}.left": self.left,
            f"{prefix}.right": self.right,
            f"{prefix}.feature": self.feature,
            f"{prefix}.threshold": self.threshold,
            f"{prefix}.missing_left": self.missing_left,
        }

    @classmethod
    def from_arrays(cls, stored: Any, prefix: str) -> Tree:
        return cls(
            stored[f"{prefix}.left"],
            stored[f"{prefix}.right"],
            stored[f"{prefix}.feature"],
            stored[f"{prefix}.threshold"],
            stored[f"{prefix}.missing_left"],
        )


@dataclass
class Donors:
    """The training values of each leaf: `values[starts[i]:starts[i + 1]]` for `leaves[i]`,
    and for numbers each leaf's smoothing bandwidth."""

    leaves: np.ndarray
    starts: np.ndarray
    values: np.ndarray
    bandwidths: np.ndarray | None = None

    @classmethod
    def group(cls, leaf_of_row: np.ndarray, values: np.ndarray, smooth: bool) -> Donors:
        order = np.argsort(leaf_of_row, kind="stable")
        leaves, starts = np.unique(leaf_of_row[order], return_index=True)
        grouped = values[order]
        starts = np.append(starts, len(grouped))
        bandwidths = None
        if smooth:
            bandwidths = np.array(
                [_silverman(grouped[starts[i] : starts[i + 1]]) for i in range(len(leaves))]
            )
        return cls(leaves, starts, grouped, bandwidths)

    def draw(self, leaf_of_row: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Any]:
        """A donor value for each row from its leaf, and each row's bandwidth (or None)."""
        slot = np.searchsorted(self.leaves, leaf_of_row)
        slot = np.clip(slot, 0, len(self.leaves) - 1)
        low, high = self.starts[slot], self.starts[slot + 1]
        picks = low + np.floor(rng.random(len(leaf_of_row)) * (high - low)).astype(np.int64)
        bandwidth = None if self.bandwidths is None else self.bandwidths[slot]
        return self.values[picks], bandwidth


def _silverman(values: np.ndarray) -> float:
    x = values[~np.isnan(values)] if values.dtype.kind == "f" else values
    if len(x) < 2:
        return 0.0
    sd = float(np.std(x, ddof=1))
    iqr = float(np.subtract(*np.percentile(x, [75, 25])))
    spread = min(sd, iqr / 1.34) if iqr > 0 else sd
    return 0.9 * spread * len(x) ** -0.2


def encode_predictors(frame: pd.DataFrame, columns: list[Column]) -> np.ndarray:
    """The predictor matrix trees split on: numbers as they are, categories as their level
    codes, booleans as 0/1; missing as NaN (scikit-learn's trees route it)."""
    blocks = []
    for c in columns:
        s = frame[c.name]
        if c.is_numeric:
            blocks.append(s.astype(float).to_numpy())
        elif c.kind == "boolean":
            blocks.append(
                s.map(lambda v: np.nan if v is None or pd.isna(v) else float(bool(v))).to_numpy(
                    dtype=float
                )
            )
        else:
            assert c.levels is not None
            codes = pd.Categorical(s.astype(object), categories=list(c.levels)).codes.astype(float)
            codes[codes < 0] = np.nan
            blocks.append(codes)
    if not blocks:
        return np.zeros((len(frame), 0))
    return np.column_stack(blocks)


@register
class CART(Synthesizer):
    """Sequential CART synthesis (see the module doc)."""

    name = "cart"
    license = "Apache-2.0"
    param_names = ("min_samples_leaf", "smoothing", "max_depth", "drop_unique_copies")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        leaf = self.params.get("min_samples_leaf", MIN_SAMPLES_LEAF)
        if not isinstance(leaf, int) or isinstance(leaf, bool) or leaf < 1:
            raise InvalidRequest("min_samples_leaf must be a positive integer")
        depth = self.params.get("max_depth")
        if depth is not None and (not isinstance(depth, int) or depth < 1):
            raise InvalidRequest("max_depth must be a positive integer or absent")
        self.min_samples_leaf, self.max_depth = leaf, depth
        smoothing = self.params.get("smoothing", 1.5)
        if isinstance(smoothing, bool):
            smoothing = 1.0 if smoothing else 0.0
        if not isinstance(smoothing, int | float) or not 0 <= smoothing <= 10:
            raise InvalidRequest("smoothing is a bandwidth factor in [0, 10] (0: none)")
        self.smoothing = float(smoothing)
        drop = self.params.get("drop_unique_copies", True)
        if not isinstance(drop, bool):
            raise InvalidRequest("drop_unique_copies must be true or false")
        self.drop_unique_copies = drop
        self._steps: list[dict[str, Any]] = []
        self._unique_rows = np.zeros(0, dtype=np.uint64)  # keys of rows seen once in training

    # ---- training -------------------------------------------------------------------------

    def _fit(self, frame: pd.DataFrame) -> None:
        assert self.metadata is not None
        columns = list(self.metadata.columns)
        frame = frame.reset_index(drop=True)
        x_all = encode_predictors(frame, columns)
        steps = []
        for j, c in enumerate(columns):
            self.report(TrainingProgress("training", f"column {j + 1}/{len(columns)}: {c.name}"))
            steps.append(self._fit_column(c, frame[c.name], x_all[:, :j]))
        self._steps = steps
        if self.drop_unique_copies:
            keys, counts = np.unique(self._keys(frame), return_counts=True)
            self._unique_rows = keys[counts == 1]

    def _keys(self, frame: pd.DataFrame) -> np.ndarray:
        assert self.metadata is not None
        shaped = canonical(self.metadata.restore(frame), self.metadata)
        return np.asarray(row_keys(shaped, self.metadata), dtype=np.uint64)

    def _fit_column(self, c: Column, y: pd.Series, x: np.ndarray) -> dict[str, Any]:
        present = y.notna().to_numpy()
        values = self._values(c, y)
        step: dict[str, Any] = {"column": c.name, "missing": None, "tree": None}
        smooth = self.smoothing > 0 and c.is_numeric and _worth_smoothing(values[present])
        step["spikes"] = _spikes(values[present], c) if smooth else np.array([])
        if not present.all() and present.any():
            if x.shape[1]:
                tree = self._tree("classification", x, (~present).astype(int))
                step["missing"] = (tree, Donors.group(tree.apply(x), ~present, False))
            else:
                step["missing"] = (None, Donors.group(np.zeros(len(y)), ~present, False))
        rows = np.where(present)[0] if present.any() else np.arange(len(y))
        if x.shape[1]:
            kind = "regression" if c.is_numeric else "classification"
            target = values[rows] if c.is_numeric else _labels(values[rows])
            tree = self._tree(kind, x[rows], target)
            step["tree"] = tree
            leaves = tree.apply(x[rows])
        else:
            leaves = np.zeros(len(rows), dtype=np.int64)
        step["donors"] = Donors.group(leaves, values[rows], smooth)
        return step

    def _tree(self, kind: str, x: np.ndarray, y: np.ndarray) -> Tree:
        from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

        cls = DecisionTreeRegressor if kind == "regression" else DecisionTreeClassifier
        model = cls(
            min_samples_leaf=self.min_samples_leaf, max_depth=self.max_depth, random_state=0
        )
        return Tree.from_sklearn(model.fit(x, y))

    @staticmethod
    def _values(c: Column, y: pd.Series) -> np.ndarray:
        if c.is_numeric:
            return y.astype(float).to_numpy()
        if c.kind == "boolean":
            return y.map(lambda v: None if v is None or pd.isna(v) else bool(v)).to_numpy(
                dtype=object
            )
        return y.astype(object).to_numpy()

    # ---- sampling -------------------------------------------------------------------------

    def _sample(self, n: int, seed: int | None) -> pd.DataFrame:
        """`n` rows; with `drop_unique_copies`, drawn in rounds, leaving out every row equal (as
        released: rounded, clipped) to a row seen once in training, until `n` are kept or
        `UNIQUE_ROUNDS` rounds are drawn (then the last round's other rows fill the rest, and
        the release gates judge the copies)."""
        assert self.metadata is not None
        rng = np.random.default_rng(seed)
        if not len(self._unique_rows):
            return self._draw(n, rng)
        kept: list[pd.DataFrame] = []
        have = 0
        for _ in range(UNIQUE_ROUNDS):
            batch = self.metadata.restore(self._draw(max(n - have, 64) * 5 // 4, rng))
            copy = np.isin(self._keys(batch), self._unique_rows)
            kept.append(batch[~copy].iloc[: n - have])
            have += len(kept[-1])
            if have >= n:
                break
        else:
            log.warning("cart: %d of %d rows kept their replicated uniques", n - have, n)
            kept.append(batch[copy].iloc[: n - have])
        return pd.concat(kept, ignore_index=True)

    def _draw(self, n: int, rng: np.random.Generator) -> pd.DataFrame:
        assert self.metadata is not None
        columns = list(self.metadata.columns)
        out = pd.DataFrame(index=range(n))
        x = np.zeros((n, 0))
        for c, step in zip(columns, self._steps, strict=True):
            leaves = step["tree"].apply(x) if step["tree"] is not None else np.zeros(n, np.int64)
            values, bandwidth = step["donors"].draw(leaves, rng)
            if bandwidth is not None:
                values = _smoothed(
                    values.astype(float), bandwidth, step["spikes"], c, rng, self.smoothing
                )
            if step["missing"] is not None:
                tree, donors = step["missing"]
                missing_leaves = tree.apply(x) if tree is not None else np.zeros(n, np.int64)
                missing, _ = donors.draw(missing_leaves, rng)
                values = values.astype(object) if not c.is_numeric else values.astype(float)
                values[missing.astype(bool)] = np.nan if c.is_numeric else None
            out[c.name] = values
            x = np.column_stack([x, encode_predictors(out[[c.name]], [c])])
        return out

    # ---- state ----------------------------------------------------------------------------

    def _save_state(self, folder: Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        steps = []
        for j, step in enumerate(self._steps):
            prefix = f"s{j}"
            meta: dict[str, Any] = {"column": step["column"], "tree": step["tree"] is not None}
            if step["tree"] is not None:
                arrays |= step["tree"].arrays(f"{prefix}.tree")
            arrays |= _donor_arrays(step["donors"], f"{prefix}.donors")
            arrays[f"{prefix}.spikes"] = np.asarray(step["spikes"], dtype=float)
            if step["missing"] is not None:
                tree, donors = step["missing"]
                meta["missing"] = {"tree": tree is not None}
                if tree is not None:
                    arrays |= tree.arrays(f"{prefix}.missing.tree")
                arrays |= _donor_arrays(donors, f"{prefix}.missing.donors")
            steps.append(meta)
        arrays["unique_rows"] = self._unique_rows
        np.savez(folder / "trees.npz", **arrays)  # type: ignore[arg-type]
        (folder / "cart.json").write_text(json.dumps({"steps": steps}))

    def _load_state(self, folder: Path) -> None:
        assert self.metadata is not None
        meta = json.loads((folder / "cart.json").read_text())
        by_name = {c.name: c for c in self.metadata.columns}
        steps = []
        with np.load(folder / "trees.npz", allow_pickle=False) as stored:
            for j, raw in enumerate(meta["steps"]):
                prefix = f"s{j}"
                c = by_name[raw["column"]]
                step: dict[str, Any] = {"column": c.name, "missing": None}
                step["tree"] = Tree.from_arrays(stored, f"{prefix}.tree") if raw["tree"] else None
                step["donors"] = _donors_from(stored, f"{prefix}.donors", c)
                step["spikes"] = stored[f"{prefix}.spikes"]
                if raw.get("missing") is not None:
                    tree = (
                        Tree.from_arrays(stored, f"{prefix}.missing.tree")
                        if raw["missing"]["tree"]
                        else None
                    )
                    step["missing"] = (tree, _donors_from(stored, f"{prefix}.missing.donors", None))
                steps.append(step)
            if "unique_rows" in stored.files:
                self._unique_rows = stored["unique_rows"].astype(np.uint64)
        self._steps = steps


def _labels(values: np.ndarray) -> np.ndarray:
    return np.array(["" if v is None else str(v) for v in values], dtype=object)


def _worth_smoothing(values: np.ndarray) -> bool:
    return len(np.unique(values)) > 20


def _spikes(values: np.ndarray, c: Column) -> np.ndarray:
    """Values kept as drawn: the column's observed bounds and any value held by at least
    `SPIKE_SHARE` of its rows."""
    if not len(values):
        return np.array([])
    unique, counts = np.unique(values, return_counts=True)
    spikes = set(unique[counts >= SPIKE_SHARE * len(values)].tolist())
    spikes |= {float(values.min()), float(values.max())}
    return np.array(sorted(spikes), dtype=float)


def _smoothed(
    values: np.ndarray,
    bandwidth: np.ndarray,
    spikes: np.ndarray,
    c: Column,
    rng: np.random.Generator,
    factor: float,
) -> np.ndarray:
    keep = np.isin(values, spikes) | np.isnan(values)
    noisy = values + rng.normal(0.0, 1.0, len(values)) * bandwidth * factor
    out = np.where(keep, values, noisy)
    low = float(np.nanmin(spikes)) if len(spikes) else c.min
    high = float(np.nanmax(spikes)) if len(spikes) else c.max
    if low is not None or high is not None:
        out = np.clip(out, low, high)
    return out


def _donor_arrays(donors: Donors, prefix: str) -> dict[str, np.ndarray]:
    values = donors.values
    if values.dtype == object:  # categories and booleans: as text, "" for missing
        values = np.array(["" if v is None else str(v) for v in values], dtype=str)
    arrays = {
        f"{prefix}.leaves": donors.leaves,
        f"{prefix}.starts": donors.starts,
        f"{prefix}.values": values,
    }
    if donors.bandwidths is not None:
        arrays[f"{prefix}.bandwidths"] = donors.bandwidths
    return arrays


def _donors_from(stored: Any, prefix: str, c: Column | None) -> Donors:
    values = stored[f"{prefix}.values"]
    if c is not None and c.kind == "categorical":
        values = np.array([None if v == "" else str(v) for v in values], dtype=object)
    elif c is not None and c.kind == "boolean":
        values = np.array([None if v == "" else v == "True" for v in values], dtype=object)
    bandwidths = stored[f"{prefix}.bandwidths"] if f"{prefix}.bandwidths" in stored.files else None
    return Donors(stored[f"{prefix}.leaves"], stored[f"{prefix}.starts"], values, bandwidths)
