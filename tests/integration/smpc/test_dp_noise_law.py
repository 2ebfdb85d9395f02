"""The dp noise's law over a thousand samples at each of two scales, drawn inside MPC.

A module of its own (the suite's slowest test, about a minute on two cores): the test workers
take whole modules (`--dist loadfile`), so it runs beside the rest of `test_dp.py`.
"""

from __future__ import annotations

import pytest

from smpc.dp import NoiseSpec

from .test_dp import check_discrete_laplace, draw


@pytest.mark.slow
def test_noise_law_over_a_thousand_samples_of_each_scale() -> None:
    """The law by a chi-square test at two scales (1 000 samples each drawn inside MPC: about
    half a minute; the mean and variance bounds scale with √n, see `check_discrete_laplace`)."""
    specs = [NoiseSpec(1.0, 1), NoiseSpec(0.25, 2)]
    wanted = [{"epsilon": s.epsilon, "sensitivity": s.sensitivity, "count": 1000} for s in specs]
    for samples, spec in zip(draw(wanted), specs, strict=True):
        check_discrete_laplace(samples, spec, p_min=1e-3)
