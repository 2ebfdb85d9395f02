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
   prime field and only Δ is opened, rounded inside MPC to 25 significant bits
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
Newton iterate β_k, and, to the parties only, one bit per elimination step (the tolerance, 1 − R²
of a column of the weighted design on the earlier ones, is at least 1e-10), used to refuse
singular designs with one pooled message naming no term or value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from smpc.exact import Singular, gauss_jordan, hadamard_bits
from smpc.job import LocalSummary, PartyJob
from smpc.rounded import open_rounded_ratios, ratio_field_bits
from smpc.statistics.base import number
from smpc.statistics.design import (
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
from smpc.statistics.gram import GramOpened, GramStatistic, GroupOutcome
from tessera.errors import DisclosureRefused, QueryInvalid

if TYPE_CHECKING:
    import pandas as pd

MAX_ITERATIONS = 35
TOLERANCE = 1e-8


def score_and_hessian(x: np.ndarray, y: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, ...]:
    """Xᵀ(y − μ) and XᵀWX at β for one party's rows (μ = logistic(Xβ), computed stably)."""
    mu = 0.5 * (1.0 + np.tanh(0.5 * (x @ beta)))
    score = x.T @ (y - mu)
    hessian = (x * (mu * (1.0 - mu))[:, None]).T @ x
    return score, hessian


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
    cell_key = False  # its own protocol: no pseudo-row (docs/disclosure.md)
    row_rule = "the outcome must be 0 or 1 in every selected row"

    def parameters(self) -> int:
        return len(self.names)

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
        data, groups = self.selected(frame)
        y = data[self.query.outcome].to_numpy(dtype=float)
        x = design(data, self.terms, constant=True)
        size = len(self.layout.groups)
        counts = np.bincount(groups, minlength=size)
        rows = np.column_stack([groups.astype(float), x, y])
        vectors = {}
        if self.indicators:
            vectors["indicators"] = indicator_counts(data, groups, size, self.indicators)
        return LocalSummary(
            counts=[int(c) for c in counts], rows=LocalSummary.pack_rows(rows), vectors=vectors
        )

    # ---- the secure part ----------------------------------------------------------------

    async def compute(self, mpc: Any, job: PartyJob) -> GramOpened:
        from smpc.exact import exact_type
        from smpc.protocol import release

        threshold = self.threshold
        size = len(self.layout.groups)
        counts, released = await release(mpc, self, job.summary.counts)
        outcomes = [GroupOutcome(None) for _ in range(size)]
        shown = [g for g in range(size) if released[g]]
        if not shown:
            return GramOpened(threshold, outcomes)
        opened = await mpc.output(counts[np.array(shown)])
        for g, n in zip(shown, np.asarray(opened).ravel(), strict=True):
            outcomes[g].n = int(n)
        shown = await self.without_small_cells(mpc, job, counts, shown, outcomes)
        stype = exact_type(mpc, self.field_bits())
        rows = job.summary.unpack_rows()
        for g in shown:
            mine = rows[rows[:, 0] == g] if len(rows) else np.empty((0, len(self.names) + 2))
            n = outcomes[g].n or 0
            if n <= len(self.names):
                outcomes[g].values = self.too_few(n)
                continue
            try:
                outcomes[g].values = await self.fit(mpc, stype, mine[:, 1:-1], mine[:, -1])
            except DisclosureRefused:
                if not self.layout.group_columns:
                    raise
                outcomes[g].values = self.empty_values()  # pooled: the same at every party
        return GramOpened(threshold, outcomes)

    async def _pooled_system(
        self, mpc: Any, stype: Any, x: np.ndarray, y: np.ndarray, beta: np.ndarray
    ) -> tuple[Any, Any]:
        from smpc.protocol import pooled

        p = len(self.names)
        score, hessian = score_and_hessian(x, y, beta)
        local = encode_gram(hessian, self.name, self.names)
        local += [round(float(v) * SCALE) for v in score]
        total = pooled(mpc, stype, local)
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

    async def fit(self, mpc: Any, stype: Any, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        p = len(self.names)
        beta = np.zeros(p)
        for iteration in range(1, MAX_ITERATIONS + 1):
            h, score = await self._pooled_system(mpc, stype, x, y, beta)
            det, reduced = await self._eliminate(mpc, mpc.np_hstack((h, score.reshape(p, 1))))
            step = await open_rounded_ratios(
                mpc, [reduced[j, 0] for j in range(p)], [det] * p, self.ratio_bits()
            )
            if any(v is None for v in step):  # a step beyond 2**40: it diverges
                break
            delta = np.array([float(v) for v in step])  # type: ignore[arg-type]
            beta = beta + delta
            if not np.all(np.isfinite(beta)):
                break
            if np.all(np.abs(delta) <= TOLERANCE):
                h, _ = await self._pooled_system(mpc, stype, x, y, beta)
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
        from scipy import stats

        out: dict[str, Any] = {"coefficients": {}, "std_errors": {}, "p_values": {}}
        for name, b, v in zip(self.names, beta, variances, strict=True):
            se = v**0.5 if v > 0 else None
            out["coefficients"][name] = number(b)
            out["std_errors"][name] = number(se)
            out["p_values"][name] = None if se is None else number(2 * stats.norm.sf(abs(b) / se))
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
