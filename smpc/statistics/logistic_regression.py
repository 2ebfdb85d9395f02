"""`logistic_regression`: maximum-likelihood logistic regression by Newton's method (IRLS),
as statsmodels `Logit(y, X).fit(method="newton")` with a constant named "const".

The outcome is a 0/1 (or boolean) column: declared bounds beyond [0, 1] are refused at the
query; a selected row with another value is counted by the prelude's row rule inside MPC, so the
refusal names no site. Categorical predictors enter as treatment-coded indicators
``column[level]``; rows with a missing value are dropped; the small-cells rule of linear
regression applies (every level and boolean predictor has ≥ T pooled rows with it and without
it). The protocol per group:

1. counts are pooled and compared with min_count inside MPC (only the bit is opened), and n
   of a released group is opened;
2. starting from β = 0, each iteration every party computes from its own rows, at the current
   public β, its score Xᵀ(y − μ) and Hessian XᵀWX (W = μ(1 − μ)), rounds them to the 2⁻⁴⁰
   fixed-point grid and secret-shares them; the pooled Hessian and score stay secret; the
   Newton step Δ = H⁻¹·score is computed inside MPC by fraction-free Gauss–Jordan in an exact
   prime field and only Δ is opened, rounded down inside MPC to a multiple of 2**-40
   (`smpc.rounded`); β ← β + Δ;
3. iterations stop, as statsmodels', once every |Δ_j| ≤ 1e-8 (at most 35 iterations; a design
   that does not converge — e.g. perfect separation — is refused with a clear error);
4. the standard errors √diag(H⁻¹) at the final β are computed the same way and opened; p-values
   follow from the normal distribution, as statsmodels.

Opening the iterates is the price of keeping each party's rows out of the MPC: it lets every
party evaluate μ on its own rows in the clear. The iterates are the Newton path from 0 to the
published β̂ on the pooled data; each is a function of the pooled Hessian and score at the
previous iterate (aggregates over all hospitals), never of one hospital's data alone.

Cost per iteration: local O(rows · p²); secure O(p³) multiplications in a Mersenne field of
about 2·p·94 bits (3 217 bits up to 10 terms, 4 423 up to 20), p + 1 rounds; typically 4–8
iterations. Limits: at most 20 terms (a categorical predictor counts one per level but the
first); local sums of products below 2**50 ≈ 1.1e15.

Reveals: per released group n, the coefficients, standard errors (p-values follow) and the
number of iterations; which groups are suppressed or have a small cell. Intermediates: every
Newton iterate β_k, and, to the parties only, one bit per elimination (every tolerance, 1 − R²
of a column of the weighted design on the earlier ones, is at least 1e-10), used to refuse
singular designs with one pooled message naming no term or value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from smpc.cellkey import MAGNITUDE_BITS, corners, key_sums, scale_factor
from smpc.cost import NEWTON_STEPS_ESTIMATE, rounded_ratios
from smpc.encoding import FRAC_BITS, KEY_BITS
from smpc.exact import Singular, gauss_jordan, hadamard_bits
from smpc.job import LocalSummary, PartyJob
from smpc.rounded import open_rounded_ratios, ratio_field_bits
from smpc.statistics.base import N_PERTURBED, number
from smpc.statistics.design import (
    BOUND_PAD_BITS,
    ENTRY_BITS,
    SCALE,
    RegressionQuery,
    check_terms,
    design,
    encode_gram,
    indicator_counts,
    singular_refusal,
    symmetric_index,
)
from smpc.statistics.gram import GramOpened, GramStatistic, GroupOutcome, PseudoRow
from tessera.errors import DisclosureRefused, QueryInvalid

if TYPE_CHECKING:
    import pandas as pd

MAX_ITERATIONS = 35
# the pseudo-observation's residual is uniform on ±12·magnitude: (−3, 3) at the default 0.25,
# the count perturbation's range
RESIDUAL_PER_MAGNITUDE = 12
TOLERANCE = 1e-8
STEP_GRID_BITS = 40  # each Newton step is opened rounded down to a multiple of 2**-40


def score_and_hessian(x: np.ndarray, y: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, ...]:
    """Xᵀ(y − μ) and XᵀWX at β for one party's rows (μ = logistic(Xβ), computed stably)."""
    mu = 0.5 * (1.0 + np.tanh(0.5 * (x @ beta)))
    score = x.T @ (y - mu)
    hessian = (x * (mu * (1.0 - mu))[:, None]).T @ x
    return score, hessian


@dataclass
class SiteCounts:
    """One group's count at every site (secure, 1-element arrays of `secint`) and this
    party's own: the per-iteration input checks' n."""

    secint: Any
    counts: list[Any]
    own: int


class LogisticRegressionQuery(RegressionQuery):
    statistic: Literal["logistic_regression"]


class LogisticRegression(GramStatistic):
    name = "logistic_regression"
    query_model = LogisticRegressionQuery
    result_fields = {
        "coefficients": dict[str, float | None],
        "std_errors": dict[str, float | None],
        "p_values": dict[str, float | None],
        "iterations": int | None,
    }
    intermediates = (
        "every Newton iterate of the coefficients (the path from 0 to the estimate); whether "
        "each elimination is singular; per group, one bit: every categorical level and boolean "
        "predictor has at least T rows with it and T without it"
    )
    query: LogisticRegressionQuery
    model = True
    row_rule = "the outcome must be 0 or 1 in every selected row"

    def parameters(self) -> int:
        return len(self.names)

    def opened_per_group(self) -> int:
        """p coefficients and p standard errors, and the p values of every Newton iterate
        (`NEWTON_STEPS_ESTIMATE` of them)."""
        return 2 * self.parameters() + NEWTON_STEPS_ESTIMATE * self.parameters()

    def solve_comparisons(self) -> int:
        """Per Newton step (`NEWTON_STEPS_ESTIMATE`) and for the final covariance: a zero
        test per pivot and p rounded ratios over one denominator."""
        p = self.parameters()
        return (NEWTON_STEPS_ESTIMATE + 1) * (p + rounded_ratios(p, 1))

    def row_violations(self, data: pd.DataFrame) -> int:
        y = data[self.query.outcome].to_numpy(dtype=float)
        return int(((y != 0) & (y != 1)).sum())

    def validate(self) -> None:
        q = self.query
        outcome = self.schema.column(q.outcome)
        assert outcome is not None
        if outcome.type not in ("boolean", "integer", "float"):
            raise QueryInvalid(
                f"logistic_regression: outcome {q.outcome!r} is {outcome.type}; it must be a "
                "0/1 or boolean column",
                {"column": q.outcome},
            )
        low, high = outcome.min, outcome.max
        if (low is not None and low not in (0, 1)) or (high is not None and high not in (0, 1)):
            raise QueryInvalid(  # the declared schema, the same at every node
                f"logistic_regression: outcome {q.outcome!r} is declared with bounds beyond "
                "[0, 1]; it must be a 0/1 or boolean column",
                {"column": q.outcome},
            )
        if q.outcome in q.predictors:
            raise QueryInvalid("logistic_regression: the outcome is also a predictor")
        if len(set(q.predictors)) != len(q.predictors):
            raise QueryInvalid("logistic_regression: a predictor is listed twice")
        check_terms(self.terms, self.name)

    def design_columns(self) -> list[str]:
        return list(self.query.predictors)

    def field_bits(self) -> int:
        p = len(self.names)
        det = hadamard_bits(p, ENTRY_BITS)  # also bounds adj(H)·score and adj(H)_jj·2**40
        return max(2 * det + 48, ratio_field_bits(self.ratio_bits()))

    def ratio_bits(self) -> int:
        return hadamard_bits(len(self.names), ENTRY_BITS) + 1

    # ---- local part: the party keeps its own rows for the iterations ---------------------

    def local_input(self, frame: pd.DataFrame) -> LocalSummary:
        # An outcome other than 0/1 is not refused here (that would name this node): the
        # prelude counts such rows over all sites inside MPC (`row_violations`) and refuses
        # before the protocol uses any row.
        data, groups, keys = self.keyed_selection(frame, keys=True)
        y = data[self.query.outcome].to_numpy(dtype=float)
        x = design(data, self.terms, constant=True)
        size = len(self.layout.groups)
        counts = np.bincount(groups, minlength=size)
        rows = np.column_stack([groups.astype(float), x, y])
        vectors = {"keys": key_sums(keys, groups, size)}
        if self.indicators:
            vectors["indicators"] = indicator_counts(data, groups, size, self.indicators)
        if len(self.free_terms):
            vectors["corners"] = corners(x[:, 1:][:, self.free_terms], groups, size)
        return LocalSummary(
            counts=[int(c) for c in counts], rows=LocalSummary.pack_rows(rows), vectors=vectors
        )

    # ---- the secure part ----------------------------------------------------------------

    async def compute(self, mpc: Any, job: PartyJob) -> GramOpened:
        from smpc.exact import exact_type
        from smpc.protocol import cell_perturbation, release

        threshold = self.threshold
        size = len(self.layout.groups)
        summary = job.summary
        secint = mpc.SecInt(max(KEY_BITS, self.corner_bits() + 2, self.check_bits()))

        def shared(values: list[int]) -> list[Any]:
            return mpc.input(secint.array(np.array(values, dtype=object)))

        site_counts = shared(summary.counts)
        site_corners = shared(summary.vectors["corners"]) if len(self.free_terms) else []
        # every group's perturbation, computed alongside the counts' checks (linear inputs)
        shift = cell_perturbation(
            mpc, secint, summary.vectors["keys"], size, np.arange(size), False
        )
        counts, released = await release(mpc, self, summary.counts, secint, sites=site_counts)
        outcomes = [GroupOutcome(None) for _ in range(size)]
        shown = [g for g in range(size) if released[g]]
        if not shown:
            return GramOpened(threshold, outcomes)
        at = np.array(shown)
        sizes = await self.open_sizes(mpc, counts[at], shift.count[at])
        for g, n in zip(shown, sizes, strict=True):
            outcomes[g].n = n
        fitted = await self.without_small_cells(mpc, job, counts, shown, outcomes)
        solved = []
        for g in fitted:  # too few rows for the model, by the published n
            if (outcomes[g].n or 0) <= len(self.names):
                outcomes[g].values = self.too_few(outcomes[g].n or 0)
            else:
                solved.append(g)
        if not solved:
            return GramOpened(threshold, outcomes)
        stype = exact_type(mpc, self.field_bits())
        extra = await self.pseudo_rows(mpc, stype, secint, site_corners, shift, solved)
        residuals = await self.residuals(mpc, stype, shift, solved)
        rows = job.summary.unpack_rows()
        for i, g in enumerate(solved):
            mine = rows[rows[:, 0] == g] if len(rows) else np.empty((0, len(self.names) + 2))
            try:
                sites = SiteCounts(secint, [c[g : g + 1] for c in site_counts], summary.counts[g])
                outcomes[g].values = await self.fit(
                    mpc, stype, mine[:, 1:-1], mine[:, -1], extra[g], residuals[i : i + 1], sites
                )
            except DisclosureRefused:
                if not self.layout.group_columns:
                    raise
                outcomes[g].values = self.empty_values()  # pooled: the same at every party
        return GramOpened(threshold, outcomes)

    @cached_property
    def iteration_limits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where each checked entry of a site's [Hessian upper triangle, score] sits, and its
        least and greatest value per row of the site (scaled 2**40, rounded outwards): a
        Hessian entry Σ μ(1 − μ)·xⱼxₖ lies in ¼·[min(0, lo), max(0, hi)] of the product xⱼxₖ's
        interval, a score entry Σ xⱼ(y − μ) within ±max|xⱼ|, for the constant and every term
        with declared bounds (`entry_limits`, padded); other terms' entries are not checked."""
        p = len(self.names)
        pad = Fraction(1, 1 << BOUND_PAD_BITS)  # the constant, padded as the bounds are
        bounds: dict[int, tuple[Fraction, Fraction]] = {0: (1 - pad, 1 + pad)}
        for limit in self.limits:
            bounds[limit.term] = (Fraction(limit.low, SCALE), Fraction(limit.high, SCALE))
        index = symmetric_index(p)
        at, lows, highs = [], [], []
        for i in sorted(bounds):
            for j in sorted(bounds):
                if j < i:
                    continue
                (a, b), (c, d) = bounds[i], bounds[j]
                products = [a * c, a * d, b * c, b * d]
                low, high = min(products), max(products)
                if i == j and a <= 0 <= b:
                    low = Fraction(0)
                at.append(int(index[i, j]))
                lows.append(math.floor(min(Fraction(0), low / 4) * SCALE))
                highs.append(math.ceil(max(Fraction(0), high / 4) * SCALE))
        width = p * (p + 1) // 2
        for j in sorted(bounds):
            reach = max(abs(bounds[j][0]), abs(bounds[j][1]))
            at.append(width + j)
            lows.append(math.floor(-reach * SCALE))
            highs.append(math.ceil(reach * SCALE))
        return (
            np.array(at, dtype=np.int64),
            np.array(lows, dtype=object),
            np.array(highs, dtype=object),
        )

    def iteration_checks(self, n: Any, values: Any) -> list[Any]:
        """A site's checked values, each ≥ 0 when its Hessian and score are within the
        declared bounds (`iteration_limits`), along the last axis: the same arithmetic on
        secure arrays (every site's, one row each) or numpy (this party's own)."""
        at, lows, highs = self.iteration_limits
        rows = n[..., np.zeros(len(at), dtype=np.int64)]
        chosen = values[..., at]
        return [chosen - rows * lows + 1, rows * highs - chosen + 1]

    async def check_iteration(self, mpc: Any, sites: SiteCounts, local: list[int]) -> None:
        """Every site's Hessian and score at this iterate within the declared bounds, decided
        inside MPC before the step is opened (`smpc.ranges`, as the Gram input checks); a
        failure is refused naming no site."""
        from smpc.ranges import all_in_range

        secint = sites.secint
        mine = np.array(local, dtype=object)
        shared = mpc.input(secint.array(mine.copy()))
        counts, values = mpc.np_vstack(sites.counts), mpc.np_vstack(shared)
        checks = mpc.np_concatenate(self.iteration_checks(counts, values), axis=1)
        own = np.concatenate(self.iteration_checks(np.array([sites.own], dtype=object), mine))
        if not await all_in_range(mpc, secint, checks, own, self.check_bits()):
            raise DisclosureRefused(
                f"{self.name}: a site's Hessian or score breaks the declared bounds of the "
                "design's columns (checked inside MPC at every iteration against every site's "
                "declared bounds together; which site is not revealed)",
                {"rule": "inputs"},
            )

    async def residuals(self, mpc: Any, stype: Any, shift: Any, at: list[int]) -> Any:
        """The pseudo-row's residuals' numerators m_b = 2**12·u_b (key B's magnitude draw,
        uniform on (−1, 1)) of the groups at `at`, moved to the exact field."""
        from smpc.rounded import convert

        offset = 1 << MAGNITUDE_BITS
        moved = await convert(
            mpc, shift.magnitude_b[np.array(at)] + offset, stype, MAGNITUDE_BITS + 1
        )
        return moved - offset

    async def _pooled_system(
        self,
        mpc: Any,
        stype: Any,
        x: np.ndarray,
        y: np.ndarray,
        beta: np.ndarray,
        sites: SiteCounts | None = None,
    ) -> tuple[Any, Any]:
        from smpc.protocol import pooled

        p = len(self.names)
        score, hessian = score_and_hessian(x, y, beta)
        local = encode_gram(hessian, self.name, self.names)
        local += [round(float(v) * SCALE) for v in score]
        total = pooled(mpc, stype, local)
        if sites is not None:
            await self.check_iteration(mpc, sites, local)
        width = p * (p + 1) // 2
        h = total[:width][symmetric_index(p).ravel()].reshape(p, p)
        return h, total[width:]

    async def _eliminate(self, mpc: Any, augmented: Any) -> tuple[Any, Any]:
        """det(H) and adj(H)·B for `augmented` = [H | B]."""
        p = len(self.names)
        try:
            return await gauss_jordan(mpc, augmented, p, ENTRY_BITS)
        except Singular:
            raise DisclosureRefused(
                singular_refusal(self.name) + " (or the fitted probabilities are all 0 or 1)",
                {"rule": "singular"},
            ) from None

    async def fit(
        self,
        mpc: Any,
        stype: Any,
        x: np.ndarray,
        y: np.ndarray,
        pseudo: PseudoRow,
        residual: Any,
        sites: SiteCounts | None = None,
    ) -> dict[str, Any]:
        """Newton's method on the pooled score plus the cell-key pseudo-row's, g = r·z̃: a
        pseudo-observation at the corner z̃ of `GramStatistic.pseudo_rows` whose residual
        y − μ is fixed at r = 12·magnitude·u_b (u_b: key B's magnitude draw, uniform on
        (−1, 1)): at the default magnitude 0.25 the count perturbation's range (−3, 3), so that
        each level's fitted proportion moves about as much as its perturbed counts would. The
        pooled Hessian is also the Jacobian of score + g: the estimate solves
        Σ xᵢ(yᵢ − μᵢ) + g = 0, found as fast as without it. The standard errors come from
        H + (w/4)·z̃z̃ᵀ at the estimate (the pseudo-row's weight w times the largest μ(1 − μ),
        1/4)."""
        p = len(self.names)
        # on the Gram scale 2**40, with z̃ scaled 2**8 (v), u_b = m_b / 2**12 and the magnitude
        # in 1/256: an integer
        assert self.rules is not None
        scale = RESIDUAL_PER_MAGNITUDE * scale_factor(self.rules.magnitude)
        offset = pseudo.v * residual * (scale << (FRAC_BITS - 16 - MAGNITUDE_BITS))
        beta = np.zeros(p)
        for iteration in range(1, MAX_ITERATIONS + 1):
            h, score = await self._pooled_system(mpc, stype, x, y, beta, sites)
            augmented = mpc.np_hstack((h, (score + offset).reshape(p, 1)))
            det, reduced = await self._eliminate(mpc, augmented)
            numerators = [reduced[j, 0] for j in range(p)]
            step = await open_rounded_ratios(
                mpc, numerators, [det] * p, self.ratio_bits(), grid=STEP_GRID_BITS
            )
            if any(v is None for v in step):  # a step beyond 2**40: it diverges
                break
            delta = np.array([float(v) for v in step])  # type: ignore[arg-type]
            beta = beta + delta
            if not np.all(np.isfinite(beta)):
                break
            if np.all(np.abs(delta) <= TOLERANCE):
                h, _ = await self._pooled_system(mpc, stype, x, y, beta, sites)
                h = h + pseudo.outer(mpc) * stype.field(4).reciprocal()
                identity = stype.array(np.eye(p, dtype=object))
                det, reduced = await self._eliminate(mpc, mpc.np_hstack((h, identity)))
                diagonal = [reduced[j, j] * SCALE for j in range(p)]
                variances = await open_rounded_ratios(mpc, diagonal, [det] * p, self.ratio_bits())
                return self.values(beta, [float(v or 0.0) for v in variances], iteration)
        raise DisclosureRefused(  # pooled: every party saw the same steps
            f"logistic_regression did not converge in {MAX_ITERATIONS} iterations (is the "
            "outcome perfectly separated by a predictor?)",
            {"rule": "converged"},
        )

    # ---- the exact mode's plaintext twin (tests only) ----------------------------------

    def plain(self, summaries: list[LocalSummary], frames: list[pd.DataFrame]) -> Any:
        """What `compute` opens, in plaintext from every party's summary: the same release, n
        + p, the same small-cells and too-few rules, and the same pseudo-row (ω, z̃, u_b from
        the same keys) in a float64 Newton iteration (`penalised_fit`). The MPC's values
        differ by its rounding of every step (to 2**-40) and variance (to 25 significant bits)."""
        if self.query.dp is not None:
            return None
        import pandas as pd

        from smpc.protocol import plain_cell_perturbation, plain_release
        from smpc.statistics.design import small_cells_refusal

        rules = self.rules
        assert rules is not None
        size = len(self.layout.groups)
        data, groups = self.selected(pd.concat(frames, ignore_index=True))
        rows = np.vstack([s.unpack_rows().reshape(-1, len(self.names) + 2) for s in summaries])
        outcomes = [GroupOutcome(None) for _ in range(size)]
        shown = []
        u_b: dict[int, int] = {}  # per shown group, key B's magnitude draw (the residual's)
        for g in range(size):
            ok, n = plain_release(summaries, rules, g)
            if ok:
                p, _, u_b[g] = plain_cell_perturbation(summaries, size, [g])
                outcomes[g].n = max(0, n + p)
                shown.append(g)
        for g in shown:
            if not self.reference_cells_fine(data[groups == g], rules.threshold):
                if not self.layout.group_columns:
                    raise DisclosureRefused(
                        small_cells_refusal(self.name, rules.threshold), {"rule": "cells"}
                    )
                outcomes[g].values = self.empty_values()
        magnitude = scale_factor(rules.magnitude)
        for g in shown:
            if outcomes[g].values:  # small cells: null
                continue
            n = outcomes[g].n or 0
            if n <= len(self.names):
                outcomes[g].values = self.too_few(n)
                continue
            omega, row = self.plain_pseudo_row(summaries, g)
            z = np.array(row, dtype=float) / 256
            w = omega * magnitude / 2**16
            mine = rows[rows[:, 0] == g]
            try:
                outcomes[g].values = self.penalised_fit(
                    mine[:, 1:-1],
                    mine[:, -1],
                    RESIDUAL_PER_MAGNITUDE * magnitude / 256 * u_b[g] / 2**MAGNITUDE_BITS * z,
                    w / 4 * z,
                    z,
                )
            except DisclosureRefused:
                if not self.layout.group_columns:
                    raise
                outcomes[g].values = self.empty_values()
        return GramOpened(rules.threshold, outcomes)

    def penalised_fit(
        self, x: np.ndarray, y: np.ndarray, offset: np.ndarray, u: np.ndarray, v: np.ndarray
    ) -> dict[str, Any]:
        """`fit` in float64: Newton on score + offset, the errors from H + u·vᵀ."""
        p = len(self.names)
        beta = np.zeros(p)
        for iteration in range(1, MAX_ITERATIONS + 1):
            score, h = score_and_hessian(x, y, beta)
            try:
                delta = np.linalg.solve(h, score + offset)
            except np.linalg.LinAlgError:
                raise DisclosureRefused(singular_refusal(self.name), {"rule": "singular"}) from None
            beta = beta + delta
            if not np.all(np.isfinite(beta)) or np.any(np.abs(delta) >= 2.0**40):
                break
            if np.all(np.abs(delta) <= TOLERANCE):
                _, h = score_and_hessian(x, y, beta)
                variances = np.diag(np.linalg.inv(h + np.outer(u, v)))
                return self.values(beta, [float(v) for v in variances], iteration)
        raise DisclosureRefused(
            f"logistic_regression did not converge in {MAX_ITERATIONS} iterations",
            {"rule": "converged"},
        )

    def expected_error(self, rules: Any) -> dict[str, str]:
        if self.query.dp is not None:
            return super().expected_error(rules)
        return {
            "n": N_PERTURBED,
            "other keys": (
                "the maximum-likelihood fit with one pseudo-observation added: at the low or "
                "high declared bound of each column (a column without bounds: the group's own "
                "smallest or largest value; a 0/1 column spread over its levels), with a "
                "residual y − μ fixed at a value within ±"
                f"{RESIDUAL_PER_MAGNITUDE * rules.magnitude:g} (12 × magnitude), "
                "then rounded to 25 significant bits: each level's fitted proportion moves "
                "about as much as its perturbed counts would"
            ),
        }

    def too_few(self, n: int) -> dict[str, Any]:
        p = len(self.names)
        if not self.layout.group_columns:
            raise DisclosureRefused(
                f"logistic_regression: the selected rows of all sites together are too few for "
                f"the model's {p} coefficients (more rows than coefficients are needed)",
                {"rule": "model"},
            )
        return self.empty_values()

    def values(self, beta: np.ndarray, variances: list[float], iterations: int) -> dict[str, Any]:
        from smpc.statistics.tails import normal_two_sided

        out: dict[str, Any] = {"coefficients": {}, "std_errors": {}, "p_values": {}}
        for name, b, v in zip(self.names, beta, variances, strict=True):
            se = v**0.5 if v > 0 else None
            out["coefficients"][name] = number(b)
            out["std_errors"][name] = number(se)
            out["p_values"][name] = None if se is None else number(normal_two_sided(b / se))
        out["iterations"] = iterations
        return out

    def empty_values(self) -> dict[str, Any]:
        return {
            "coefficients": dict.fromkeys(self.names),
            "std_errors": dict.fromkeys(self.names),
            "p_values": dict.fromkeys(self.names),
            "iterations": None,
        }

    def reference_values(self, sub: pd.DataFrame) -> dict[str, Any]:
        import statsmodels.api as sm

        x = design(sub, self.terms, constant=True)
        y = sub[self.query.outcome].to_numpy(dtype=float)
        if len(sub) <= len(self.names):
            return self.too_few(len(sub))
        fit = sm.Logit(y, x).fit(method="newton", disp=False, tol=TOLERANCE, maxiter=35)
        names = self.names
        return {
            "coefficients": {k: number(v) for k, v in zip(names, fit.params, strict=True)},
            "std_errors": {k: number(v) for k, v in zip(names, fit.bse, strict=True)},
            "p_values": {k: number(v) for k, v in zip(names, fit.pvalues, strict=True)},
            "iterations": int(fit.mle_retvals["iterations"]),
        }
