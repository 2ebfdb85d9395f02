"""`SecureStatistic`: the shape every statistic takes.

A statistic is one module under `smpc.statistics`: its query model (`query_model`, the
statistic's parameters), its column rules (`numeric_column`, `validate`), whether it supports
`dp` (`supports_dp`), the shape of its result (`result_fields`, or `result_model`), and the
protocol. The registry derives the query union, the names and the OpenAPI schemas from it.

A statistic says what each party computes locally (`local_input`: counts, fixed-point sums and
order keys per result cell, never rows), the MPC part (`compute`: by default the shared
`smpc.protocol.combine_cells`, which pools, applies `min_count` inside MPC and opens only
released cells), the plaintext post-processing of what was opened (`finish`), and a plaintext
oracle on pooled data (`reference`) that the tests compare against.

With `dp` (count, sum, mean, variance, quantile, histogram, crosstab, correlation,
linear_regression; see `smpc.dp`; kaplan_meier has its own protocol), `noise` holds the noisy
values per cell and the ε each spends (`noise_plan`), `local_input` clips the column to its
declared bounds and rounds each row to the fixed-point grid, `finish` adds the result's `dp`
entry, and `reference` returns the exact, noiseless result on the clipped data (`min_count`
applied to the exact counts) with the same `dp` entry, so tests can compare the error with the
scale.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model

if TYPE_CHECKING:
    import pandas as pd

from smpc.cells import CellLayout
from smpc.cost import QueryCost, key_decompositions, noise_coins, prelude_comparisons
from smpc.disclosure import AppliedRules
from smpc.dp import NoiseSpec, column_bounds, describe, grid_sum, noise_plan
from smpc.encoding import encode_moment
from smpc.job import LocalSummary, PartyJob
from smpc.query import QueryBase
from tessera.errors import QueryInvalid
from tessera.schemas import DatasetSchema


@dataclass
class Opened:
    """What the protocol opened: nothing about a suppressed cell but the fact of suppression."""

    threshold: int
    released: list[bool]
    counts: list[int | None]
    moments: dict[str, list[Fraction | None]] = field(default_factory=dict)
    extremes: list[float | None] = field(default_factory=list)
    total: int | None = None  # all cells' count; opened only when no cell is suppressed


@dataclass
class PerGroup:
    """What a per-group protocol opened: the threshold and one entry per group (None: hidden)."""

    threshold: int
    groups: list[Any]


class ResultModel(BaseModel):
    """Base of the result models: exactly the keys DESIGN.md names, nothing else."""

    model_config = ConfigDict(extra="forbid")


class DPApplied(ResultModel):
    """A result's `dp` entry: the privacy spent and the noise applied (`smpc.dp.describe`)."""

    epsilon: float
    delta: float
    mechanism: str
    epsilon_split: dict[str, float] = Field(
        description="The epsilon each kind of noisy value spent (count, sum)."
    )
    noise_scale: dict[str, float] = Field(
        description="Per kind of noisy value, the Laplace scale b of its noise, in the result's "
        "units."
    )


def number(value: float | Fraction | None) -> float | None:
    """A JSON-safe float (None for missing or not-a-number)."""
    if value is None:
        return None
    out = float(value)
    return out if math.isfinite(out) else None


# a perturbed n, as the dry run describes it: what a `count` of the same rows shows
N_PERTURBED = "at most ±3 (standard deviation 1.58): the count perturbation of the same rows"


class SecureStatistic:
    """Base class; subclasses set `name` and the class attributes, and write `cell_values`.

    Statistics that are not a table of cells (regressions, correlation, tests, survival,
    quantiles) override `local_input`, `compute`, `finish` and `reference` as a whole.
    """

    name: ClassVar[str]
    query_model: ClassVar[type[QueryBase]]  # the statistic's parameters (its `statistic` literal)
    supports_dp: ClassVar[bool] = False  # takes `dp` (noise drawn inside MPC: `smpc.dp`)
    numeric_column: ClassVar[bool] = False  # its `column` must be numeric (booleans are 0/1)
    # a cell's (group's) result keys and their types, "n" aside; `result_model` builds on them
    result_fields: ClassVar[dict[str, Any]] = {}
    intermediates: ClassVar[str] = ""  # what the protocol opens besides the output, if anything
    moments: ClassVar[tuple[str, ...]] = ()  # fixed-point sums shared per cell: "sum", "sumsq"
    extreme: ClassVar[Literal["min", "max"] | None] = None
    # its values are a child's (extremes, quantiles): released moved by up to noise × the
    # column's declared range, so the column must declare its bounds
    moved_by_range: ClassVar[bool] = False
    value_column: ClassVar[bool] = True  # reads `query.column`
    binned: ClassVar[bool] = False  # cells within a group come from `bin_index`
    # the node's row-key secret (`smpc.cellkey`), set before `local_input` (None: derived from
    # the frame itself, for local use)
    key_secret: str | None = None
    row_rule: ClassVar[str] = ""  # what every selected row must satisfy (`row_violations`)
    rules: AppliedRules | None = None  # the rules every party applies (set by the prelude)

    def __init__(self, query: QueryBase, schema: DatasetSchema) -> None:
        self.query = query
        self.schema = schema
        self.check_columns()
        self.layout = CellLayout.build(list(query.group_by), schema, self.bins())
        self.validate()
        self.noise: dict[str, NoiseSpec] = self.noise_plan() if query.dp is not None else {}

    def noise_plan(self) -> dict[str, NoiseSpec]:
        """With `dp`: each kind of noisy value and the ε it spends (`smpc.dp.noise_plan`)."""
        assert self.query.dp is not None
        return noise_plan(self.query.dp.epsilon, self.moments, self.clip_bounds)

    # ---- layout and validation ---------------------------------------------------------

    def bins(self) -> int:
        return 1

    def check_columns(self) -> None:
        """The rules the class attributes state: `dp` only where supported, a numeric `column`
        where required, declared bounds for a differentially private sum."""
        query = self.query
        if query.dp is not None and not self.supports_dp:
            from smpc.statistics import DP_STATISTICS

            raise QueryInvalid(
                f"differential privacy ('dp') is available for {', '.join(DP_STATISTICS)}; "
                f"not for {self.name!r}",
                {"field": "dp", "statistic": self.name, "supported": list(DP_STATISTICS)},
            )
        column = getattr(query, "column", None)
        spec = self.schema.column(column) if isinstance(column, str) else None
        if spec is None:
            return
        if self.numeric_column and not spec.is_numeric:
            raise QueryInvalid(
                f"{self.name}: column {column!r} is {spec.type}, not numeric", {"column": column}
            )
        if self.moved_by_range and self.declared_range is None:
            raise QueryInvalid(
                f"{self.name} of {column!r} needs the column's declared bounds: declare finite "
                f"'min' and 'max' for {column!r} in the dataset schema ({self.name} would be a "
                "child's value, so it is released moved by up to noise × that range)",
                {"column": column},
            )
        if query.dp is not None and self.moments and column_bounds(spec) is None:
            raise QueryInvalid(
                f"dp {self.name} of {column!r} needs the column's bounds: declare finite 'min' "
                f"and 'max' for {column!r} in the dataset schema (they set the noise's "
                "sensitivity, and values are clipped to them)",
                {"column": column, "field": "dp"},
            )

    def validate(self) -> None:
        """The statistic's own checks, beyond `smpc.query.check_query` and `check_columns`
        (which have run already)."""

    @classmethod
    def result_model(cls) -> Any:
        """The result's type: without `group_by` one cell's keys and `n`; with it, `n` and one
        entry per group. Both carry `dp` when the query has it."""
        prefix = cls.query_model.__name__.removesuffix("Query")
        return _cell_results(prefix, tuple(cls.result_fields.items()))

    @property
    def column(self) -> str | None:
        return getattr(self.query, "column", None) if self.value_column else None

    @property
    def declared_bounds(self) -> tuple[float, float] | None:
        """The column's declared (min, max), if the schema declares both."""
        spec = self.schema.column(self.column) if self.column else None
        return column_bounds(spec) if spec is not None else None

    def within_bounds(self, value: float | None) -> float | None:
        """A moved extreme or quantile clamped to the declared bounds (post-processing of the
        opened value: a moved age is never negative)."""
        if value is None or self.declared_bounds is None:
            return value
        low, high = self.declared_bounds
        return min(max(value, low), high)

    @property
    def declared_range(self) -> float | None:
        """The column's declared range (max − min): what extremes and quantiles move by."""
        bounds = self.declared_bounds
        return None if bounds is None else bounds[1] - bounds[0]

    @property
    def clip_bounds(self) -> tuple[float, float] | None:
        """With `dp` on a sum or mean: the declared bounds the values are clipped to."""
        if self.query.dp is None or self.column is None or not self.moments:
            return None
        spec = self.schema.column(self.column)
        return column_bounds(spec) if spec is not None else None

    # ---- local part ----------------------------------------------------------------------

    def rows(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        """This party's rows that enter the statistic, and each one's cell index."""
        data, cells, _ = self.keyed_rows(frame, keys=False)
        return data, cells

    def keyed_rows(
        self, frame: pd.DataFrame, keys: bool = True
    ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """`rows`, and each row's secret key (`smpc.cellkey.row_keys`; empty if not `keys`)."""
        from smpc.frames import conform, select

        data = conform(frame, self.schema, self.query.referenced_columns())
        mask = select(data, self.query.where, self.schema).to_numpy()
        if self.column is not None:
            mask &= data[self.column].notna().to_numpy()
        row_keys = self.row_keys(frame)[mask] if keys else np.zeros(0, dtype=np.uint64)
        data = data[mask]
        cells = self.layout.group_codes(data) * self.layout.bins
        within = cells >= 0
        if self.binned:
            bin_index = self.bin_index(data)
            within &= bin_index >= 0
            cells = cells + bin_index
        return data[within], cells[within], row_keys[within] if keys else row_keys

    def row_keys(self, frame: pd.DataFrame) -> np.ndarray:
        """Every row's secret key, in the frame's order, from all its declared columns."""
        from smpc.cellkey import frame_secret, remembered_row_keys, row_keys
        from smpc.frames import conform

        secret = self.key_secret or frame_secret(frame)
        present = [name for name in self.schema.names if name in frame.columns]
        # the keys depend on the declared columns' names, types and levels (conform), not on
        # bounds or the declared row count
        declared = [c.model_dump_json() for c in self.schema.columns if c.name in frame.columns]
        return remembered_row_keys(
            frame,
            secret,
            "\n".join(declared),
            lambda: row_keys(conform(frame, self.schema, present), secret),
        )

    def level_count(self) -> int:
        """The largest number of levels of a grouping or categorical column the statistic
        reads (the levels rule: `smpc.disclosure.prelude`); 1 when it reads none."""
        return max([1, *(len(levels) for levels in self.layout.levels)])

    def parameters(self) -> int:
        """A model's number of parameters (the model rule, glm_ratio); 0 for no model."""
        return 0

    def row_violations(self, data: pd.DataFrame) -> int:
        """How many of this party's rows entering the statistic break its `row_rule` (an
        outcome not 0/1, a time off the grid). Never raised on locally: the count is pooled
        and checked inside MPC, so no node is named and no value leaks."""
        return 0

    def selection(self, frame: pd.DataFrame) -> list[int]:
        """This party's [rows, rows selected by `where`, rows entering the statistic (selected,
        with every column it reads present), selected rows breaking the row rule]."""
        from smpc.frames import conform, select

        columns = self.query.referenced_columns()
        data = conform(frame, self.schema, columns)
        mask = select(data, self.query.where, self.schema)
        entering = mask & data[columns].notna().all(axis=1) if columns else mask
        return [
            len(data),
            int(mask.sum()),
            int(entering.sum()),
            int(self.row_violations(data[entering])),
        ]

    def local_summary(self, frame: pd.DataFrame) -> LocalSummary:
        """What this party hands its party process: `local_input` and its `selection`."""
        summary = self.local_input(frame)
        summary.selection = self.selection(frame)
        return summary

    @property
    def threshold(self) -> int:
        """T, as every party applies it (inside a party process, after the prelude)."""
        assert self.rules is not None, "the prelude sets the rules before the protocol"
        return self.rules.threshold

    def bin_index(self, data: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def local_input(self, frame: pd.DataFrame) -> LocalSummary:
        """What this party secret-shares: per cell a count and its key sums (`smpc.cellkey`),
        the moments and the largest |x| (for the magnitude perturbation), or the local minimum
        and maximum (fixed point). With `dp`: counts and clipped sums only."""
        from smpc.cellkey import key_sums, largest

        exact_mode = self.query.dp is None
        data, cells, keys = self.keyed_rows(frame, keys=exact_mode)
        size = self.layout.size
        counts = np.bincount(cells, minlength=size)
        summary = LocalSummary(counts=[int(c) for c in counts])
        if exact_mode:
            summary.vectors["keys"] = key_sums(keys, cells, size)
        if not self.moments and self.extreme is None:
            return summary
        assert self.column is not None
        values = data[self.column].to_numpy(dtype=float)
        if self.clip_bounds is not None:
            values = np.clip(values, *self.clip_bounds)
        order = np.argsort(cells, kind="stable")
        starts = np.searchsorted(cells[order], np.arange(size + 1))
        per_cell = [values[order[starts[c] : starts[c + 1]]] for c in range(size)]
        if self.noise:  # each clipped row on the grid: the sums' sensitivity is exact
            try:
                for moment in self.moments:
                    power = {"sum": 1, "sumsq": 2}[moment]
                    summary.moments[moment] = [grid_sum(v**power) for v in per_cell]
            except OverflowError as exc:
                raise QueryInvalid(f"{self.name} of {self.column!r}: {exc}") from None
            return summary
        try:
            for moment in self.moments:
                power = {"sum": 1, "sumsq": 2}[moment]
                summary.moments[moment] = [encode_moment(math.fsum(v**power)) for v in per_cell]
            summary.vectors["largest"] = largest(values, cells, size)
            if self.extreme is not None:
                # an empty cell sends the declared bound on the far side: it never wins
                assert self.declared_bounds is not None  # validated: extremes need them
                low, high = self.declared_bounds
                pick, empty = (np.min, high) if self.extreme == "min" else (np.max, low)
                summary.vectors["extreme"] = [
                    encode_moment(pick(v) if len(v) else empty) for v in per_cell
                ]
        except OverflowError as exc:
            raise QueryInvalid(f"{self.name} of {self.column!r}: {exc}") from None
        return summary

    # ---- the secure part (inside a party process, MPyC runtime started) ------------------

    async def compute(self, mpc: Any, job: PartyJob) -> Any:
        """Run the protocol; return what was opened (an object with a `threshold` attribute)."""
        from smpc.protocol import combine_cells

        return await combine_cells(mpc, self, job)

    def cost(self, parties: int) -> QueryCost:
        """The cell protocol's cost (`smpc.cost`) among `parties` parties: cells are the
        layout's cells times the values each opens (its count, and its Σx, centred Σx² or
        extreme). Comparisons, `exact` mode (`smpc.protocol.combine_cells`): the prelude's,
        one release comparison per cell, the cell keys of every cell and the total, the
        largest |x| and the extreme across the sites (m − 1 each per cell) and one rounding
        per opened sum, second moment and extreme. With `dp` (`combine_noisy_cells`): the
        prelude's, the noise's coins and one release comparison per cell. Each site's inputs
        are shown within the declared bounds by bits that site inputs (`SiteInputs.check`,
        `smpc.ranges`), not by comparisons."""
        cells = self.layout.size
        moments = len(self.moments)
        extreme = self.extreme is not None
        opened = cells * (1 + moments + extreme)
        if self.query.dp is not None:
            noise = sum(noise_coins(spec, cells) for spec in self.noise.values())
            compared = prelude_comparisons(self) + noise + cells
            return QueryCost(opened, compared)
        across = (parties - 1) * (bool(moments) + extreme)
        compared = (
            prelude_comparisons(self)
            + cells
            + key_decompositions(cells + 1)
            + cells * (across + moments + extreme)
        )
        return QueryCost(opened, compared)

    @classmethod
    def reveals(cls) -> str:
        """The module docstring's `Reveals:` paragraph: what the protocol opens, in words."""
        doc = sys.modules[cls.__module__].__doc__ or ""
        match = re.search(r"^Reveals:(.*?)(?:\n\s*\n|\Z)", doc, re.S | re.M)
        return " ".join(match.group(1).split()) if match else ""

    # ---- after the protocol -------------------------------------------------------------

    def cell_values(self, opened: Opened, cell: int) -> dict[str, Any]:
        """The statistic's result keys for one released cell (without "n")."""
        raise NotImplementedError

    def empty_values(self) -> dict[str, Any]:
        """The result keys of a suppressed cell: every value null."""
        raise NotImplementedError

    # how a statistic without cell-key perturbation publishes n (dry run)
    n_published: ClassVar[str] = "exact"

    @property
    def perturbed(self) -> bool:
        """Whether the exact mode moves the released values by cell key: the cell protocol's
        statistics (`combine_cells`) and those moved by the declared range (quantiles)."""
        return type(self).compute is SecureStatistic.compute or self.moved_by_range

    def rules_applied(self, rules: AppliedRules) -> list[str]:
        """The disclosure rules that apply to this query under `rules`, in words (dry run)."""
        out = []
        if self.query.dp is not None:
            out.append(f"dp: ε = {self.query.dp.epsilon:g}, noise drawn inside MPC")
        out.append(
            f"min_count {rules.threshold} on each released cell's pooled count, and every "
            f"site's count 0 or at least its own floor ({', '.join(map(str, rules.floors))})"
            if rules.floors
            else f"min_count {rules.threshold} on each released cell's pooled count"
        )
        if self.query.where:
            out.append(
                f"subset_min {rules.subset_min}: the selection and its complement each hold at "
                "least that many rows"
            )
        if self.level_count() > 1:
            out.append(
                f"levels: at most {rules.levels_max} levels and at most "
                f"{rules.levels_density:g} × n"
            )
        if self.parameters():
            out.append(f"glm_ratio: {self.parameters()} parameters ≤ {rules.glm_ratio:g} × n")
        if self.query.dp is None and self.perturbed:
            out.append("cell-key perturbation: the same cell always gets the same answer")
        return out

    def expected_error(self, rules: AppliedRules) -> dict[str, str]:
        """Per result key, how far a released value may be from the exact one (dry run)."""
        if self.query.dp is not None:
            return {
                kind: f"Laplace noise of scale {spec.scale:g}" for kind, spec in self.noise.items()
            }
        if not self.perturbed:
            return {
                "n": self.n_published,
                "other keys": "as computed inside MPC (docs/leakage.md lists their precision)",
            }
        out = {"n": "at most ±3 (standard deviation 1.58); an empty cell stays 0"}
        column = self.column or "x"
        if "sum" in self.moments:
            out["sum"] = (
                f"at most ±{rules.magnitude:g} × the cell's largest |{column}|, then rounded "
                "down to a multiple of 2^-16"
            )
            out["mean"] = "the perturbed sum over the perturbed n"
        if "sumsq" in self.moments:
            out["variance"] = (
                f"n·Σx² − (Σx)² moved by at most ±{rules.magnitude:g} × n × (largest |{column}|)², "
                "over the perturbed n(n − 1)"
            )
        if self.extreme is not None:
            out[self.extreme] = (
                f"at most ±{rules.noise:g} × {self.declared_range:g} (the declared range), "
                "rounded down to 2^-16"
            )
        return out

    def plain(self, summaries: list[LocalSummary], frames: list[pd.DataFrame]) -> Any:
        """What the protocol opens, computed in plaintext from every party's summary (the
        tests' oracle: `smpc.statistics.reference_parties`); None where no twin exists."""
        if type(self).compute is not SecureStatistic.compute or self.query.dp is not None:
            return None
        from smpc.protocol import plain_cells

        return plain_cells(self, summaries, self.rules)

    def finish(self, opened: Any) -> dict[str, Any]:
        """The result in DESIGN.md's shape, from what was opened."""
        entries = []
        for g in range(len(self.layout.groups)):
            entries.append(self.group_result(opened, g))
        if not self.layout.group_columns:
            out = {"n": opened.total, **{k: v for k, v in entries[0].items() if k != "n"}}
        else:
            groups = [{"group": self.layout.group_label(g), **e} for g, e in enumerate(entries)]
            out = {"n": opened.total, "groups": groups}
        return self.with_dp(out)

    def with_dp(self, result: dict[str, Any]) -> dict[str, Any]:
        """The result with its `dp` entry (what noise was applied), if the query has `dp`."""
        if self.query.dp is None:
            return result
        return {**result, "dp": describe(self.query.dp.epsilon, self.query.dp.delta, self.noise)}

    def assemble(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        """One entry per group (each with its "n") → the result; the total n only when no
        group is suppressed (otherwise it would give a suppressed group away by subtraction)."""
        suppressed = any(e["n"] is None for e in entries)
        total = None if suppressed else sum(int(e["n"]) for e in entries)
        if not self.layout.group_columns:
            return {**entries[0], "n": total}
        groups = [{"group": self.layout.group_label(g), **e} for g, e in enumerate(entries)]
        return {"n": total, "groups": groups}

    def group_result(self, opened: Opened, g: int) -> dict[str, Any]:
        if opened.released[g]:
            return {"n": opened.counts[g], **self.cell_values(opened, g)}
        return {"n": None, **self.empty_values()}

    # ---- plaintext oracle ---------------------------------------------------------------

    def reference(self, frame: pd.DataFrame, min_count: int = 0) -> dict[str, Any]:
        """The same result computed in plaintext on pooled rows with pandas/numpy (tests only)."""
        from smpc.frames import conform, select

        data = conform(frame, self.schema, self.query.referenced_columns())
        data = data[select(data, self.query.where, self.schema)]
        if self.column is not None:
            data = data[data[self.column].notna()]
        if self.clip_bounds is not None:
            assert self.column is not None
            data = data.assign(**{self.column: data[self.column].clip(*self.clip_bounds)})
        entries = []
        for levels in self.layout.groups:
            sub = data
            for name, level in zip(self.layout.group_columns, levels, strict=True):
                spec = self.schema.column(name)
                assert spec is not None
                if spec.type == "boolean":
                    sub = sub[sub[name] == (1.0 if level == "True" else 0.0)]
                else:
                    sub = sub[sub[name] == level]
            entries.append(self.reference_group(sub, min_count))
        suppressed = any(self.reference_suppressed(e) for e in entries)
        total = None if suppressed else sum(self.reference_count(e) for e in entries)
        if not self.layout.group_columns:
            return self.with_dp({**entries[0], "n": total})
        groups = [{"group": self.layout.group_label(g), **e} for g, e in enumerate(entries)]
        return self.with_dp({"n": total, "groups": groups})

    def reference_group(self, sub: pd.DataFrame, min_count: int) -> dict[str, Any]:
        if len(sub) < min_count:
            return {"n": None, **self.empty_values()}
        return {"n": len(sub), **self.reference_values(sub)}

    def reference_values(self, sub: pd.DataFrame) -> dict[str, Any]:
        raise NotImplementedError

    def reference_suppressed(self, entry: dict[str, Any]) -> bool:
        return entry["n"] is None

    def reference_count(self, entry: dict[str, Any]) -> int:
        return int(entry["n"])


@cache
def _cell_results(prefix: str, keys: tuple[tuple[str, Any], ...]) -> Any:
    """The result models of a statistic whose result is one cell's keys (and `n`) per group,
    named after its query model (`MeanQuery`: `MeanResult`, `MeanGroup`, `MeanGroupedResult`)."""
    fields: dict[str, Any] = {"n": (int | None, ...), **{key: (kind, ...) for key, kind in keys}}
    dp: Any = (DPApplied | None, None)
    single = create_model(f"{prefix}Result", __base__=ResultModel, dp=dp, **fields)
    group = create_model(
        f"{prefix}Group", __base__=ResultModel, group=(dict[str, str], ...), **fields
    )
    grouped = create_model(
        f"{prefix}GroupedResult",
        __base__=ResultModel,
        n=(int | None, ...),
        groups=(list[group], ...),
        dp=dp,
    )
    return single | grouped
