"""The p-value tails a party computes without importing scipy.stats agree with scipy.stats."""

import numpy as np
import pytest
from scipy import stats

from smpc.statistics.tails import chi2_upper, normal_two_sided, t_two_sided


@pytest.mark.parametrize("t", [-40.0, -3.2, -0.5, 0.0, 0.7, 2.1, 9.0])
@pytest.mark.parametrize("df", [1.0, 2.5, 12.7, 140.0, 2997.0])
def test_t_two_sided_is_scipy_stats(t: float, df: float) -> None:
    assert t_two_sided(t, df) == 2 * stats.t.sf(abs(t), df)


@pytest.mark.parametrize("z", [-12.0, -1.96, 0.0, 0.3, 3.2, 40.0])
def test_normal_two_sided_is_scipy_stats(z: float) -> None:
    assert normal_two_sided(z) == 2 * stats.norm.sf(abs(z))


@pytest.mark.parametrize("x", [0.0, 0.271, 3.84, 7.5, 122.0])
@pytest.mark.parametrize("df", [1, 3, 8])
def test_chi2_upper_is_scipy_stats(x: float, df: int) -> None:
    assert chi2_upper(x, df) == stats.chi2.sf(x, df)


def test_chi2_statistic_is_scipys_contingency_test() -> None:
    """`Chi2._values` computes the statistic itself; on random tables it is scipy's."""
    from smpc.statistics import compile_query
    from tessera.schemas import DatasetSchema

    schema = DatasetSchema.model_validate(
        {
            "columns": [
                {"name": "a", "type": "categorical", "levels": ["x", "y", "z"]},
                {"name": "b", "type": "categorical", "levels": ["u", "v", "w", "s"]},
            ]
        }
    )
    chi2 = compile_query({"dataset": "d", "statistic": "chi2", "rows": "a", "columns": "b"}, schema)
    rng = np.random.default_rng(3)
    for _ in range(50):
        table = rng.integers(1, 400, 12)
        fit = stats.chi2_contingency(table.reshape(3, 4), correction=False)
        values = chi2._values(table)
        assert values["statistic"] == pytest.approx(fit.statistic, rel=1e-12)
        assert values["p_value"] == pytest.approx(fit.pvalue, rel=1e-9, abs=1e-300)
        assert values["df"] == 6
