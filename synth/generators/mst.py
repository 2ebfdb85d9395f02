"""`mst`: a differentially private generator, MST (McKenna, Miklau and Sheldon, 2021) on the
marginal machinery of `mbi` 2.x (private-pgm; Apache-2.0).

What it does with (ε, δ), on the add/remove-one-record relation, in zCDP (`synth.accounting`):

1. **Public domain.** Every column needs a declared domain: categorical levels, numeric
   bounds (`declared` in the metadata; a schema registered at the node gives it). Nothing about
   the domain is read off the rows. Each numeric column is cut into a fine grid of equal-width
   cells over its bounds (one cell per integer when there are no more than that), and every
   column has one more cell for a missing value.
2. **One-way marginals** (`shares[0]` of ρ, split equally over the columns): each column's
   fine histogram plus Gaussian noise (L2 sensitivity 1). The column with the fewest cells is
   measured first; its noisy total, a noisy row count, sizes the other grids: up to
   `fine_bins` cells, fewer when a cell would average less than half its noise scale
   (`grid_cells`; the choice is post-processing, and zCDP composes adaptively). With 549 rows
   at ε = 1, 32 cells instead of 64 raise gbsg2's fidelity from 0.77 to 0.80.
3. **Compression** (post-processing of step 2): consecutive fine cells of a numeric column are
   merged into at most `bins` coarse cells of about equal noisy mass, each at least three noise
   scales; categorical levels with a noisy count under three noise scales are merged into one
   rare group (as in MST); a missing cell whose noisy count is under three noise scales is
   dropped (the column is then never missing in the synthetic rows).
4. **Selection** (`shares[1]` of ρ): a maximum spanning tree over the columns, built edge by
   edge with the exponential mechanism, each edge's utility the L1 distance between the pair's
   coarse two-way counts and what the independent one-way model predicts (sensitivity 1).
5. **Two-way marginals** (`shares[2]` of ρ, split equally over the tree's edges): each
   selected pair's coarse histogram plus Gaussian noise.
6. **Estimation** (post-processing): `mbi`'s mirror descent fits a graphical model to every
   noisy measurement; sampling draws coarse cells from it, a fine cell within each coarse cell
   from the noisy fine counts, and a value uniformly within the fine cell.

The ε reported is converted from the ρ actually spent (every spend is kept in `accounting`),
and equals the ε asked for. The model's state holds only noisy, post-processed quantities (the
graphical model, the compression maps, the noisy fine counts): no row and no exact count.

Not covered by ε: the holdout split and the evaluation report compare synthetic rows with real
ones (docs/synthetic.md says so); the dtypes of the output follow the declared schema and the
noisy missing-value estimate, never the rows.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from synth.accounting import ZCDPAccountant, epsilon_for, gaussian_sigma, rho_for
from synth.base import Synthesizer, TrainingProgress, register
from synth.metadata import MAX_DECIMALS, Column, TableMetadata
from tessera.errors import InvalidRequest

DEFAULT_DELTA = 1e-6
DEFAULT_SHARES = (0.5, 0.1, 0.4)  # one-way marginals, selection, two-way marginals
THRESHOLD_SIGMAS = 3.0  # a cell counts as present when its noisy count reaches this many σ
SELECTIONS = ("exponential", "measured")


@dataclass(frozen=True)
class Request:
    """One noisy histogram to measure: each row's cell, the number of cells, the ρ to spend."""

    label: str
    codes: np.ndarray
    cells: int
    rho: float


class Measurer(Protocol):
    """What adds the noise to MST's histograms and keeps the accounts (`MST.measure`)."""

    accounting: ZCDPAccountant

    def opened_sd(self, rho: float) -> float:
        """The standard deviation of the noise in a measurement that spends `rho`."""

    async def measure(self, requests: list[Request]) -> list[tuple[np.ndarray, float]]:
        """Each request's noisy counts and their noise's standard deviation."""


class LocalMeasurer:
    """One table, the Gaussian mechanism: exact counts plus N(0, σ²) per cell."""

    def __init__(self, accounting: ZCDPAccountant, rng: np.random.Generator) -> None:
        self.accounting = accounting
        self.rng = rng

    def opened_sd(self, rho: float) -> float:
        return gaussian_sigma(rho)

    async def measure(self, requests: list[Request]) -> list[tuple[np.ndarray, float]]:
        out = []
        for r in requests:
            sigma = self.accounting.gaussian(r.label, r.rho)
            counts = np.bincount(r.codes, minlength=r.cells).astype(float)
            out.append((counts + self.rng.normal(0, sigma, r.cells), sigma))
        return out


@dataclass
class PairMeasurement:
    """A noisy two-way table of a pair, over the groups its columns' coarse cells fall in."""

    pair: tuple[str, str]
    noisy: np.ndarray
    sd: float
    groups_a: np.ndarray
    groups_b: np.ndarray

    def to_json(self) -> dict[str, Any]:
        return {
            "pair": list(self.pair),
            "noisy": self.noisy.tolist(),
            "sd": self.sd,
            "groups_a": self.groups_a.tolist(),
            "groups_b": self.groups_b.tolist(),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PairMeasurement:
        return cls(
            (raw["pair"][0], raw["pair"][1]),
            np.asarray(raw["noisy"], dtype=float),
            float(raw["sd"]),
            np.asarray(raw["groups_a"], dtype=np.int64),
            np.asarray(raw["groups_b"], dtype=np.int64),
        )


@dataclass
class Measurements:
    """Everything MST measured (noisy, post-processed): what the model is fitted on. Holds no
    row and no exact count, so it may leave the parties that measured it."""

    encodings: list[Encoding]
    one_way: dict[str, tuple[np.ndarray, float]]  # coarse noisy counts and their noise sd
    two_way: list[PairMeasurement]
    edges: list[tuple[str, str]]
    accounting: ZCDPAccountant

    def to_json(self) -> dict[str, Any]:
        return {
            "encodings": [e.to_json() for e in self.encodings],
            "one_way": {k: [v.tolist(), sd] for k, (v, sd) in self.one_way.items()},
            "two_way": [m.to_json() for m in self.two_way],
            "edges": [list(e) for e in self.edges],
            "accounting": self.accounting.to_json(),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any], metadata: TableMetadata) -> Measurements:
        by_name = {c.name: c for c in metadata.columns}
        return cls(
            [_encoding_from_json(e, by_name) for e in raw["encodings"]],
            {k: (np.asarray(v, dtype=float), float(sd)) for k, (v, sd) in raw["one_way"].items()},
            [PairMeasurement.from_json(m) for m in raw["two_way"]],
            [(a, b) for a, b in raw["edges"]],
            ZCDPAccountant.from_json(raw["accounting"]),
        )


def drive(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never waits on anything (the local measurer's): no event loop."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the measurement waited on something outside MPC")


@dataclass
class Encoding:
    """How one column maps to fine cells, and fine cells to the model's coarse cells.

    A numeric column's fine cells are, in order: a cell for exactly its lower bound (when
    `points`), the cells between `edges`, a cell for exactly its upper bound (when `points`);
    every column's last fine cell is for a missing value. Clinical columns often pile up at a
    bound (no visits, no dose): a point cell keeps that mass where it is instead of smearing it
    over the first cell.
    """

    column: Column
    fine: int  # number of fine cells, the missing cell last
    edges: np.ndarray | None = None  # numeric: the interior grid
    points: bool = False  # numeric: exact-bound cells at both ends
    coarse_of_fine: np.ndarray | None = None  # fine cell -> coarse cell (-1: dropped)
    fine_weights: np.ndarray | None = None  # noisy fine counts, projected (`norm_sub`)

    @property
    def coarse(self) -> int:
        assert self.coarse_of_fine is not None
        return int(self.coarse_of_fine.max()) + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "column": self.column.name,
            "fine": self.fine,
            "edges": None if self.edges is None else self.edges.tolist(),
            "points": self.points,
            "coarse_of_fine": None if self.coarse_of_fine is None else self.coarse_of_fine.tolist(),
            "fine_weights": None if self.fine_weights is None else self.fine_weights.tolist(),
        }


def fine_grid(column: Column, fine_bins: int) -> Encoding:
    """A column's public fine grid (from its declared domain only)."""
    if column.kind == "categorical":
        assert column.levels is not None
        return Encoding(column, len(column.levels) + 1)
    if column.kind == "boolean":
        return Encoding(column, 3)
    assert column.min is not None and column.max is not None
    lo, hi = float(column.min), float(column.max)
    if column.kind == "integer" and hi - lo + 1 <= fine_bins:
        edges = np.arange(math.ceil(lo) - 0.5, math.floor(hi) + 1.0, 1.0)
        return Encoding(column, len(edges), edges)
    if hi <= lo:
        edges = np.array([lo - 0.5, lo + 0.5])
        return Encoding(column, len(edges), edges)
    edges = np.linspace(lo, hi, fine_bins + 1)
    return Encoding(column, len(edges) + 2, edges, points=True)


def grid_cells(n_hat: float, sigma: float, fine_bins: int) -> int:
    """How many equal-width fine cells a numeric column gets: the largest power of two at
    which a cell would average at least half a noise scale if the rows filled the declared
    range (`n_hat` is a noisy row count), between 8 and `fine_bins`. A finer grid only adds
    noise: with few rows and a small epsilon most fine cells hold less than their noise."""
    useful = 2.0 * n_hat / max(sigma, 1e-12)
    cells = 2 ** math.floor(math.log2(max(useful, 1.0)))
    return int(min(max(cells, min(8, fine_bins)), fine_bins))


def fine_codes(encoding: Encoding, values: pd.Series) -> np.ndarray:
    """Each value's fine cell (the last cell for a missing value)."""
    c = encoding.column
    missing = encoding.fine - 1
    if c.kind == "categorical":
        assert c.levels is not None
        codes = pd.Categorical(values.astype(object), categories=list(c.levels)).codes
        return np.where(codes < 0, missing, codes).astype(np.int64)
    if c.kind == "boolean":
        mapped = values.map(lambda v: -1 if v is None or pd.isna(v) else int(bool(v)))
        codes = mapped.to_numpy(dtype=np.int64)
        return np.where(codes < 0, missing, codes)
    assert encoding.edges is not None
    x = values.astype(float).to_numpy()
    interior = len(encoding.edges) - 1
    cells = np.clip(np.searchsorted(encoding.edges, x, side="right") - 1, 0, interior - 1)
    if encoding.points:
        cells = cells + 1
        cells = np.where(x == encoding.edges[0], 0, cells)
        cells = np.where(x == encoding.edges[-1], interior + 1, cells)
    return np.where(np.isnan(x), missing, cells).astype(np.int64)


def norm_sub(noisy: np.ndarray) -> np.ndarray:
    """The noisy counts projected onto non-negative vectors with the same total: subtract the
    one constant that keeps the sum once negatives are cut to zero (post-processing; clipping
    alone would add about 0.4 noise scales of mass to every empty cell)."""
    total = float(noisy.sum())
    if total <= 0:
        return np.zeros_like(noisy, dtype=float)
    ordered = np.sort(noisy)[::-1]
    cumulative = np.cumsum(ordered)
    k = np.arange(1, len(ordered) + 1)
    shifts = (cumulative - total) / k
    valid = ordered - shifts > 0
    shift = shifts[np.where(valid)[0][-1]]
    return np.clip(noisy - shift, 0, None)


def compress(encoding: Encoding, noisy: np.ndarray, sigma: float, bins: int) -> np.ndarray:
    """The fine -> coarse map (post-processing of the noisy one-way counts; see the module
    doc). A dropped cell maps to -1."""
    c = encoding.column
    threshold = THRESHOLD_SIGMAS * sigma
    value_cells = encoding.fine - 1
    mapping = np.full(encoding.fine, -1, dtype=np.int64)
    mass = norm_sub(noisy)[:value_cells]
    if c.is_numeric:
        total = float(mass.sum())
        groups = max(1, min(bins, int(total // max(threshold, 1e-9))))
        target = total / groups if groups else total
        group, acc = 0, 0.0
        for i in range(value_cells):
            mapping[i] = group
            acc += mass[i]
            if acc >= target and group < groups - 1 and i < value_cells - 1:
                group, acc = group + 1, 0.0
    else:
        kept = [i for i in range(value_cells) if noisy[i] >= threshold]
        rare = [i for i in range(value_cells) if noisy[i] < threshold]
        for k, i in enumerate(kept):
            mapping[i] = k
        if rare:
            mapping[rare] = len(kept)
    if noisy[-1] >= threshold:
        mapping[-1] = mapping.max() + 1
    return mapping


@register
class MST(Synthesizer):
    """Differentially private synthesis by MST on `mbi` (see the module doc)."""

    name = "mst"
    license = "Apache-2.0"
    differentially_private = True
    param_names = ("epsilon", "delta", "bins", "fine_bins", "shares", "iters", "selection")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "epsilon" not in self.params:
            raise InvalidRequest("generator 'mst' is differentially private: give epsilon")
        self.target_epsilon = _positive(self.params["epsilon"], "epsilon")
        self.target_delta = float(self.params.get("delta") or DEFAULT_DELTA)
        if not 0 < self.target_delta < 1e-3:
            raise InvalidRequest("delta must lie in (0, 0.001)")
        self.bins = int(self.params.get("bins", 16))
        self.fine_bins = int(self.params.get("fine_bins", 64))
        if not 2 <= self.bins <= self.fine_bins <= 4096:
            raise InvalidRequest("mst needs 2 <= bins <= fine_bins <= 4096")
        shares = tuple(float(s) for s in self.params.get("shares", DEFAULT_SHARES))
        if len(shares) != 3 or min(shares) <= 0 or not math.isclose(sum(shares), 1.0):
            raise InvalidRequest("shares are three positive fractions of rho summing to 1")
        self.shares = shares
        self.iters = int(self.params.get("iters", 1000))
        self.selection = str(self.params.get("selection", "exponential"))
        if self.selection not in SELECTIONS:
            raise InvalidRequest(f"selection is one of {', '.join(SELECTIONS)}")
        self.encodings: list[Encoding] = []
        self.accounting: ZCDPAccountant | None = None
        self.cliques: list[tuple[str, ...]] = []
        self._model: Any = None
        self.parties: int | None = None  # pooled (`synth.pooled`): the parties it was measured by
        self.default_seed: int | None = None  # pooled: the seed `sample` uses when given none
        self.measurement: dict[str, Any] | None = None  # pooled: cells, rounds, MPC seconds

    # ---- training -------------------------------------------------------------------------

    def _fit(self, frame: pd.DataFrame) -> None:
        self.check_declared()
        rng = np.random.default_rng()  # DP noise: fresh OS entropy, never a fixed seed
        accounting = ZCDPAccountant(rho_for(self.target_epsilon, self.target_delta))
        measured = drive(self.measure(frame, LocalMeasurer(accounting, rng), rng))
        self.fit_measurements(measured)

    def check_declared(self) -> None:
        """Refuse a column without a declared domain (nothing of it is read off the rows)."""
        assert self.metadata is not None
        undeclared = [c.name for c in self.metadata.columns if not c.declared]
        if undeclared:
            raise InvalidRequest(
                "mst needs a declared domain (bounds or levels) for every column, so that "
                f"nothing of it is read off the rows; not declared: {', '.join(undeclared)} "
                "(give the dataset schema, e.g. --schema)",
                {"columns": undeclared},
            )

    async def measure(
        self, frame: pd.DataFrame, measurer: Measurer, rng: np.random.Generator | None = None
    ) -> Measurements:
        """Every noisy measurement MST makes of `frame` (steps 1 to 5 of the module doc).

        The `measurer` adds the noise and keeps the accounts: `LocalMeasurer` on one table;
        `synth.pooled`'s on secret-shared sums over every party's table, where every party
        runs this same code on its own rows and opens the same noisy sums, so every decision
        taken between measurements (grids, compression, groups, the tree) is the same at
        every party. Selection is by the exponential mechanism on exact scores
        (`selection="exponential"`, one table only) or by post-processing noisy pair tables
        (`"measured"`)."""
        assert self.metadata is not None
        accounting = measurer.accounting
        rho = accounting.budget
        columns = list(self.metadata.columns)
        d = len(columns)
        pair_count = d - 1
        one_way = rho if pair_count == 0 else rho * self.shares[0]

        self.report(TrainingProgress("measuring", f"{d} one-way marginals"))
        order = sorted(columns, key=lambda c: fine_grid(c, self.fine_bins).fine)
        codes: dict[str, np.ndarray] = {}
        measured: dict[str, tuple[Encoding, np.ndarray, float]] = {}
        # The column with the fewest public cells first: its noisy total is the row count
        # that sizes the other columns' grids (post-processing; zCDP composes adaptively).
        n_hat: float | None = None
        for batch in ([order[0]], order[1:]):
            requests = []
            for c in batch:
                spread = measurer.opened_sd(one_way / d)
                cells_cap = (
                    self.fine_bins if n_hat is None else grid_cells(n_hat, spread, self.fine_bins)
                )
                encoding = fine_grid(c, cells_cap)
                codes[c.name] = fine_codes(encoding, frame[c.name])
                requests.append(
                    Request(f"one-way marginal {c.name}", codes[c.name], encoding.fine, one_way / d)
                )
                measured[c.name] = (encoding, np.empty(0), spread)
            for c, (noisy, sd) in zip(batch, await measurer.measure(requests), strict=True):
                encoding = measured[c.name][0]
                if n_hat is None:
                    n_hat = max(float(noisy.sum()), 1.0)
                encoding.coarse_of_fine = compress(encoding, noisy, sd, self.bins)
                encoding.fine_weights = norm_sub(noisy)
                measured[c.name] = (encoding, noisy, sd)
        encodings = [measured[c.name][0] for c in columns]

        coarse = {e.column.name: _coarse_codes(e, codes[e.column.name]) for e in encodings}
        one_way_coarse = {}
        for c in columns:
            e, noisy, sd = measured[c.name]
            assert e.coarse_of_fine is not None
            keep = e.coarse_of_fine >= 0
            vector = np.bincount(e.coarse_of_fine[keep], weights=noisy[keep], minlength=e.coarse)
            width = max(1.0, float(keep.sum()) / e.coarse)
            one_way_coarse[c.name] = (vector, sd * math.sqrt(width))

        edges: list[tuple[str, str]] = []
        two_way: list[PairMeasurement] = []
        if pair_count:
            n_hat = float(np.median([max(v.sum(), 1.0) for v, _ in one_way_coarse.values()]))
            self.report(TrainingProgress("selecting", f"a tree of {pair_count} pairs"))
            if self.selection == "exponential":
                if rng is None:
                    raise ValueError("selection by the exponential mechanism needs an rng")
                groups = self._groups(
                    one_way_coarse, n_hat, measurer.opened_sd(rho * self.shares[2] / pair_count)
                )
                edges = self._select(
                    coarse, groups, one_way_coarse, n_hat, rho * self.shares[1], accounting, rng
                )
            else:
                edges, tables = await self._select_measured(
                    coarse, one_way_coarse, n_hat, rho * self.shares[1], measurer
                )
                two_way += [t for t in tables if t.pair in edges]
            self.report(TrainingProgress("measuring", f"{len(edges)} two-way marginals"))
            share = rho * self.shares[2] / len(edges)
            groups = self._groups(one_way_coarse, n_hat, measurer.opened_sd(share))
            requests = [
                _pair_request(f"two-way marginal {a} x {b}", coarse, groups, a, b, share)
                for a, b in edges
            ]
            for (a, b), (noisy, sd) in zip(edges, await measurer.measure(requests), strict=True):
                shape = (int(groups[a].max()) + 1, int(groups[b].max()) + 1)
                two_way.append(
                    PairMeasurement((a, b), noisy.reshape(shape), sd, groups[a], groups[b])
                )
        return Measurements(encodings, one_way_coarse, two_way, edges, accounting)

    def _groups(
        self, one_way: dict[str, tuple[np.ndarray, float]], n_hat: float, spread: float
    ) -> dict[str, np.ndarray]:
        cells = _pair_cells(n_hat, spread, self.bins)
        return {name: pair_groups(vector, cells) for name, (vector, _) in one_way.items()}

    async def _select_measured(
        self,
        coarse: dict[str, np.ndarray],
        one_way: dict[str, tuple[np.ndarray, float]],
        n_hat: float,
        rho: float,
        measurer: Measurer,
    ) -> tuple[list[tuple[str, str]], list[PairMeasurement]]:
        """The spanning tree from noisy tables of every pair (Gaussian, `rho` split equally),
        chosen by post-processing: each pair scores the L1 distance between its noisy table and
        the independent model's prediction, less what the noise alone adds on average; the
        tree is the maximum spanning tree of those scores (Kruskal). The noisy tables are
        measurements like any other: the tree's own are used again in estimation."""
        names = list(coarse)
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        share = rho / len(pairs)
        spread = measurer.opened_sd(share)
        groups = self._groups(one_way, n_hat, spread)
        probabilities = _group_shares(one_way, groups)
        requests = [
            _pair_request(f"selection table {a} x {b}", coarse, groups, a, b, share)
            for a, b in pairs
        ]
        tables, scores = [], {}
        for (a, b), (noisy, sd) in zip(pairs, await measurer.measure(requests), strict=True):
            shape = (len(probabilities[a]), len(probabilities[b]))
            table = noisy.reshape(shape)
            predicted = n_hat * np.outer(probabilities[a], probabilities[b])
            scores[(a, b)] = (
                float(np.abs(table - predicted).sum()) - sd * math.sqrt(2 / math.pi) * table.size
            )
            tables.append(PairMeasurement((a, b), table, sd, groups[a], groups[b]))
        forest = _Forest(names)
        chosen = [pair for pair in sorted(pairs, key=lambda e: -scores[e]) if forest.join(*pair)]
        return chosen, tables

    def fit_measurements(self, measured: Measurements) -> None:
        """Step 6: the graphical model from every noisy measurement (post-processing)."""
        assert self.metadata is not None
        self.report(TrainingProgress("estimating", f"graphical model, {self.iters} iterations"))
        sizes = {e.column.name: e.coarse for e in measured.encodings}
        two_way = [
            (m.pair, m.noisy, m.sd, _aggregation(m.groups_a, m.groups_b)) for m in measured.two_way
        ]
        self._model = _estimate(sizes, measured.one_way, two_way, self.iters)
        self.encodings = measured.encodings
        self.accounting = measured.accounting
        self.cliques = list(measured.edges)
        self.epsilon = epsilon_for(measured.accounting.spent, self.target_delta)
        self.delta = self.target_delta
        self.metadata = _dp_decimals(_dp_nullability(self.metadata, measured.encodings))

    def _select(
        self,
        coarse: dict[str, np.ndarray],
        groups: dict[str, np.ndarray],
        one_way: dict[str, tuple[np.ndarray, float]],
        n_hat: float,
        rho: float,
        accounting: ZCDPAccountant,
        rng: np.random.Generator,
    ) -> list[tuple[str, str]]:
        """The spanning tree, one edge per exponential-mechanism draw (see the module doc)."""
        names = list(coarse)
        probabilities = _group_shares(one_way, groups)
        scores = {}
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                counts = _joint(groups[a][coarse[a]], groups[b][coarse[b]], groups[a], groups[b])
                predicted = n_hat * np.outer(probabilities[a], probabilities[b])
                scores[(a, b)] = float(np.abs(counts - predicted).sum())
        forest = _Forest(names)
        chosen: list[tuple[str, str]] = []
        rounds = len(names) - 1
        for r in range(rounds):
            candidates = [e for e in scores if forest.root(e[0]) != forest.root(e[1])]
            epsilon = accounting.exponential(f"select pair {r + 1} of {rounds}", rho / rounds)
            utility = np.array([scores[e] for e in candidates])
            logits = epsilon * (utility - utility.max()) / 2.0  # sensitivity 1
            weights = np.exp(logits)
            pick = candidates[int(rng.choice(len(candidates), p=weights / weights.sum()))]
            chosen.append(pick)
            forest.join(*pick)
        return chosen

    # ---- sampling -------------------------------------------------------------------------

    def _sample(self, n: int, seed: int | None) -> pd.DataFrame:
        if seed is None:
            seed = self.default_seed
        state = np.random.get_state()
        try:
            np.random.seed(seed if seed is not None else np.random.default_rng().integers(2**31))
            synthetic = self._model.synthetic_data(rows=n)
            rng = np.random.default_rng(np.random.randint(2**31))
        finally:
            np.random.set_state(state)
        out = {}
        for e in self.encodings:
            out[e.column.name] = _decode(e, np.asarray(synthetic.data[e.column.name]), rng)
        return pd.DataFrame(out)

    # ---- state ----------------------------------------------------------------------------

    def _save_state(self, folder: Path) -> None:
        assert self.accounting is not None
        model = self._model
        tables = {
            "|".join(clique): np.asarray(model.potentials.tables[clique].values)
            for clique in model.potentials.cliques
        }
        np.savez(folder / "potentials.npz", **tables)  # type: ignore[arg-type]
        state = {
            "domain": {
                a: int(s) for a, s in zip(model.domain.attributes, model.domain.shape, strict=False)
            },
            "cliques": [list(c) for c in model.potentials.cliques],
            "total": float(model.total),
            "edges": [list(e) for e in self.cliques],
            "encodings": [e.to_json() for e in self.encodings],
            "accounting": self.accounting.to_json(),
            "parties": self.parties,
            "default_seed": self.default_seed,
        }
        (folder / "mst.json").write_text(json.dumps(state))

    def _load_state(self, folder: Path) -> None:
        assert self.metadata is not None
        state = json.loads((folder / "mst.json").read_text())
        by_name = {c.name: c for c in self.metadata.columns}
        self.encodings = [_encoding_from_json(raw, by_name) for raw in state["encodings"]]
        self.cliques = [tuple(e) for e in state["edges"]]
        self.accounting = ZCDPAccountant.from_json(state["accounting"])
        self.parties = state.get("parties")
        self.default_seed = state.get("default_seed")
        with np.load(folder / "potentials.npz", allow_pickle=False) as stored:
            tables = {tuple(k.split("|")): stored[k] for k in stored.files}
        self._model = _markov_random_field(
            state["domain"], state["cliques"], tables, state["total"]
        )


# ---- helpers ------------------------------------------------------------------------------


def _positive(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{name} must be a number") from None
    if not (number > 0 and math.isfinite(number)):
        raise InvalidRequest(f"{name} must be positive")
    return number


def _group_shares(
    one_way: dict[str, tuple[np.ndarray, float]], groups: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Each column's noisy share of the rows in each of its groups (post-processing): what
    the independent model predicts a pair's table from."""
    shares = {}
    for name, (vector, _) in one_way.items():
        grouped = np.bincount(groups[name], weights=norm_sub(vector))
        shares[name] = grouped / max(grouped.sum(), 1e-12)
    return shares


class _Forest:
    """The columns joined so far by a spanning tree's edges (union-find)."""

    def __init__(self, names: list[str]) -> None:
        self.parent = {name: name for name in names}

    def root(self, x: str) -> str:
        while self.parent[x] != x:
            x = self.parent[x]
        return x

    def join(self, a: str, b: str) -> bool:
        """Join the trees of `a` and `b`; False when they already are one (a cycle)."""
        ra, rb = self.root(a), self.root(b)
        if ra == rb:
            return False
        self.parent[ra] = rb
        return True


def _encoding_from_json(raw: dict[str, Any], by_name: dict[str, Column]) -> Encoding:
    return Encoding(
        by_name[raw["column"]],
        raw["fine"],
        None if raw["edges"] is None else np.asarray(raw["edges"], dtype=float),
        bool(raw.get("points", False)),
        np.asarray(raw["coarse_of_fine"], dtype=np.int64),
        np.asarray(raw["fine_weights"], dtype=float),
    )


def _pair_request(
    label: str,
    coarse: dict[str, np.ndarray],
    groups: dict[str, np.ndarray],
    a: str,
    b: str,
    rho: float,
) -> Request:
    """The histogram of a pair's grouped coarse cells, as one flat vector (row-major)."""
    size_b = int(groups[b].max()) + 1
    size = (int(groups[a].max()) + 1) * size_b
    return Request(label, groups[a][coarse[a]] * size_b + groups[b][coarse[b]], size, rho)


def _coarse_codes(encoding: Encoding, cells: np.ndarray) -> np.ndarray:
    """Fine cells to coarse ones; a row in a dropped cell goes to the nearest kept cell of its
    column (a dropped missing cell: the most likely coarse cell), as the model has no cell for
    it."""
    assert encoding.coarse_of_fine is not None
    mapping = encoding.coarse_of_fine.copy()
    kept = np.where(mapping >= 0)[0]
    for i in np.where(mapping < 0)[0]:
        if i == encoding.fine - 1 or not encoding.column.is_numeric:
            assert encoding.fine_weights is not None
            weights = np.bincount(
                mapping[kept], weights=encoding.fine_weights[kept], minlength=encoding.coarse
            )
            mapping[i] = int(np.argmax(weights))
        else:
            mapping[i] = mapping[kept[np.argmin(np.abs(kept - i))]]
    return mapping[cells]


def _joint(a: np.ndarray, b: np.ndarray, groups_a: np.ndarray, groups_b: np.ndarray) -> np.ndarray:
    """The two-way counts of already grouped codes `a` and `b` (groups given by their maps)."""
    size_a, size_b = int(groups_a.max()) + 1, int(groups_b.max()) + 1
    counts = np.bincount(a * size_b + b, minlength=size_a * size_b)
    return counts.reshape(size_a, size_b).astype(float)


def _pair_cells(n_hat: float, sigma: float, bins: int) -> int:
    """How many cells per column a two-way measurement keeps: enough that a typical cell of a
    pair's table holds about twice its noise (post-processing of the noisy total)."""
    return int(np.clip(math.floor(math.sqrt(n_hat / (2.0 * sigma))), 2, bins))


def pair_groups(one_way: np.ndarray, cells: int) -> np.ndarray:
    """A column's coarse cells grouped into at most `cells` groups for its two-way
    measurements: consecutive cells of about equal noisy mass (post-processing)."""
    size = len(one_way)
    if size <= cells:
        return np.arange(size, dtype=np.int64)
    mass = norm_sub(one_way)
    total = float(mass.sum()) or 1.0
    cumulative = np.cumsum(mass) - mass / 2
    groups = np.minimum((cumulative / total * cells).astype(np.int64), cells - 1)
    # renumber so that groups are 0..k-1 without gaps
    _, groups = np.unique(groups, return_inverse=True)
    return groups.astype(np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class AggregatedQuery:
    """A linear query on a pair's model marginal: its cells summed into the measured groups.
    (Identity hash, as mbi's own `WeightedQuery`: arrays are not hashable.)"""

    matrix: np.ndarray

    def __call__(self, factor: Any) -> Any:
        return self.matrix @ factor.datavector()

    def op_norm_sq(self) -> float:
        return float(self.matrix.sum(axis=1).max())

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


def _aggregation(groups_a: np.ndarray, groups_b: np.ndarray) -> AggregatedQuery | None:
    """The matrix from a pair's model cells to its measured groups (None: the identity)."""
    size_a, size_b = len(groups_a), len(groups_b)
    k_a, k_b = int(groups_a.max()) + 1, int(groups_b.max()) + 1
    if k_a == size_a and k_b == size_b:
        return None
    matrix = np.zeros((k_a * k_b, size_a * size_b))
    for i in range(size_a):
        for j in range(size_b):
            matrix[groups_a[i] * k_b + groups_b[j], i * size_b + j] = 1.0
    return AggregatedQuery(matrix)


def _configure_jax() -> None:
    """Float64 (mbi stalls in float32 on large tables) and no persistent compilation cache
    (mbi compiles many small programs), as mbi itself advises; set before mbi is imported."""
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_enable_compilation_cache", False)


def _estimate(
    sizes: dict[str, int],
    one_way: dict[str, tuple[np.ndarray, float]],
    two_way: list[tuple[tuple[str, str], np.ndarray, float, AggregatedQuery | None]],
    iters: int,
) -> Any:
    """`mbi`'s mirror descent over every noisy measurement."""
    _configure_jax()
    from mbi import Domain, LinearMeasurement
    from mbi.estimation import MirrorDescent

    domain = Domain(list(sizes), list(sizes.values()))
    measurements = [
        LinearMeasurement(vector, (name,), stddev=sigma)
        for name, (vector, sigma) in one_way.items()
    ]
    for clique, counts, sigma, query in two_way:
        if query is None:
            measurements.append(LinearMeasurement(counts.reshape(-1), clique, stddev=sigma))
        else:
            measurements.append(
                LinearMeasurement(counts.reshape(-1), clique, stddev=sigma, query=query)
            )
    return MirrorDescent().estimate(domain, measurements, iters=iters)


def _markov_random_field(
    sizes: dict[str, int],
    cliques: list[list[str]],
    tables: dict[tuple[str, ...], Any],
    total: float,
) -> Any:
    _configure_jax()
    import jax.numpy as jnp
    from mbi import CliqueVector, Domain, Factor, MarkovRandomField, marginal_oracles

    domain = Domain(list(sizes), list(sizes.values()))
    order = [tuple(c) for c in cliques]
    potentials = CliqueVector(
        domain,
        order,
        {c: Factor(domain.project(c), jnp.asarray(tables[c])) for c in order},
    )
    marginals = marginal_oracles.message_passing_stable(potentials, total)
    return MarkovRandomField(potentials=potentials, marginals=marginals, total=total)


def _decode(encoding: Encoding, coarse: np.ndarray, rng: np.random.Generator) -> pd.Series:
    """Coarse cells to values: a fine cell within each coarse cell by the noisy fine counts,
    then a value within the fine cell."""
    assert encoding.coarse_of_fine is not None and encoding.fine_weights is not None
    c = encoding.column
    fine = np.empty(len(coarse), dtype=np.int64)
    for group in range(encoding.coarse):
        rows = np.where(coarse == group)[0]
        if not len(rows):
            continue
        members = np.where(encoding.coarse_of_fine == group)[0]
        weights = encoding.fine_weights[members] + 1e-9
        fine[rows] = rng.choice(members, size=len(rows), p=weights / weights.sum())
    missing = fine == encoding.fine - 1
    if c.kind == "categorical":
        assert c.levels is not None
        levels = np.array([*list(c.levels), None], dtype=object)
        return pd.Series(levels[fine])
    if c.kind == "boolean":
        values = np.array([False, True, None], dtype=object)
        return pd.Series(values[fine])
    assert encoding.edges is not None
    edges = encoding.edges
    interior = len(edges) - 1
    cell = fine - 1 if encoding.points else fine.copy()
    cell = np.clip(cell, 0, interior - 1)
    low, high = edges[cell], edges[cell + 1]
    if c.kind == "integer":
        last = cell == interior - 1
        lo_int = np.ceil(low)
        hi_int = np.maximum(np.where(last, np.floor(high), np.ceil(high) - 1), lo_int)
        values = np.floor(rng.uniform(lo_int, hi_int + 1)).clip(lo_int, hi_int)
    else:
        values = rng.uniform(low, high)
    values = values.astype(float)
    if encoding.points:
        values[fine == 0] = edges[0]
        values[fine == interior + 1] = edges[-1]
    values[missing] = np.nan
    return pd.Series(values)


def _dp_decimals(metadata: TableMetadata) -> TableMetadata:
    """Each float column's decimals from its declared range alone (never the rows, which ε
    does not cover): a synthetic value is drawn uniformly within a fine cell of about
    (max − min) / `fine_bins`, so digits below a thousandth of that range carry nothing. A
    weight declared 0.5 to 150 kg is written with one decimal, not fifteen."""
    columns = []
    for c in metadata.columns:
        if c.kind == "float" and c.min is not None and c.max is not None and c.max > c.min:
            step = (float(c.max) - float(c.min)) / 1000.0
            decimals = min(MAX_DECIMALS, max(0, math.ceil(-math.log10(step))))
            c = replace(c, decimals=decimals)
        columns.append(c)
    return TableMetadata(tuple(columns))


def _dp_nullability(metadata: TableMetadata, encodings: list[Encoding]) -> TableMetadata:
    """Nullability from the noisy estimate (a missing cell kept or dropped), not the rows."""
    columns = []
    for c, e in zip(metadata.columns, encodings, strict=True):
        assert e.coarse_of_fine is not None and e.fine_weights is not None
        kept = bool(e.coarse_of_fine[-1] >= 0)
        total = float(e.fine_weights.sum()) or 1.0
        rate = float(e.fine_weights[-1] / total) if kept else 0.0
        columns.append(replace(c, nullable=kept, missing_rate=round(rate, 4)))
    return TableMetadata(tuple(columns))
