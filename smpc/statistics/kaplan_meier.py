"""`kaplan_meier`: pooled survival curves per group and the log-rank test, as lifelines.

Each group's curve is lifelines' `KaplanMeierFitter` on the pooled rows: one entry per row of
its `event_table` (time 0, then every distinct time at which the group has an event or a
censoring), with the survival estimate and the number at risk. The log-rank test is lifelines'
`multivariate_logrank_test` over the groups compared (for two groups it equals `logrank_test`);
`df` is the number of groups compared minus one.

The time column must be an *integer* column (days, weeks, ...) with declared bounds
``0 <= min <= max`` in the dataset schema, at most `MAX_GRID` whole units apart: the protocol
works on the public grid of integers [min, max], so the distinct times are agreed without any
site saying which times it holds. The event column is boolean or numeric with values 0 / 1.
Rows missing the time, the event or the group are skipped. A time off the grid (not whole, or
outside the declared bounds) or an event other than 0/1 is a *row rule* violation
(`row_violations`): never raised on at the node, but counted, pooled and refused inside MPC by
the prelude (`smpc.disclosure.prelude`), so the refusal is the same whichever node holds the
row, and names neither the node nor the value.

Disclosure control (`min_count` = T, the larger of the query's and every node's floor): a
group with fewer than T rows is suppressed (`n`, `time`, `survival`, `at_risk` all `null`); a
released curve is *truncated* where its (perturbed, post-processed) risk set drops below T. The
log-rank test compares the released groups that have rows (a group with no rows takes no part,
as in lifelines; a suppressed one takes no part either, so nothing about it is used); it is
`null` when fewer than two groups take part, or when its covariance matrix is singular
(lifelines falls back to a pseudo-inverse there; here every pivot must exceed 2^-40).

Perturbation in the `exact` mode (against differencing). Exact curves of two selections that
differ by one patient differ by 1 in the number at risk up to that patient's time and not after:
the time would be given away (`tests/adversarial/test_tests_and_tables.py`). The curves are
therefore computed from perturbed counts, and the perturbation changes at *every* grid step
when one row joins the group, so that no boundary shows:

- a tree of node sums: for each dyadic interval of the grid steps ([j·2^h, (j + 1)·2^h), every
  level h up to one node covering the grid, each interval once: `tree_nodes`, fewer than 2·L
  nodes), the group's pooled events and censorings in it;
- each node sum gets a perturbation p in {−3, …, 3} with the count law of `smpc.cellkey`
  (b₀ + b₁ + 2·(b₂ + b₃) − 3), its four bits from Damgård's Legendre PRF (`smpc.prf`) keyed with
  the group's key: the plain sum of its rows' 64-bit keys, so that the same rows always get the
  same curve (repeating a query averages nothing away) and one more row gives an unrelated
  perturbation at every node;
- the group's n is n + p with the cell-key perturbation a `count` of the same rows gets;
- after opening, per-step counts are estimated from the perturbed tree by least squares (Hay et
  al., VLDB 2010: each step's cumulative count then carries the noise of about log₂ L nodes,
  not of L cells) and made consistent as in the `dp` mode (`consistent_counts`).

Measured (max |S(t) − S_lifelines(t)| where at least 20 are at risk): 0.006 and 0.018 for
Rossi's two groups of 216 (53 weeks), 0.023 for Walton's 129 control flies and 0.11 for the 34
of miR-137 (81 days), 0.02–0.04 for the German breast cancer study's groups of 246 and 440
(2 660 days or 381 weeks), 0.03–0.09 for the lung data's ECOG groups of 50–113 (1 100 days).
Where fewer are at risk the error grows (the perturbation is the same size, the counts are
not). A single differencing attack (100 flies) missed the day by more than 2 % of the range in
87–92 of 100 attempts, from the curves and from a party's view of the opened node sums alike.

Protocol (all parties in lock step):

1. floors opened, T agreed as in `smpc.protocol`;
2. each party shares, per group and grid point, its own number at risk (rows with time ≥ t)
   and its own number of events at t (checked inside MPC: `checked_inputs`); pooling is a sum
   of shares;
3. a group is released when its pooled n (its risk set at the grid's start) reaches T: one
   bit per group, opened;
4. with two released groups or more, the log-rank statistic over all their pooled rows is
   computed inside MPC and only the statistic is opened; the p-value follows with scipy in
   plaintext. Per grid point, the compared groups' pooled risk set r and events d give the
   terms E_a = d·r_a/r and V_ac = d(r − d)·r_a(δ_ac·r − r_c)/(r²(r − 1)) on shares, with the
   reciprocals 2^F/r and 2^F/(r²(r − 1)) (F = `LOGRANK_SCALE` = 192) computed for every grid
   point at once (`smpc.rounded.risk_reciprocals`: r's bits and leading one, then Newton's
   iteration; relative error about 2^-74, 0 where r = 0 or r ≤ 1). The observed minus
   expected events Z and the covariance V are rounded to 2^-64. With two groups the
   statistic Z²/V is one ratio of exact integers opened rounded to 25 significant bits inside
   MPC (`smpc.rounded.open_rounded_ratios`; V below 2^-40 counts as singular: one secret bit,
   opened). With more, the quadratic form Zᵀ V⁻¹ Z of the first G − 1 groups is taken in
   secure fixed point with 128 fractional bits, by Gaussian elimination with one secure
   reciprocal per pivot (a pivot below 2^-40 counts as singular), and rounded to 2^-48
   inside MPC before it is opened. No number at risk, no
   event count and no point where a risk set drops below T is opened to anyone;
5. the perturbed node sums of every released group (events and censorings over the whole grid)
   and each group's n + p (and the total's, when no group is suppressed) are opened; the curves
   follow in plaintext (`finish`).

Cost, for G groups, a grid of L points, m parties: inputs 2·G·L integers per party; G secure
comparisons for the release; for the log-rank test the bits of L risk sets of 32 bits and
their leading ones (about 3·32·L secure products in 2·log₂ 32 rounds each), seven Newton steps
on 2·L values, (G² + 3)·L products for the sums, plus a few comparisons and reciprocals for the
final G − 1 pivots. Measured with 3 parties on two shared cores, 3 000 rows in two groups
(T = 5): a 61-day grid 1.2–1.3 s, 1 000 days 3.8–3.9 s, 10 000 days 31 s for the whole query
(the earlier plaintext prefix with secret look-ups in the tails: 1.1, 3.3 and 25 s). The
`exact` mode's perturbation: 8 Legendre bits per node (4 for its events,
4 for its censorings), fewer than 2·L nodes per released group, each bit 2t + 1 secure products
(t + 1 rounds) and one opening in a 291-bit field: about 65 µs per bit with 3 parties here (a
2 701-day grid with three groups, 130 000 bits: about 8 s; a 53-week grid: 850 bits per group,
under 0.1 s). Local work is O(rows + G·L). Rows enter only the parties' local counts.

Numeric limits: times are whole numbers in [min, max], at most `MAX_GRID` (10 000: 27 years
of days) grid points; at most 2^32 rows pooled. Counts, times and numbers at risk are exact;
survival estimates are float64 products (relative error about 1e-15 per step); the log-rank
statistic is within a relative 2^-24 of its exact value with two groups (25 significant
bits), within about 2^-48 with more (plus n·2^-74 from the reciprocals, and 2^-60 times the
condition number of V).

Differential privacy (`dp`: {epsilon, delta}). Each row leaves its group's risk set at exactly
one grid step, as an event or as a censoring, so the per-step event and censoring counts of all
groups form one histogram in which a row occupies one cell: L1 sensitivity 1 under adding or
removing a row, and the whole table, every group and step, spends ε once (parallel
composition). Inside MPC the pooled counts (events, and censorings = the drop of the number at
risk minus the events) of every group and grid step get discrete Laplace noise of scale 1/ε
(`smpc.dp`, Δ = 1, the `count` entry of the result's `dp`); a group is released when its noisy
row count (the sum of its noisy cells) reaches T, compared inside MPC, and then only the noisy
counts of the released groups, over the whole grid, are opened. Everything else is
post-processing in plaintext (no further ε; `consistent_counts`): numbers at risk from the noisy
reverse cumulative counts by isotonic regression, within [0, n] (n = max(0, noisy row count)),
events from the noisy cumulative events by isotonic regression, at least 0 and at most the
risk set, S(t) = Π(1 − d/r), non-increasing within [0, 1]; a curve lists time 0 and every grid
time where its post-processed risk set drops or it has events, and is truncated where the
post-processed risk set falls below T. The log-rank test is null in dp mode: a statistic from
noisy counts referred to χ² would give p-values that ignore the noise, and so overstate the
evidence. There are no confidence intervals (there are none in the exact mode either; a
Greenwood variance from noisy counts would likewise ignore the noise). Error: measured at ε = 1
on Rossi's data (432 rows, 53 weekly steps), the largest |S_dp(t) − S(t)| over the grid was
0.011–0.026 in five runs; on Walton's flies (81 daily steps) 0.07–0.15 for the control group
(129 flies) and up to 0.38 for the 34 flies of miR-137: the noise of a cumulative count grows
as √L, so small groups on long grids need a larger ε or a coarser time unit. Cost: 2·G·L noisy
counts of about 12 biased coins each at ε = 1 (a 10 000-day grid with four groups: about a
million coins; use weeks). A neighbouring dataset changes one cell by 1, so the implementation
is (ε, 2⁻⁶⁴)-DP where the ideal mechanism is pure ε-DP (`smpc.dp`'s slack).

Reveals: in the `exact` mode, per released group n + p and its curve from the perturbed counts
(time, survival, at_risk where the post-processed risk set is at least `min_count`); which
groups are suppressed; the overall n + p only when no group is; the log-rank statistic over the
released groups with rows, and whether its covariance matrix is singular. To the parties also:
the perturbed node sums of the released groups over the whole grid, and masked values only
(docs/leakage.md). With `dp`: to the parties, which groups' noisy row counts reach
`min_count`, and the noisy per-step event and censoring counts of the released groups over the
whole grid (ε-DP); in the result, the curves post-processed from them.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from smpc import prf
from smpc.cellkey import COUNT_NOISE_BITS, count_perturbation, key_sums
from smpc.cells import CellLayout
from smpc.cost import (
    QueryCost,
    key_decompositions,
    noise_coins,
    prelude_comparisons,
    rounded_ratios,
)
from smpc.dp import discrete_laplace
from smpc.encoding import MOMENT_BITS
from smpc.job import LocalSummary, PartyJob
from smpc.query import QueryBase
from smpc.secure import quadratic_form, to_fixed
from smpc.statistics.base import (
    N_PERTURBED,
    DPApplied,
    Opened,
    ResultModel,
    SecureStatistic,
    number,
)
from tessera.errors import QueryInvalid
from tessera.schemas import ColumnName

if TYPE_CHECKING:
    import pandas as pd

    from smpc.disclosure import AppliedRules
    from tessera.schemas import DatasetSchema

MAX_GRID = 10_000
COUNT_BITS = 32  # pooled rows < 2**32
LOGRANK_SCALE = 4 * COUNT_BITS + 64  # the log-rank sums' unit: 2**-192
SECURE_BITS = COUNT_BITS + LOGRANK_SCALE + 32  # the log-rank sums: n · 2**F, and headroom
assert prf.FIELD_BITS >= SECURE_BITS  # the exact mode computes in `prf.field_type`
FRACTION_BITS = 64  # Z and V enter the final quadratic form rounded to 2**-64
FIXED_BITS = 256  # its secure fixed point: 128 fractional bits (MPyC divides only with l = 2·f)
OPENED_BITS = 48  # fractional bits of the statistic as opened
PIVOT_FLOOR = 2.0**-40
UNGROUPED = "all"


def tree_nodes(grid: int) -> list[tuple[int, int]]:
    """The dyadic intervals [j·2**h, min((j + 1)·2**h, grid)) of the grid steps, level by level
    from the single steps up to one covering the grid, each interval once (a last node that
    covers the same steps as its child is the same cell, and is not repeated)."""
    nodes: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    width = 1
    while True:
        for start in range(0, grid, width):
            node = (start, min(start + width, grid))
            if node not in seen:
                seen.add(node)
                nodes.append(node)
        if width >= grid:
            return nodes
        width *= 2


def node_sums(cells: np.ndarray, nodes: list[tuple[int, int]]) -> np.ndarray:
    """Per row of `cells` (per-step counts), the sum over each node's steps (plaintext)."""
    prefix = np.concatenate((np.zeros((cells.shape[0], 1), dtype=cells.dtype), cells), axis=1)
    prefix = np.cumsum(prefix, axis=1)
    starts, ends = (np.array(ends) for ends in zip(*nodes, strict=True))
    return prefix[:, ends] - prefix[:, starts]


def step_estimates(noisy: Sequence[float], grid: int) -> list[float]:
    """Per-step counts from the perturbed node sums by least squares (Hay et al., VLDB 2010:
    the estimate consistent with the tree that is closest to the perturbed values; every
    node's perturbation has the same law, so unweighted). Post-processing only."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import lsqr

    nodes = tree_nodes(grid)
    rows = np.repeat(np.arange(len(nodes)), [b - a for a, b in nodes])
    cols = np.concatenate([np.arange(a, b) for a, b in nodes])
    design = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(nodes), grid))
    fit = lsqr(design, np.asarray(noisy, dtype=float), atol=1e-12, btol=1e-12, iter_lim=100_000)
    return [float(v) for v in fit[0]]


def node_offsets(groups: int, nodes: int) -> np.ndarray:
    """The Legendre inputs (`smpc.prf`) of the nodes' perturbation bits, one row per group:
    1 + 4·(2·ν + kind) + j for node ν, kind 0 (events) or 1 (censorings) and bit j < 4. Every
    group has the same inputs; their keys differ."""
    row = np.arange(1, 1 + nodes * 2 * COUNT_NOISE_BITS, dtype=np.int64).astype(object)
    return np.tile(row, (groups, 1))


def node_perturbations(key: int, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """`perturbed_counts`' perturbations of one group in plaintext: (events', censorings')."""
    bits = prf.plain_bits(key, node_offsets(1, nodes)[0]).reshape(nodes * 2, COUNT_NOISE_BITS)
    noise = count_perturbation(bits)
    return noise[0::2], noise[1::2]


def leaving(at_risk: Any, size: int, grid: int) -> Any:
    """Per group and grid step, the rows that leave the risk set there (by an event or a
    censoring): r_t − r_(t+1), r past the grid being 0. `at_risk` is flat (`size` × `grid`),
    a secure array or a numpy one: the same local arithmetic on either."""
    step = np.arange(size * grid)
    last = step % grid == grid - 1
    after = np.where(last, step, step + 1)
    return at_risk - at_risk[after] * np.where(last, 0, 1).astype(object)


@dataclass
class SurvivalOpened(Opened):
    # per released group: `exact`, the perturbed node sums (`tree_nodes`) of its events and
    # censorings; `dp`, its noisy events and censorings at every grid step
    events: list[list[int]] = field(default_factory=list)
    censored: list[list[int]] = field(default_factory=list)
    logrank: tuple[float, int] | None = None  # (statistic, df)


class KaplanMeierQuery(QueryBase):
    statistic: Literal["kaplan_meier"]
    time: ColumnName
    event: ColumnName
    group: ColumnName | None = None

    def statistic_columns(self) -> list[str]:
        return [self.time, self.event] + ([self.group] if self.group else [])


class SurvivalCurve(ResultModel):
    """One group's curve; every key is null for a suppressed group."""

    n: int | None
    time: list[int] | None
    survival: list[float] | None
    at_risk: list[int] | None


class LogRank(ResultModel):
    statistic: float | None
    p_value: float | None
    df: int | None


class KaplanMeierResult(ResultModel):
    n: int | None
    groups: dict[str, SurvivalCurve]
    logrank: LogRank
    dp: DPApplied | None = None


class KaplanMeier(SecureStatistic):
    name = "kaplan_meier"
    supports_dp = True
    row_rule = (
        "every time must be a whole number within the time column's declared bounds, and "
        "every event 0 or 1"
    )
    query_model = KaplanMeierQuery

    @classmethod
    def result_model(cls) -> Any:
        """Curves per group (not `group_by`'s shape) and the log-rank test."""
        return KaplanMeierResult

    value_column = False
    intermediates = (
        "per group, whether its exact risk set reaches T at the grid points a binary search "
        "probes; per released group, its perturbed node sums of events and censorings over the "
        "whole grid; with two released groups or more, the exact pooled numbers at risk and "
        "events of every released group up to where its risk set drops below T (for the "
        "log-rank terms; the curves shown come from the perturbed counts); whether the "
        "log-rank covariance is singular (shown by a null statistic)"
    )

    @property
    def perturbed(self) -> bool:
        """The `exact` mode's curves come from perturbed counts, n is n + p."""
        return True

    def expected_error(self, rules: AppliedRules) -> dict[str, str]:
        if self.query.dp is not None:
            return super().expected_error(rules)
        return {
            "n": N_PERTURBED,
            "time, survival, at_risk": (
                "from per-step event and censoring counts estimated from a tree of node sums "
                "(every dyadic interval of the grid), each perturbed by at most ±3 (standard "
                "deviation 1.58); measured |ΔS| 0.006–0.04 for groups of 129–440 and up to 0.11 "
                "for groups of 34–64, where at least 20 are at risk"
            ),
            "logrank": "exact over the released groups' rows, rounded to 2^-48",
        }

    query: KaplanMeierQuery

    def __init__(self, query: KaplanMeierQuery, schema: DatasetSchema) -> None:
        super().__init__(query, schema)
        groups = [query.group] if query.group else []
        self.layout = CellLayout.build(groups, schema)
        time = schema.column(query.time)
        assert time is not None and time.min is not None and time.max is not None
        self.first, self.last = int(time.min), int(time.max)

    @property
    def grid(self) -> int:
        return self.last - self.first + 1

    def validate(self) -> None:
        q = self.query
        if q.group_by:
            raise QueryInvalid(
                "kaplan_meier: compare groups with 'group' (one categorical or boolean column), "
                "not group_by",
                {"field": "group_by"},
            )
        names = [q.time, q.event] + ([q.group] if q.group else [])
        if len(set(names)) != len(names):
            raise QueryInvalid("kaplan_meier: time, event and group must be different columns")
        time = self.schema.column(q.time)
        assert time is not None
        if time.type != "integer":
            raise QueryInvalid(
                f"kaplan_meier: the time column {q.time!r} is {time.type}; it must be an integer "
                "column (whole days, weeks, ...) with declared min and max",
                {"column": q.time},
            )
        if time.min is None or time.max is None:
            raise QueryInvalid(
                f"kaplan_meier: the time column {q.time!r} needs declared bounds (min and max) "
                "in the dataset schema: the protocol works on the public grid of whole time "
                "units between them",
                {"column": q.time},
            )
        if time.min < 0 or not float(time.min).is_integer() or not float(time.max).is_integer():
            raise QueryInvalid(
                f"kaplan_meier: the bounds of {q.time!r} must be whole numbers with min >= 0",
                {"column": q.time},
            )
        if time.max - time.min + 1 > MAX_GRID:
            raise QueryInvalid(
                f"kaplan_meier: the time grid of {q.time!r} has "
                f"{int(time.max - time.min) + 1} points; at most {MAX_GRID} are supported "
                "(use a coarser unit, e.g. weeks instead of days)",
                {"column": q.time, "limit": MAX_GRID},
            )
        event = self.schema.column(q.event)
        assert event is not None
        if not event.is_numeric:
            raise QueryInvalid(
                f"kaplan_meier: the event column {q.event!r} must be boolean or 0/1",
                {"column": q.event},
            )
        if q.group:
            spec = self.schema.column(q.group)
            assert spec is not None
            if spec.type not in ("categorical", "boolean"):
                raise QueryInvalid(
                    f"kaplan_meier: the group column {q.group!r} is {spec.type}; it must be "
                    "categorical or boolean",
                    {"column": q.group},
                )

    # ---- local part ----------------------------------------------------------------------

    def survival_rows(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This party's grid index, event flag and group of every row that enters the curves."""
        index, events, cells, _ = self.keyed_survival_rows(frame, keys=False)
        return index, events, cells

    def keyed_survival_rows(
        self, frame: pd.DataFrame, keys: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`survival_rows`, and each row's secret key (`smpc.cellkey.row_keys`; empty if not
        `keys`)."""
        data, cells, row_keys = self.keyed_rows(frame, keys=keys)
        q = self.query
        keep = (data[q.time].notna() & data[q.event].notna()).to_numpy()
        times = data[q.time].to_numpy(dtype=float)[keep]
        events = data[q.event].to_numpy(dtype=float)[keep]
        # Rows off the grid or with an event other than 0/1 are never raised on here (that
        # would name this node and tell which rows its selection holds): they are counted by
        # `row_violations`, pooled, and the prelude refuses the query over all sites together.
        valid = _on_grid(times, events, self.first, self.last)
        times, events, keep = times[valid], events[valid], np.flatnonzero(keep)[valid]
        index = (times - self.first).astype(np.int64)
        return index, events.astype(bool), cells[keep], row_keys[keep] if keys else row_keys

    def row_violations(self, data: pd.DataFrame) -> int:
        """Rows whose time is not a whole number within the declared bounds, or whose event is
        not 0/1 (pooled and refused inside MPC by the prelude: no node is named)."""
        q = self.query
        times = data[q.time].to_numpy(dtype=float)
        events = data[q.event].to_numpy(dtype=float)
        return int((~_on_grid(times, events, self.first, self.last)).sum())

    def local_input(self, frame: pd.DataFrame) -> LocalSummary:
        """Per group and grid point: this party's number at risk and number of events. In the
        `exact` mode also, per group, its rows' key sums (`smpc.cellkey.key_sums`: the group
        n's perturbation, as a `count` of the same rows gets) and the plain sum of its rows'
        64-bit keys (the key of the per-step perturbations, `smpc.prf`)."""
        exact_mode = self.query.dp is None
        index, events, cells, keys = self.keyed_survival_rows(frame, keys=exact_mode)
        size, grid = self.layout.size, self.grid
        at_risk = np.zeros((size, grid), dtype=np.int64)
        deaths = np.zeros((size, grid), dtype=np.int64)
        for g in range(size):
            mine = cells == g
            leaving = np.bincount(index[mine], minlength=grid)
            at_risk[g] = np.cumsum(leaving[::-1])[::-1]
            deaths[g] = np.bincount(index[mine & events], minlength=grid)
        summary = LocalSummary(
            counts=[int(r[0]) for r in at_risk],
            vectors={"at_risk": at_risk.ravel().tolist(), "events": deaths.ravel().tolist()},
        )
        if exact_mode:
            summary.vectors["keys"] = key_sums(keys, cells, size)
            summary.vectors["key_totals"] = [
                sum(int(k) for k in keys[cells == g]) for g in range(size)
            ]
        return summary

    # ---- the secure part -------------------------------------------------------------------

    def cost(self, parties: int) -> QueryCost:
        """For G groups on a grid of L points (N = `tree_nodes(L)`, fewer than 2L). Cells: per
        group n and its perturbed node sums of events and censorings (2N); with `dp` its noisy
        per-step events and censorings (2L). Comparisons, `exact` mode: the prelude's, one
        release comparison per group, with two groups or more the log-rank test (the bits and
        leading one of the L pooled risk sets, a binary search of about log₂ L + 1 probes per
        group, and the statistic's rounded ratio and singularity bit, or a pivot test and
        reciprocal for each of G − 1 pivots), the cell keys of every group and the total, and
        8 Legendre bits per node and group (`smpc.prf`). With `dp`: the noise of 2·G·L
        counts and one release comparison per group."""
        groups, grid = self.layout.size, self.grid
        if self.query.dp is not None:
            noise = noise_coins(self.noise["count"], 2 * groups * grid)
            cells = groups * (1 + 2 * grid)
            return QueryCost(cells, prelude_comparisons(self) + noise + groups)
        nodes = len(tree_nodes(grid))
        logrank = 0
        if groups >= 2:
            search = groups * (math.ceil(math.log2(grid)) + 1 if grid > 1 else 1)
            final = rounded_ratios(1, 1) + 1 if groups == 2 else 2 * (groups - 1)
            logrank = 2 * grid + search + final
        legendre = groups * nodes * 2 * COUNT_NOISE_BITS
        compared = (
            prelude_comparisons(self) + groups + logrank + key_decompositions(groups + 1) + legendre
        )
        return QueryCost(groups * (1 + 2 * nodes), compared)

    async def compute(self, mpc: Any, job: PartyJob) -> SurvivalOpened:
        size, grid = self.layout.size, self.grid
        summary = job.summary
        for key in ("at_risk", "events"):
            if len(summary.vectors.get(key, ())) != size * grid:
                raise ValueError(f"local summary's {key!r} does not fit {size} groups × {grid}")
        if self.query.dp is not None:
            return await self.noisy_compute(mpc, job)

        secint = prf.field_type(mpc)
        threshold = self.threshold

        at_risk, events = await self.checked_inputs(mpc, secint, job)
        released = [True] * size
        if threshold > 0:  # a group is released when its n (the risk set at the grid's start)
            n = at_risk[np.arange(size) * grid]  # reaches T: one bit each
            below = await mpc.output(mpc.np_sgn(n - threshold, l=COUNT_BITS + 2, LT=True))
            released = [not int(b) for b in np.asarray(below).ravel()]
        opened = SurvivalOpened(threshold=threshold, released=released, counts=[None] * size)
        if sum(released) >= 2:  # the log-rank test, over the released groups' rows
            opened.logrank = await self.secure_logrank(mpc, at_risk, events, released)
        if any(opened.released):
            await self.perturbed_counts(mpc, secint, job, at_risk, events, opened)
        return opened

    async def secure_logrank(
        self, mpc: Any, at_risk: Any, events: Any, released: list[bool]
    ) -> tuple[float, int] | None:
        """The log-rank statistic over the released groups with rows, every term computed
        inside MPC from the exact pooled counts (`_logrank`); only the statistic is opened.
        With T ≥ 1 every released group has rows; with T = 0 (no disclosure control) the
        bit [n ≥ 1] of each group is opened to leave out the empty ones."""
        size, grid = self.layout.size, self.grid
        compared = [g for g in range(size) if released[g]]
        if self.threshold < 1:
            n = at_risk[np.array(compared) * grid]
            empty = await mpc.output(mpc.np_sgn(n - 1, l=COUNT_BITS + 2, LT=True))
            compared = [
                g for g, e in zip(compared, np.asarray(empty).ravel(), strict=True) if not int(e)
            ]
        if len(compared) < 2:
            return None
        return await _logrank(mpc, at_risk, events, compared, grid)

    async def perturbed_counts(
        self, mpc: Any, secint: Any, job: PartyJob, at_risk: Any, events: Any, opened: Any
    ) -> None:
        """The `exact` mode's curves: every released group's pooled events and censorings
        summed over each node of the tree (`tree_nodes`), each sum plus a perturbation p in
        {−3, …, 3} (the count law of `smpc.cellkey`) from four Legendre bits of the group's key
        (`smpc.prf`), and the group's n plus the cell-key perturbation a `count` of the same
        rows gets; only these are opened (into `opened`)."""
        from smpc.protocol import cell_perturbation, moved_counts

        size, grid = self.layout.size, self.grid
        shown = np.array([g for g in range(size) if opened.released[g]], dtype=int)
        k = len(shown)
        whole = bool(all(opened.released))
        vectors = job.summary.vectors
        if len(vectors.get("key_totals", ())) != size or len(vectors.get("keys", ())) != 2 * size:
            raise ValueError(f"local summary's keys do not fit {size} groups")
        totals = np.array([int(v) for v in vectors["key_totals"]], dtype=object)
        keys = functools.reduce(operator.add, mpc.input(secint.array(totals)))
        nodes = tree_nodes(grid)
        m = len(nodes)
        bits = await prf.legendre_bits(mpc, keys[shown], node_offsets(k, m))
        noise = count_perturbation(bits.reshape(k * m * 2, COUNT_NOISE_BITS))
        kinds = np.arange(k * m) * 2  # (group, node, kind) order: events, then censorings

        index = (shown.reshape(-1, 1) * grid + np.arange(grid)).ravel()
        censored = leaving(at_risk, size, grid) - events
        cells = mpc.np_concatenate((events[index], censored[index])).reshape(2 * k, grid)
        sums = _secure_node_sums(mpc, secint, cells, nodes)  # rows: events of each group, then
        noisy_events = sums[:k].reshape(-1) + noise[kinds]  # censorings of each group
        noisy_censored = sums[k:].reshape(-1) + noise[kinds + 1]

        shift = cell_perturbation(mpc, secint, vectors["keys"], size, shown, whole)
        n = at_risk[shown * grid]
        if whole:
            n = mpc.np_concatenate((n, mpc.np_sum(at_risk[np.arange(size) * grid], keepdims=True)))
        moved = moved_counts(mpc, n, shift.count, opened.threshold, COUNT_BITS + 2)
        both = mpc.np_concatenate((noisy_events, noisy_censored, moved))
        values = [int(v) for v in np.asarray(await mpc.output(both)).ravel()]
        half = k * m
        for j, g in enumerate(shown):
            opened.events.append(values[j * m : (j + 1) * m])
            opened.censored.append(values[half + j * m : half + (j + 1) * m])
            opened.counts[g] = max(0, values[2 * half + j])
        if whole:
            opened.total = max(0, values[-1])

    async def checked_inputs(self, mpc: Any, secint: Any, job: PartyJob) -> tuple[Any, Any]:
        """Every site's at-risk and event counts, checked inside MPC before anything is opened,
        then pooled. Per site, group and grid point t: 0 ≤ e_t ≤ r_t − r_(t+1) (the events at
        t are among the rows leaving the risk set at t, r past the grid being 0; so r never
        grows and is never negative), and each site's rows (its groups' r at the first grid
        point) are at most the rows it declared (`smpc.disclosure.declared_rows`). Every such
        value is shown to be in [0, 2**30) by the bits its party inputs (`smpc.ranges`: cheap
        for a long grid, where a secure comparison per value is not). One bit is opened (and
        the random challenge); a failure is refused naming no site."""
        from smpc.disclosure import declared_rows, inputs_refusal
        from smpc.protocol import SITE_COUNT_BITS
        from smpc.ranges import all_in_range
        from tessera.errors import DisclosureRefused

        size, grid = self.layout.size, self.grid

        def shared(values: list[int]) -> list[Any]:
            return mpc.input(secint.array(np.array(values, dtype=object)))

        site_risk = shared(job.summary.vectors["at_risk"])
        site_events = shared(job.summary.vectors["events"])
        declared = declared_rows(self.schema)
        limits = mpc.input(secint(declared))
        firsts = np.arange(size) * grid
        checks = []
        for risk, events, limit in zip(site_risk, site_events, limits, strict=True):
            censored = leaving(risk, size, grid) - events
            spare = limit - mpc.np_sum(risk[firsts])
            checks.append(mpc.np_concatenate((censored, events, mpc.np_fromlist([spare]))))
        # this party's own copy of the same values, for its bits (`smpc.ranges`)
        risk = np.array(job.summary.vectors["at_risk"], dtype=np.int64)
        events = np.array(job.summary.vectors["events"], dtype=np.int64)
        censored = (leaving(risk, size, grid) - events).astype(np.int64)
        own = np.concatenate((censored, events, [declared - risk[firsts].sum()]))
        if not await all_in_range(mpc, secint, checks, own, SITE_COUNT_BITS):
            what = (
                "a risk set grows, an event count is negative or exceeds the rows leaving, or "
                "the rows exceed the row count it declared"
            )
            raise DisclosureRefused(inputs_refusal(self.name, what), {"rule": "inputs"})
        return (
            functools.reduce(operator.add, site_risk),
            functools.reduce(operator.add, site_events),
        )

    async def noisy_compute(self, mpc: Any, job: PartyJob) -> SurvivalOpened:
        """With `dp`: discrete Laplace noise on every pooled per-step event and censoring count
        (the whole grid, every group), drawn inside MPC; a group is released when its noisy
        row count (the sum of its noisy cells) reaches T, compared inside MPC; then only the
        released groups' noisy counts are opened. Never an exact count, never the noise."""
        size, grid = self.layout.size, self.grid
        spec = self.noise["count"]
        cells = size * grid
        # |noise| < 2**spec.bits per cell; a group's noisy total sums 2·grid of them
        bits = spec.bits + (2 * grid).bit_length() + COUNT_BITS + 2
        secint = mpc.SecInt(max(MOMENT_BITS, bits + 2))

        at_risk, events = await self.checked_inputs(mpc, secint, job)
        noise = discrete_laplace(mpc, secint, [spec] * (2 * cells))
        noisy_events = events + noise[:cells]
        noisy_censored = leaving(at_risk, size, grid) - events + noise[cells:]
        totals = mpc.np_sum((noisy_events + noisy_censored).reshape(size, grid), axis=1)
        threshold = self.threshold
        released = [True] * size
        if threshold > 0:
            below = mpc.np_sgn(totals - threshold, l=bits, LT=True)
            released = [not int(b) for b in np.asarray(await mpc.output(below)).ravel()]
        opened = SurvivalOpened(threshold=threshold, released=released, counts=[None] * size)
        shown = [g for g in range(size) if released[g]]
        index = np.array([g * grid + i for g in shown for i in range(grid)], dtype=int)
        if index.size:
            both = mpc.np_concatenate((noisy_events[index], noisy_censored[index]))
            values = [int(v) for v in np.asarray(await mpc.output(both)).ravel()]
            half = len(index)
            for k, g in enumerate(shown):
                d = values[k * grid : (k + 1) * grid]
                c = values[half + k * grid : half + (k + 1) * grid]
                opened.events.append(d)
                opened.censored.append(c)
                opened.counts[g] = max(0, sum(d) + sum(c))
        if all(released):
            opened.total = sum(int(c or 0) for c in opened.counts)
        return opened

    # ---- after the protocol ----------------------------------------------------------------

    def labels(self) -> list[str]:
        if not self.layout.group_columns:
            return [UNGROUPED]
        return [levels[0] for levels in self.layout.groups]

    def finish(self, opened: Any) -> dict[str, Any]:
        """The curves from the released groups' perturbed (`exact`) or noisy (`dp`) per-step
        counts (post-processing: `consistent_counts`), each truncated where its post-processed
        number at risk drops below T; the log-rank test as computed (always null with `dp`:
        see the module docstring)."""
        assert isinstance(opened, SurvivalOpened)
        groups: dict[str, Any] = {}
        k = 0
        for g, label in enumerate(self.labels()):
            if not opened.released[g]:
                groups[label] = _suppressed()
                continue
            n = int(opened.counts[g] or 0)
            events: Sequence[float] = opened.events[k]
            censored: Sequence[float] = opened.censored[k]
            k += 1
            if self.query.dp is None:  # perturbed node sums → per-step estimates
                events, censored = (step_estimates(v, self.grid) for v in (events, censored))
            at_risk, events = consistent_counts(events, censored, n)
            curve = self.curve(at_risk, events)
            if curve["time"]:
                keep = [i for i, r in enumerate(curve["at_risk"]) if r >= opened.threshold]
                for key in ("time", "survival", "at_risk"):
                    curve[key] = [curve[key][i] for i in keep]
            groups[label] = curve
        logrank: dict[str, Any] = {"statistic": None, "p_value": None, "df": None}
        if opened.logrank is not None:
            from smpc.statistics.tails import chi2_upper

            statistic, df = opened.logrank
            logrank = {
                "statistic": number(statistic),
                "p_value": number(chi2_upper(statistic, df)),
                "df": df,
            }
        return self.with_dp({"n": opened.total, "groups": groups, "logrank": logrank})

    def curve(self, at_risk: list[int], events: list[int]) -> dict[str, Any]:
        """A released group's curve from its numbers at risk and of events at every grid step
        (consistent: the risk set never grows, events at most the risk set)."""
        n = at_risk[0]
        if n == 0:
            return {"n": 0, "time": [], "survival": [], "at_risk": []}
        times, survival, risk = [0], [1.0], [n]
        estimate = 1.0
        length = len(at_risk)
        for i in range(length):
            after = at_risk[i + 1] if i + 1 < length else None
            if after is not None:  # (exact counts: an event always makes the risk set drop)
                observed = at_risk[i] > after or events[i] > 0
            else:  # the prefix's last point: observed unless it is the grid's end, and empty
                observed = length < self.grid or at_risk[i] > 0
            if not observed:
                continue
            estimate *= (at_risk[i] - events[i]) / at_risk[i]
            time = self.first + i
            if time == 0:
                survival[0] = estimate
                continue
            times.append(time)
            survival.append(estimate)
            risk.append(at_risk[i])
        return {"n": n, "time": times, "survival": survival, "at_risk": risk}

    # ---- plaintext oracle -------------------------------------------------------------------

    def reference(self, frame: pd.DataFrame, min_count: int = 0) -> dict[str, Any]:
        """lifelines on the pooled rows, with the same truncation and suppression rules."""
        from lifelines import KaplanMeierFitter
        from lifelines.statistics import multivariate_logrank_test

        from smpc.frames import conform, select
        from tessera.errors import DisclosureRefused

        data = conform(frame, self.schema, self.query.referenced_columns())
        columns = self.query.referenced_columns()
        entering = select(data, self.query.where, self.schema) & data[columns].notna().all(axis=1)
        if self.row_violations(data[entering]):
            raise DisclosureRefused(f"{self.name}: {self.row_rule}", {"rule": "rows"})
        index, events, cells = self.survival_rows(frame)
        times = index + self.first
        groups: dict[str, Any] = {}
        compared: list[int] = []
        sizes = []
        for g, label in enumerate(self.labels()):
            mine = cells == g
            n = int(mine.sum())
            sizes.append(n)
            if n < min_count:
                groups[label] = _suppressed()
                continue
            if n == 0:
                groups[label] = {"n": 0, "time": [], "survival": [], "at_risk": []}
                continue
            compared.append(g)
            fitter = KaplanMeierFitter().fit(times[mine], events[mine])
            table = fitter.event_table
            shown = table.index[table["at_risk"] >= min_count]
            groups[label] = {
                "n": n,
                "time": [int(t) for t in shown],
                "survival": [float(v) for v in fitter.survival_function_.loc[shown].iloc[:, 0]],
                "at_risk": [int(v) for v in table.loc[shown, "at_risk"]],
            }
        suppressed = any(v["n"] is None for v in groups.values())
        logrank: dict[str, Any] = {"statistic": None, "p_value": None, "df": None}
        if len(compared) >= 2:
            rows = np.isin(cells, compared)
            if not _singular(times[rows], events[rows], cells[rows], compared):
                test = multivariate_logrank_test(times[rows], cells[rows], events[rows])
                logrank = {
                    "statistic": float(test.test_statistic),
                    "p_value": float(test.p_value),
                    "df": len(compared) - 1,
                }
        out = {"n": None if suppressed else sum(sizes), "groups": groups, "logrank": logrank}
        return self.with_dp(out)  # with `dp`: the exact, noiseless curves and the `dp` entry

    def plain(self, summaries: list[LocalSummary], frames: list[pd.DataFrame]) -> Any:
        """`compute` of the `exact` mode in plaintext (the tests' and the demo's twin): the same
        release, the same perturbed counts from the same keys; the log-rank statistic from
        lifelines on the pooled rows (the MPC's is rounded to 2**-48)."""
        if self.query.dp is not None:
            return None
        import pandas as pd

        from smpc.protocol import plain_cell_perturbation, plain_moved_count

        rules = self.rules
        assert rules is not None
        size, grid, threshold = self.layout.size, self.grid, rules.threshold
        at_risk, events = (
            np.array([s.vectors[key] for s in summaries], dtype=np.int64)
            .sum(axis=0)
            .reshape(size, grid)
            for key in ("at_risk", "events")
        )
        released = [bool(threshold <= 0 or at_risk[g, 0] >= threshold) for g in range(size)]
        opened = SurvivalOpened(threshold=threshold, released=released, counts=[None] * size)
        censored = (leaving(at_risk.ravel(), size, grid) - events.ravel()).astype(np.int64)
        censored = censored.reshape(size, grid)
        nodes = tree_nodes(grid)
        for g in range(size):
            if not released[g]:
                continue
            key = sum(int(s.vectors["key_totals"][g]) for s in summaries)
            noise_events, noise_censored = node_perturbations(key, len(nodes))
            sums = node_sums(np.stack((events[g], censored[g])), nodes)
            opened.events.append([int(v) for v in sums[0] + noise_events])
            opened.censored.append([int(v) for v in sums[1] + noise_censored])
            p, _, _ = plain_cell_perturbation(summaries, size, [g])
            opened.counts[g] = plain_moved_count(int(at_risk[g, 0]), p, threshold)
        if all(released):
            p, _, _ = plain_cell_perturbation(summaries, size, list(range(size)))
            opened.total = plain_moved_count(int(at_risk[:, 0].sum()), p, threshold)
        compared = [g for g in range(size) if released[g] and at_risk[g, 0] > 0]
        if sum(released) >= 2 and len(compared) >= 2:
            opened.logrank = self.plain_logrank(pd.concat(frames, ignore_index=True), compared)
        return opened

    def plain_logrank(self, frame: pd.DataFrame, compared: list[int]) -> tuple[float, int] | None:
        """lifelines' log-rank statistic of the compared groups (None where the protocol finds
        the covariance singular)."""
        from lifelines.statistics import multivariate_logrank_test

        index, events, cells = self.survival_rows(frame)
        rows = np.isin(cells, compared)
        times = index[rows] + self.first
        if _singular(times, events[rows], cells[rows], compared):
            return None
        test = multivariate_logrank_test(times, cells[rows], events[rows])
        return float(test.test_statistic), len(compared) - 1


def consistent_counts(
    events: Sequence[float], censored: Sequence[float], n: int
) -> tuple[list[int], list[int]]:
    """Numbers at risk and of events per grid step from noisy per-step counts (with `dp`).

    Post-processing only (no ε): the noisy number at risk at step i, Σ_{j ≥ i} of the noisy
    events and censorings (unbiased: each noise has mean 0), is made non-increasing by
    isotonic regression (least squares), rounded, and held within [0, n] (n: the group's
    noisy row count, max(0, ñ), the number at risk at the first step); the noisy cumulative
    number of events is made non-decreasing the same way, rounded and floored at 0, so each
    step's events are ≥ 0; and no step has more events than are at risk. Every survival factor
    1 − d/r then lies in [0, 1], so S(t) is non-increasing within [0, 1]. With noiseless
    counts both fits change nothing. Fitting the cumulative sequences, rather than clamping
    each noisy cell at 0, keeps the numbers at risk nearly unbiased: clamping would add about
    α/(1 − α²) (0.43 at ε = 1) spurious rows per empty step and inflate the risk sets by
    tens on a grid of a hundred steps (Hay et al. 2010 make the same point for histograms).
    """
    from scipy.optimize import isotonic_regression

    d, c = np.asarray(events, dtype=float), np.asarray(censored, dtype=float)
    if not d.size:
        return [], []
    risk = np.cumsum((d + c)[::-1])[::-1]
    risk = np.rint(isotonic_regression(risk, increasing=False).x)
    risk = np.clip(risk, 0, n)
    risk[0] = n
    dead = np.rint(isotonic_regression(np.cumsum(d), increasing=True).x)
    dead = np.maximum(dead, 0)
    steps = np.minimum(np.diff(dead, prepend=0.0), risk)
    return [int(r) for r in risk], [int(v) for v in steps]


def _on_grid(times: np.ndarray, events: np.ndarray, first: int, last: int) -> np.ndarray:
    """Which rows have a whole time within [first, last] and an event of 0 or 1."""
    with np.errstate(invalid="ignore"):
        whole = (times == np.round(times)) & (times >= first) & (times <= last)
    return whole & np.isin(events, (0.0, 1.0))


def _secure_node_sums(mpc: Any, secint: Any, cells: Any, nodes: list[tuple[int, int]]) -> Any:
    """`node_sums` of a secure (rows × grid) array: the steps padded to a power of two with
    zeros, each level the pairwise sums of the one below (local additions), then each node
    picked from its level."""
    rows, grid = cells.shape
    width = 1 << max(0, (grid - 1).bit_length())
    level = cells
    if width > grid:
        pad = secint.array(np.zeros((rows, width - grid), dtype=object))
        level = mpc.np_concatenate((cells, pad), axis=1)
    levels = [level]
    while level.shape[1] > 1:
        level = mpc.np_sum(level.reshape(rows, level.shape[1] // 2, 2), axis=2)
        levels.append(level)
    flat = mpc.np_concatenate(levels, axis=1)
    starts, at = {}, 0
    for h, lv in enumerate(levels):
        starts[h] = at
        at += lv.shape[1]
    picks = []
    for a, b in nodes:
        h = next(h for h in range(len(levels)) if a % (1 << h) == 0 and b - a <= (1 << h))
        picks.append(starts[h] + (a >> h))
    return flat[:, np.array(picks, dtype=int)]


def _suppressed() -> dict[str, Any]:
    return {"n": None, "time": None, "survival": None, "at_risk": None}


async def _logrank(
    mpc: Any, at_risk: Any, events: Any, compared: list[int], grid: int
) -> tuple[float, int] | None:
    """The multivariate log-rank statistic of the compared groups; only it is opened. Per grid
    point the pooled risk set r and events d of the compared groups give, on shares,
    E_a = Σ d·r_a / r and V_ac = Σ d(r − d)·r_a·(δ_ac·r − r_c) / (r²(r − 1)) with the
    reciprocals 2**F / r and 2**F / (r²(r − 1)) from `smpc.rounded.risk_reciprocals`
    (F = `LOGRANK_SCALE`); Z = O − E and V are rounded to 2**-64 and the quadratic form
    Zᵀ V⁻¹ Z of the first G − 1 groups taken as one rounded ratio for two groups
    (`_two_groups`), in secure fixed point for more (`quadratic_form`)."""
    from smpc.rounded import risk_reciprocals

    groups = len(compared)
    one = 1 << LOGRANK_SCALE
    index = np.array([g * grid + i for g in compared for i in range(grid)], dtype=int)
    risk = at_risk[index].reshape(groups, grid)
    died = events[index].reshape(groups, grid)
    r_all = risk.sum(axis=0)
    d_all = died.sum(axis=0)
    u, y = await risk_reciprocals(mpc, r_all, COUNT_BITS, LOGRANK_SCALE)
    expected = risk @ (d_all * u)
    weight = (d_all * (r_all - d_all)) * y
    moments = (risk * weight) @ risk.T
    rows = moments.sum(axis=1)
    z_all = died.sum(axis=1) * one - expected
    v_all = _diagonal_fix(mpc, moments, rows, groups)
    size = groups - 1
    width = COUNT_BITS + LOGRANK_SCALE + 4
    if size == 1:  # two groups: Z²/V as one rounded ratio of exact integers
        return await _two_groups(mpc, z_all[0], v_all[0, 0], width)
    z_fx = to_fixed(mpc, z_all[:size], LOGRANK_SCALE, width, FRACTION_BITS, FIXED_BITS)
    v_fx = to_fixed(
        mpc, v_all[:size, :size].reshape(-1), LOGRANK_SCALE, width, FRACTION_BITS, FIXED_BITS
    )
    v_rows = [v_fx[a * size : (a + 1) * size] for a in range(size)]
    statistic, regular = quadratic_form(mpc, z_fx, v_rows, PIVOT_FLOOR)
    if not int(await mpc.output(regular)):
        return None
    dropped = FIXED_BITS // 2 - OPENED_BITS
    rounded = await mpc.output(mpc.trunc(statistic, f=dropped))
    return math.ldexp(float(rounded), dropped), size


async def _two_groups(mpc: Any, z: Any, v: Any, width: int) -> tuple[float, int] | None:
    """Z²/V of two groups (|Z|, V < 2**width in units of 2**-F, F = `LOGRANK_SCALE`): both
    truncated to units of 2**-64 (`shifted`, an error below t + 1 units), the bit [V ≥
    `PIVOT_FLOOR`] opened (`open_nonnegative`; the statistic is null below it, as the general
    form's pivot rule), then z²/(v·2**64) opened rounded to 25 significant bits inside MPC
    (`open_rounded_ratios`, in an exact field the integers are moved to): no division in
    secure fixed point (MPyC's, with a 256-bit fixed point, took most of the protocol)."""
    from smpc.exact import exact_type
    from smpc.rounded import (
        convert,
        open_nonnegative,
        open_rounded_ratios,
        ratio_field_bits,
        shifted,
    )

    drop = LOGRANK_SCALE - FRACTION_BITS
    top = width - drop + 1  # |z|, v < 2**top in units of 2**-64 (the truncation's error too)
    offset = 1 << width
    pair = await shifted(mpc, mpc.np_fromlist([z + offset, v + offset]), drop, width + 1)
    pair = pair - (offset >> drop)
    floor = int(PIVOT_FLOOR * 2**FRACTION_BITS)
    if not (await open_nonnegative(mpc, pair[1:] - floor, top + 1))[0]:
        return None
    bits = 2 * top + 1  # z² and v·2**64 (v·2**64 < 2**(top + 64) ≤ 2**bits)
    stype = exact_type(mpc, ratio_field_bits(bits))
    lift = 1 << top
    moved = await convert(mpc, pair + lift, stype, top + 1) - lift
    (statistic,) = await open_rounded_ratios(
        mpc, [moved[0] * moved[0]], [moved[1] * (1 << FRACTION_BITS)], bits, nonzero=True
    )
    return None if statistic is None else (statistic, 1)


def _diagonal_fix(mpc: Any, moments: Any, rows: Any, groups: int) -> Any:
    """V = diag(row sums of M) − M, as a secure (groups × groups) array."""
    eye = np.eye(groups, dtype=object)
    return eye * rows.reshape(groups, 1) - moments


def _singular(
    times: np.ndarray, events: np.ndarray, cells: np.ndarray, compared: list[int]
) -> bool:
    """Whether the log-rank covariance of the compared groups (first G − 1) has a pivot below
    PIVOT_FLOOR: the plaintext rule the protocol applies (tests only)."""
    size = len(compared) - 1
    v = [[0.0] * size for _ in range(size)]
    for t in np.unique(times[events]):
        at = times >= t
        r = int(at.sum())
        d = int(((times == t) & events).sum())
        if r < 2:
            continue
        risk = [int((at & (cells == g)).sum()) for g in compared]
        weight = d * (r - d) / (r * r * (r - 1))
        for a in range(size):
            for c in range(size):
                v[a][c] += weight * risk[a] * ((r if a == c else 0) - risk[c])
    for k in range(size):
        if v[k][k] < PIVOT_FLOOR:
            return True
        for j in range(k + 1, size):
            factor = v[j][k] / v[k][k]
            for c in range(k + 1, size):
                v[j][c] -= factor * v[k][c]
    return False
