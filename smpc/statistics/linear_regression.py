"""`linear_regression`: ordinary least squares, as statsmodels OLS with a constant named "const".

Each party shares its fixed-point Gram matrix of Z = [1, predictors…, outcome] per group
(`smpc.statistics.gram`). Inside MPC, in an exact prime field, the normal equations are solved
without opening the Gram matrix: fraction-free Gauss–Jordan on [XᵀX | Xᵀy | I] yields
det(XᵀX), adj(XᵀX)·Xᵀy and adj(XᵀX), from which, still as secrets,

- the coefficients β_j = (adj·Xᵀy)_j / det,
- the residual sum of squares times det, q = det·yᵀy − (Xᵀy)ᵀ·adj·Xᵀy,
- the squared standard errors SE_j² = q · adj_jj / (det² · (n − p)),
- R² = 1 − RSS / TSS with RSS/TSS = n·q / (det · (n·yᵀy − (Σy)²)).

Only these ratios are opened (R² as (det·TSS − n·q) / (det·TSS)), each divided inside MPC and
rounded to 25 significant bits (`smpc.rounded`); p-values
come from Student's t with n − p degrees of freedom, as statsmodels. Categorical predictors
enter as treatment-coded indicators named ``column[level]``; rows with a missing value are
dropped. Disclosure control beyond the prelude's rules (the model rule counts p coefficients):
every categorical level (the reference level too) and every boolean predictor must have at
least T pooled rows with it and T without it, decided inside MPC with one bit per group (a
failing query is refused naming nothing; a failing group's model is null). A singular (or
numerically singular) design is refused by one pooled message that names no term, node or
tolerance (with `group_by`, that group's model is null).

Cost: local O(rows · p²); secure O(p³) multiplications in a Mersenne field of about
4·p·94 bits (p = terms + 1: 4 423 bits up to 10 terms, 9 689 up to 20), p + 4 rounds,
independent of rows and nearly of parties. Limits: at most 20 terms (a categorical predictor
counts one per level but the first; beyond that the big-field arithmetic takes minutes),
local sums of products below 2**50 ≈ 1.1e15, n − p ≥ 1.

With `dp` (noisy sufficient statistics, `smpc.statistics.gram`): every column of the model
needs declared bounds; the noisy n and the noisy entries of the Gram matrix of [1, predictors…,
outcome] (clipped, numeric terms centred) are opened, at ε/K each for K noised entries, and OLS
is solved on them in plaintext after the positive definite projection (post-processing: no
singularity or small-cells refusal, a null model only where the noisy n ≤ p). The standard
errors add the noise's own variance to the usual σ̂²·(XᵀX)⁻¹, to first order (delta method,
at the noisy estimates, with the noise's public variances): they describe the uncertainty of
the released coefficients about the population, not only the sampling's, and are approximate
when the noise is not small against the data (small n or ε). p-values use them with Student's
t on n − p degrees of freedom; R² is 1 − RSS/TSS of the noisy statistics, within [0, 1].

Reveals: per released group n, the coefficients, their standard errors and R² (p-values follow
from them), rounded to 25 significant bits; which groups are suppressed or have a small cell.
Intermediate, to the parties only: per elimination one bit, whether every predictor's
tolerance (1 − R² of that column on the constant and the earlier predictors, uncentred) is at
least 1e-10, used to refuse singular designs; no tolerance appears in any message or result.
With `dp`: per released group the noisy n and the noisy Gram entries (everything in the result
is computed from them), and which groups' noisy n is below the threshold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from smpc.cost import rounded_ratios
from smpc.exact import Singular, gauss_jordan, hadamard_bits
from smpc.rounded import open_rounded_ratios
from smpc.statistics.base import number
from smpc.statistics.design import (
    ENTRY_BITS,
    SCALE,
    RegressionQuery,
    check_terms,
    singular_refusal,
)
from smpc.statistics.gram import GramStatistic, PseudoRow
from tessera.errors import DisclosureRefused, QueryInvalid

if TYPE_CHECKING:
    import pandas as pd


class LinearRegressionQuery(RegressionQuery):
    statistic: Literal["linear_regression"]


class LinearRegression(GramStatistic):
    name = "linear_regression"
    query_model = LinearRegressionQuery
    result_fields = {
        "coefficients": dict[str, float | None],
        "std_errors": dict[str, float | None],
        "p_values": dict[str, float | None],
        "r_squared": float | None,
    }
    intermediates = (
        "whether the design is singular (each elimination step's pivot is zero or not); per "
        "group, one bit: every categorical level and boolean predictor has at least T rows with "
        "it and T without it"
    )
    query: LinearRegressionQuery
    model = True
    supports_dp = True  # noisy sufficient statistics: the Gram matrix's entries (ε/K each)

    def parameters(self) -> int:
        return len(self.coefficient_names)

    def opened_per_group(self) -> int:
        """p coefficients, p standard errors and R²."""
        return 2 * self.parameters() + 1

    def solve_comparisons(self) -> int:
        """A zero test per Gauss–Jordan pivot, then 2p + 1 rounded ratios over three
        denominators (det, the standard errors', R²'s)."""
        p = self.parameters()
        return p + rounded_ratios(2 * p + 1, 3)

    def validate(self) -> None:
        q = self.query
        outcome = self.schema.column(q.outcome)
        assert outcome is not None
        if not outcome.is_numeric and outcome.type != "boolean":
            raise QueryInvalid(
                f"linear_regression: outcome {q.outcome!r} is {outcome.type}, not numeric",
                {"column": q.outcome},
            )
        if q.outcome in q.predictors:
            raise QueryInvalid("linear_regression: the outcome is also a predictor")
        if len(set(q.predictors)) != len(q.predictors):
            raise QueryInvalid("linear_regression: a predictor is listed twice")
        check_terms(self.terms, self.name)

    def design_columns(self) -> list[str]:
        return [*self.query.predictors, self.query.outcome]

    @property
    def coefficient_names(self) -> list[str]:
        return self.names[:-1]

    def ratio_bits(self) -> int:
        """Bits of the largest |numerator| or denominator the statistic opens a ratio of."""
        p = len(self.coefficient_names)
        det = hadamard_bits(p, ENTRY_BITS)  # det(XᵀX), and each entry of adj(XᵀX)·Xᵀy
        adj = hadamard_bits(p - 1, ENTRY_BITS)
        q = det + ENTRY_BITS + p.bit_length() + 2
        return max(q + adj + 45, 2 * det + ENTRY_BITS + 1, det + 2 * ENTRY_BITS + 2) + 1

    def field_bits(self) -> int:
        from smpc.exact import field_exponent
        from smpc.rounded import ratio_field_bits

        p = len(self.coefficient_names)
        det = hadamard_bits(p, ENTRY_BITS)
        bits = max(ratio_field_bits(self.ratio_bits()), 2 * det + ENTRY_BITS + 8)
        field_exponent(bits)
        return bits

    async def solve(
        self,
        mpc: Any,
        matrix: Any,
        n: int,
        compare: Any = None,
        hidden: set[tuple[int, int]] | None = None,
        pseudo: PseudoRow | None = None,
    ) -> dict[str, Any]:
        """Gauss–Jordan on the unperturbed [XᵀX | Xᵀy | a | I] (its singularity checks on the
        data's own design); the cell-key pseudo-row u·vᵀ then enters exactly by the matrix
        determinant lemma and Sherman–Morrison, in adjugate form (see `_with_pseudo_row`)."""
        import numpy as np

        names = self.coefficient_names
        p = len(names)
        if n <= p:
            return self.too_few(n, p)
        gram = matrix[:p, :p]
        xty = matrix[:p, p : p + 1]
        yty = matrix[p, p]
        sum_y = matrix[0, p]
        n_scaled = matrix[0, 0]
        stype = type(matrix).sectype
        identity = stype.array(np.eye(p, dtype=object))
        blocks = [gram, xty]
        if pseudo is not None:
            blocks += [pseudo.u[:p].reshape(p, 1), pseudo.v[:p].reshape(p, 1)]
        augmented = mpc.np_hstack((*blocks, identity))
        try:
            det, reduced = await gauss_jordan(mpc, augmented, p, ENTRY_BITS)
        except Singular:
            if self.layout.group_columns:
                return self.empty_values()
            raise DisclosureRefused(singular_refusal(self.name), {"rule": "singular"}) from None
        adj_xty = reduced[:, 0]
        adj_diagonal = mpc.np_fromlist([reduced[j, (3 if pseudo else 1) + j] for j in range(p)])
        if pseudo is not None:
            det, adj_xty, adj_diagonal, xty, yty, sum_y, n_scaled = self._with_pseudo_row(
                mpc, pseudo, det, reduced, xty[:, 0], yty, sum_y, n_scaled
            )
            xty = xty.reshape(p, 1)
        q = det * yty - mpc.sum([xty[j, 0] * adj_xty[j] for j in range(p)])
        se_den = det * det * (n_scaled - p * SCALE)
        r2_den = det * (n_scaled * yty - sum_y * sum_y)
        numerators = [adj_xty[j] for j in range(p)]
        numerators += [q * adj_diagonal[j] * SCALE for j in range(p)]
        numerators.append(r2_den - n_scaled * q)  # R² = 1 − RSS/TSS, as one ratio
        denominators = [det] * p + [se_den] * p + [r2_den]
        ratios = await open_rounded_ratios(mpc, numerators, denominators, self.ratio_bits())
        beta, se_sq, r2 = ratios[:p], ratios[p : 2 * p], ratios[2 * p]
        return self.values(beta, se_sq, r2, n)

    @staticmethod
    def _with_pseudo_row(
        mpc: Any,
        pseudo: PseudoRow,
        det: Any,
        reduced: Any,
        xty: Any,
        yty: Any,
        sum_y: Any,
        n_scaled: Any,
    ) -> tuple[Any, ...]:
        """The perturbed G′ = G + u·vᵀ (u = w·v) from G's det d and adjugate A (columns of
        `reduced`: A·Xᵀy, b = A·uₓ, a = A·vₓ, then A): d′ = d + vₓᵀb (the determinant lemma),
        adj(G′) = (d′·A − b·aᵀ) / d (Sherman–Morrison times d′; A is symmetric), so
        adj(G′)·c′ = (d′·(A·c + b·v_y) − b·(aᵀc′)) / d with c′ = c + uₓ·v_y. The division by d
        is exact (adj(G′) is an integer matrix): one secure reciprocal, which opens d times a
        fresh random factor only. Returns d′, adj(G′)·c′, the diagonal of adj(G′) and the
        perturbed Xᵀy, yᵀy, Σy and n."""
        p = reduced.shape[0]
        u, v = pseudo.u, pseudo.v
        adj_c, b, a = reduced[:, 0], reduced[:, 1], reduced[:, 2]
        diagonal = mpc.np_fromlist([reduced[j, 3 + j] for j in range(p)])
        y_v = v[p]
        det_new = det + mpc.np_sum(v[:p] * b)
        xty_new = xty + u[:p] * y_v
        inverse = mpc.reciprocal(det)
        a_c = mpc.np_sum(a * xty_new)
        adj_c_new = (det_new * (adj_c + b * y_v) - b * a_c) * inverse
        diagonal_new = (det_new * diagonal - b * a) * inverse
        return (
            det_new,
            adj_c_new,
            diagonal_new,
            xty_new,
            yty + u[p] * y_v,
            sum_y + u[0] * y_v,
            n_scaled + u[0] * v[0],
        )

    def noisy_values(self, gram: Any, n: int) -> dict[str, Any]:
        """OLS on the noisy Gram matrix (post-processing). The covariance of the coefficients
        adds to the usual σ̂²·(XᵀX)⁻¹ the noise's own, to first order (delta method):
        β = A⁻¹c moves by A⁻¹(e_c − E_A·β) for noise E_A on A = XᵀX and e_c on c = Xᵀy."""
        import numpy as np

        p = len(self.coefficient_names)
        if n <= p:
            return self.too_few(n, p)
        a, c, yy = gram[:p, :p], gram[:p, p], gram[p, p]
        inverse = np.linalg.inv(a)
        beta = inverse @ c
        rss = max(float(yy - c @ beta), 0.0)
        tss = float(yy - c[0] ** 2 / a[0, 0])
        r2 = min(max(1 - rss / tss, 0.0), 1.0) if tss > 0 else None
        # each noise variable's weight in u = e_c − E_A·β, then Cov(u) and Cov(A⁻¹u)
        weights = np.zeros((len(self.dp_entries), p))
        variances = np.zeros(len(self.dp_entries))
        for i in range(p):
            for j in range(p + 1):
                noise = self.noise_variance(i, j)
                if noise is not None:
                    at, variances[at] = noise
                    weights[at, i] += 1.0 if j == p else -beta[j]
        noise_cov = inverse @ (weights.T * variances) @ weights @ inverse
        cov = rss / (n - p) * inverse + noise_cov
        # back from centred terms: const = β₀′ + c_y − Σ cⱼβⱼ, the slopes unchanged
        shift = np.eye(p)
        shift[0, 1:] = -self.centres[1:p]
        coefficients = shift @ beta
        coefficients[0] += self.centres[p]
        cov = shift @ cov @ shift.T
        se_sq = [float(v) for v in np.diag(cov)]
        return self.values([float(b) for b in coefficients], se_sq, r2, n)

    def plain_values(self, gram: Any, n: int, entry: dict[str, Any]) -> dict[str, Any]:
        """`solve` in plaintext, exactly: β = A⁻¹c, RSS = yᵀy − cᵀβ, SEⱼ² = RSS·(A⁻¹)ⱼⱼ /
        (n′ − p) and R² = 1 − RSS / (yᵀy − (Σy)²/n′), n′ the matrix's (perturbed) n."""
        from smpc.exact import fraction_inverse

        p = len(self.coefficient_names)
        if n <= p:
            return self.too_few(n, p)
        a = [row[:p] for row in gram[:p]]
        c = [gram[i][p] for i in range(p)]
        inverse = fraction_inverse(a)
        beta = [sum(inverse[i][j] * c[j] for j in range(p)) for i in range(p)]
        rss = gram[p][p] - sum(ci * bi for ci, bi in zip(c, beta, strict=True))
        size = gram[0][0]
        se_sq = [rss * inverse[j][j] / (size - p) for j in range(p)]
        r2 = 1 - rss / (gram[p][p] - gram[0][p] ** 2 / size)
        return self.values(beta, se_sq, r2, n)

    def too_few(self, n: int, p: int) -> dict[str, Any]:
        if not self.layout.group_columns:
            raise DisclosureRefused(
                f"linear_regression: the selected rows of all sites together are too few for "
                f"the model's {p} coefficients (more rows than coefficients are needed)",
                {"rule": "model"},
            )
        return self.empty_values()

    def values(self, beta: list[Any], se_sq: list[Any], r2: Any, n: int) -> dict[str, Any]:
        from smpc.statistics.tails import t_two_sided

        names = self.coefficient_names
        df = n - len(names)
        out: dict[str, Any] = {"coefficients": {}, "std_errors": {}, "p_values": {}}
        for name, b, s2 in zip(names, beta, se_sq, strict=True):
            se = float(s2) ** 0.5 if s2 is not None and s2 >= 0 else None
            out["coefficients"][name] = number(b)
            out["std_errors"][name] = number(se)
            if se is None or se == 0:
                out["p_values"][name] = None
            else:
                out["p_values"][name] = number(t_two_sided(float(b) / se, df))
        out["r_squared"] = number(r2)
        return out

    def empty_values(self) -> dict[str, Any]:
        names = self.coefficient_names
        return {
            "coefficients": dict.fromkeys(names),
            "std_errors": dict.fromkeys(names),
            "p_values": dict.fromkeys(names),
            "r_squared": None,
        }

    def reference_values(self, sub: pd.DataFrame) -> dict[str, Any]:
        import statsmodels.api as sm

        from smpc.statistics.design import design

        z = design(sub, self.terms, constant=True)
        names = self.coefficient_names
        if len(sub) <= len(names):
            return self.too_few(len(sub), len(names))
        fit = sm.OLS(z[:, -1], z[:, :-1]).fit()
        return {
            "coefficients": {k: number(v) for k, v in zip(names, fit.params, strict=True)},
            "std_errors": {k: number(v) for k, v in zip(names, fit.bse, strict=True)},
            "p_values": {k: number(v) for k, v in zip(names, fit.pvalues, strict=True)},
            "r_squared": number(fit.rsquared),
        }
