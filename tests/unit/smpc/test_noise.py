"""Distributed discrete Gaussian noise (`smpc.noise`): the exact sampler, the calibration to
the honest parties, and the privacy bound of a sum of shares."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from smpc.noise import (
    MIN_SHARE_SIGMA,
    discrete_gaussian,
    honest,
    opened_sigma,
    share_variance,
    sum_rho,
    tau,
    threshold,
)


def test_the_sampler_draws_integers_with_the_asked_variance() -> None:
    variance = Fraction(36)
    draws = discrete_gaussian(variance, 20_000)
    assert draws.dtype == np.int64
    assert abs(draws.mean()) < 0.25  # 6 standard errors of the mean (sd 6 / sqrt(20 000))
    # a discrete Gaussian's variance is within exp(-2 pi^2 sigma^2)-ish of its parameter
    assert abs(draws.var() / 36 - 1) < 0.05
    # the discrete Gaussian's tails: P(|x| > 12) from its mass function, within 5 standard errors
    support = np.arange(-200, 201)
    mass = np.exp(-(support**2) / 72.0)
    tail = float(mass[np.abs(support) > 12].sum() / mass.sum())
    assert abs(float(np.mean(np.abs(draws) > 12)) - tail) < 5 * np.sqrt(tail / 20_000)


def test_the_sampler_is_the_discrete_gaussian_law_on_small_values() -> None:
    variance = Fraction(1)
    draws = discrete_gaussian(variance, 30_000)
    support = np.arange(-6, 7)
    weights = np.exp(-(support**2) / 2.0)
    expected = weights / weights.sum()
    observed = np.array([np.mean(draws == k) for k in support])
    assert np.all(np.abs(observed - expected) < 0.015)  # over 5 standard errors


def test_each_party_draws_the_honest_parties_share_of_the_variance() -> None:
    assert (threshold(3), honest(3)) == (1, 2)
    assert (threshold(5), honest(5)) == (2, 3)
    sigma = 40.0
    for parties in (3, 4, 5, 7):
        variance = share_variance(sigma, parties)
        # the noise of the parties outside any coalition of t parties reaches sigma
        assert honest(parties) * float(variance) >= sigma**2
        assert honest(parties) * float(variance) < sigma**2 + honest(parties) * 1e-3 + 1e-9
        # what everyone else sees is wider: sqrt(m / h) times
        assert opened_sigma(variance, parties) == pytest.approx(
            sigma * math.sqrt(parties / honest(parties)), rel=1e-4
        )


def test_a_share_never_goes_below_its_floor() -> None:
    assert float(share_variance(0.5, 3)) == pytest.approx(MIN_SHARE_SIGMA**2)


def test_the_bound_of_a_sum_is_the_gaussian_one_plus_a_negligible_slack() -> None:
    variance = Fraction(50)
    # two honest shares of 50 are as private as one Gaussian of variance 100 ...
    assert sum_rho(variance, 2, cells=10_000) == pytest.approx(1 / (2 * 100), rel=1e-12)
    # ... up to the Kairouz-Liu-Steinke slack, which at the floor is far below 1e-20 a cell
    assert tau(MIN_SHARE_SIGMA**2, 3) < 1e-24
    assert tau(0.25, 3) > 1e-3  # it is not negligible for tiny shares: hence the floor
    with pytest.raises(ValueError):
        sum_rho(0.2, 2, 1)
