"""The t-test's plaintext pieces: Welch's test from the κ-scaled sums, and with one more row."""

import numpy as np
import pytest
from scipy import stats

from smpc.encoding import FRAC_BITS
from smpc.statistics.ttest import KAPPA, welch_from_sums, welch_with_one_more


def test_welch_with_one_more_value_is_scipys_test_for_every_candidate() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(30, 5, 40), rng.normal(33, 7, 25)
    candidates = np.array([2.0, 31.5, 119.0])
    t, df = welch_with_one_more(a, b, candidates)
    for x, t_x, df_x in zip(candidates, t, df, strict=True):
        fit = stats.ttest_ind(np.append(a, x), b, equal_var=False)
        assert t_x == pytest.approx(fit.statistic, rel=1e-12)
        assert df_x == pytest.approx(fit.df, rel=1e-12)


def test_welch_from_sums_without_a_pseudo_row_is_scipys_test() -> None:
    """With weight 0 (N = κ·n, S = κ·Σx, Q = κ·Σx²) the κ-scaled formulas are Welch's own."""
    a = np.array([3.0, 4.5, 6.0, 2.5, 5.0])
    b = np.array([7.0, 6.5, 9.0, 8.0])

    def sums(x: np.ndarray) -> tuple[int, int, int]:
        return (
            len(x) * KAPPA,
            round(x.sum() * 2**FRAC_BITS) * KAPPA,
            round((x**2).sum() * 2**FRAC_BITS) * KAPPA,
        )

    t2, df, sign = welch_from_sums(*sums(a), *sums(b))
    fit = stats.ttest_ind(a, b, equal_var=False)
    assert sign == -1 and t2 is not None and df is not None
    assert -(t2**0.5) == pytest.approx(fit.statistic, rel=1e-12)
    assert df == pytest.approx(fit.df, rel=1e-12)
