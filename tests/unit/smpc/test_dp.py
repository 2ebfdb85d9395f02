"""The DP mechanism's parameters, exactly: the sampler's distribution, sensitivity, clipping.

The coins' rounded probabilities define the implemented noise distribution exactly; it is
computed here in 60-digit decimals and compared with the ideal discrete Laplace. The MPC
sampler itself is checked statistically in tests/integration/smpc/test_dp.py.
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import numpy as np
import pandas as pd
import pytest

from smpc import local_summary, prepare, reference
from smpc.dp import GRID, NoiseSpec, grid_value, noise_plan, sum_sensitivity
from smpc.encoding import FRAC_BITS
from tessera.errors import QueryInvalid
from tessera.schemas import ColumnSpec, DatasetSchema

SCHEMA = DatasetSchema(
    columns=[
        ColumnSpec(name="x", type="float", min=0, max=10),
        ColumnSpec(name="y", type="float"),
        ColumnSpec(name="g", type="categorical", levels=["a", "b"]),
    ]
)


def implemented_tv(spec: NoiseSpec) -> Decimal:
    """Total variation between the sampler's exact output law and the discrete Laplace."""
    with localcontext() as ctx:
        ctx.prec = 60
        k = spec.precision
        q = [Decimal(c) / Decimal(2**k) for c in spec.thresholds(k)]
        size = 2**spec.bits
        px = []
        for x in range(size):
            p = Decimal(1)
            for i, qi in enumerate(q):
                p *= qi if (x >> i) & 1 else 1 - qi
            px.append(p)
        pz = [Decimal(0)] * (2 * size - 1)  # Z = X − Y, index z + size − 1
        for x, a in enumerate(px):
            for y, b in enumerate(px):
                pz[x - y + size - 1] += a * b
        alpha = (-Decimal(spec.epsilon) / Decimal(spec.sensitivity)).exp()
        norm = (1 - alpha) / (1 + alpha)
        diff = sum(abs(p - norm * alpha ** abs(z - size + 1)) for z, p in enumerate(pz))
        tail = 2 * alpha**size / (1 + alpha)  # ideal mass the sampler never draws
        return (diff + tail) / 2


@pytest.mark.parametrize(("epsilon", "sensitivity"), [(1.0, 1), (5.0, 1), (0.3, 2)])
def test_the_sampler_is_within_the_documented_slack_of_the_discrete_laplace(
    epsilon: float, sensitivity: int
) -> None:
    spec = NoiseSpec(epsilon, sensitivity)
    tv = implemented_tv(spec)
    # (1 + e^ε) · TV is the δ the implementation adds to pure ε-DP: at most 2^-64
    assert tv * Decimal(1 + math.exp(epsilon)) <= Decimal(2) ** -64
    assert tv > 0  # the bound is about a real (truncated, rounded) sampler


def implemented_log_pmf(spec: NoiseSpec) -> np.ndarray:
    """log P(X = x), x in [0, 2^B), of one geometric as the sampler draws it (float64)."""
    k = spec.precision
    x = np.arange(2**spec.bits)
    log_p = np.full(len(x), -spec.fair_digits * math.log(2))  # fair low digits
    for i, c in enumerate(spec.thresholds(k), start=spec.fair_digits):
        q = c / 2**k
        log_p += np.where((x >> i) & 1, math.log(q), math.log1p(-q))
    return log_p


def test_fair_low_digits_keep_the_noise_epsilon_dp() -> None:
    """With h fair low digits the law is a staircase; calibrated to Δ + 2^h − 1 it is ε-DP."""
    from scipy.signal import fftconvolve

    spec = NoiseSpec(4.0, 4096)
    assert (spec.fair_digits, spec.width) == (2, 4099)
    px = np.exp(implemented_log_pmf(spec) - implemented_log_pmf(spec).max())
    pz = fftconvolve(px, px[::-1])  # Z = X − Y
    worst = 0.0
    for d in (1, 3, 4, 5, 2048, 4095, 4096):
        a, b = pz[:-d], pz[d:]
        seen = (a > 1e-10 * pz.max()) & (b > 1e-10 * pz.max())
        worst = max(worst, float(np.max(np.maximum(a[seen] / b[seen], b[seen] / a[seen]))))
    assert worst <= math.exp(spec.epsilon) * (1 + 1e-5)
    assert worst >= math.exp(spec.epsilon) * 0.99  # the bound is attained: the test can fail


def test_parameters_follow_the_docstring() -> None:
    spec = NoiseSpec(1.0, 1)
    assert (spec.bits, spec.precision, spec.fair_digits) == (6, 71, 0)  # α^64 ≤ 2^-69 < α^32
    big = NoiseSpec(0.5, sum_sensitivity((0.0, 100.0)), GRID)  # a mean's Σx, x in [0, 100]
    assert big.fair_digits == 36 and 2**36 <= big.sensitivity / 2**10 < 2**37
    rate = big.epsilon / big.width
    slack = math.ceil(math.log2(1 + math.exp(0.5)))
    assert 2**big.bits * rate >= (67 + slack) * math.log(2) > 2 ** (big.bits - 1) * rate
    assert 200.0 < big.scale < 200.0 * (1 + 2**-10)  # widened by at most 2^-10
    assert big.variance == pytest.approx(2 * big.scale**2, rel=1e-6)  # ≈ 2b² on a fine grid
    thresholds = big.thresholds(big.precision)
    assert len(thresholds) == big.bits - 36  # only the high digits are biased coins
    assert all(0 < c < 2 ** (big.precision - 1) for c in thresholds)
    assert thresholds == sorted(thresholds, reverse=True)  # higher digits are rarer


def test_sensitivity_of_a_clipped_sum_is_exact_on_the_grid() -> None:
    assert sum_sensitivity((-5.0, 3.0)) == 5 << FRAC_BITS
    assert sum_sensitivity((0.0, 0.1)) == grid_value(0.1) == round(0.1 * 2**FRAC_BITS)
    assert sum_sensitivity((0.0, 0.0)) == 1


def test_epsilon_splits_between_count_and_sum() -> None:
    plan = noise_plan(1.0, ("sum",), (0.0, 10.0))
    assert {k: s.epsilon for k, s in plan.items()} == {"count": 0.5, "sum": 0.5}
    assert plan["sum"].unit == GRID and plan["sum"].scale == pytest.approx(20.0, rel=2**-10)
    assert {k: s.epsilon for k, s in noise_plan(1.0, (), None).items()} == {"count": 1.0}


def test_an_epsilon_too_small_for_the_secure_range_is_refused() -> None:
    with pytest.raises(QueryInvalid, match="too small"):
        prepare(
            {"statistic": "sum", "dataset": "d", "column": "x", "dp": {"epsilon": 1e-12}}, SCHEMA
        )


def test_local_input_clips_to_the_declared_bounds_and_rounds_each_row() -> None:
    frame = pd.DataFrame(
        {"x": [-5.0, 3.3, 12.0, 7.25, np.nan], "g": ["a", "a", "b", "b", "a"], "y": 0.0}
    )
    query = {"statistic": "mean", "dataset": "d", "column": "x", "group_by": ["g"]}
    noisy = local_summary(prepare({**query, "dp": {"epsilon": 1.0}}, SCHEMA), frame, SCHEMA)
    assert noisy.counts == [2, 2]
    assert noisy.moments["sum"] == [
        grid_value(0.0) + grid_value(3.3),
        grid_value(10.0) + grid_value(7.25),
    ]
    exact = local_summary(prepare(query, SCHEMA), frame, SCHEMA)  # without dp: no clipping
    assert exact.moments["sum"][1] == round((12.0 + 7.25) * 2**FRAC_BITS)


def test_reference_of_a_dp_query_is_the_noiseless_clipped_result() -> None:
    frame = pd.DataFrame({"x": [-5.0, 3.0, 12.0, 7.0], "g": ["a", "a", "b", "b"], "y": 0.0})
    result = reference(
        {"statistic": "mean", "dataset": "d", "column": "x", "dp": {"epsilon": 2.0}},
        frame,
        SCHEMA,
    )
    assert result["n"] == 4 and result["mean"] == pytest.approx((0 + 3 + 10 + 7) / 4)
    assert result["dp"] == {
        "epsilon": 2.0,
        "delta": 0.0,
        "mechanism": "discrete_laplace",
        "epsilon_split": {"count": 1.0, "sum": 1.0},
        "noise_scale": {"count": 1.0, "sum": pytest.approx(10.0, rel=2**-10)},
    }
