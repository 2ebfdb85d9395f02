"""Confidence intervals for the evaluation's figures: how far chance alone could move them.

Every privacy and utility figure of `synth.evaluate` is measured on a finite sample (a few
hundred holdout rows at a small hospital), and a steward must see how sure it is. Three
methods, each the standard one for its figure:

- a rate (exact copies among `n` rows): the Wilson score interval (Wilson 1927), which keeps
  its coverage near 0 and 1 where the plain normal interval collapses to a point;
- an AUC (the membership attack's, a binary TSTR/TRTR): DeLong, DeLong and Clarke-Pearson
  (1988), the variance of the Mann-Whitney statistic from its structural components, computed
  from mid-ranks in O(n log n) (Sun and Xu 2014), ties counted half;
- anything else (a ratio of medians, a macro AUC, R², the TRTR - TSTR gap): the percentile
  bootstrap over the rows the figure was measured on, `BOOTSTRAP_ROUNDS` resamples from a
  seeded generator (reproducible), the models not refitted (the interval covers the test
  sample's chance, not the training's).

Intervals are at `LEVEL` (95 %), given as `[low, high]`, rounded like the figures. They
disclose nothing the figure and its sample size do not: each is a function of them (the
Wilson and DeLong ones exactly; the bootstrap's of the same per-row values the figure summarises).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

LEVEL = 0.95
Z = 1.959963984540054  # the standard normal's 97.5th percentile
BOOTSTRAP_ROUNDS = 300


def wilson(successes: int, n: int, z: float = Z) -> tuple[float, float]:
    """The Wilson score interval of a rate `successes / n`; (0, 1) when there are no rows."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n} rows")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, float(centre - half)), min(1.0, float(centre + half)))


def _midranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return np.asarray(rankdata(x), dtype=float)


def delong(positives: np.ndarray, negatives: np.ndarray) -> tuple[float, float]:
    """(AUC, its DeLong standard error) for scores where higher means "positive": the AUC is
    P(a positive scores above a negative), ties counted half."""
    m, n = len(positives), len(negatives)
    if m == 0 or n == 0:
        raise ValueError("an AUC needs at least one positive and one negative")
    both = np.concatenate([positives, negatives]).astype(float)
    ranks = _midranks(both)
    within_pos = _midranks(np.asarray(positives, dtype=float))
    within_neg = _midranks(np.asarray(negatives, dtype=float))
    v10 = (ranks[:m] - within_pos) / n  # each positive: share of negatives it beats
    v01 = 1.0 - (ranks[m:] - within_neg) / m  # each negative: share of positives above it
    auc = float(v10.mean())
    variance = (v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0)
    return auc, float(np.sqrt(max(variance, 0.0)))


def delong_paired(
    first: np.ndarray, second: np.ndarray, labels: np.ndarray
) -> tuple[float, float, float, float, float]:
    """Two scorings of the same rows (`labels` True for positives): (AUC of each, the DeLong
    standard error of each, and that of their difference, whose covariance DeLong gives
    from the same structural components)."""
    labels = np.asarray(labels, dtype=bool)
    m, n = int(labels.sum()), int((~labels).sum())
    if m == 0 or n == 0:
        raise ValueError("an AUC needs at least one positive and one negative")
    components = []
    for scores in (np.asarray(first, dtype=float), np.asarray(second, dtype=float)):
        pos, neg = scores[labels], scores[~labels]
        ranks = _midranks(np.concatenate([pos, neg]))
        v10 = (ranks[:m] - _midranks(pos)) / n
        v01 = 1.0 - (ranks[m:] - _midranks(neg)) / m
        components.append((v10, v01))
    (a10, a01), (b10, b01) = components

    def cov(x: np.ndarray, y: np.ndarray, size: int) -> float:
        return float(np.cov(x, y, ddof=1)[0, 1]) / size if size > 1 else 0.0

    var_a = cov(a10, a10, m) + cov(a01, a01, n)
    var_b = cov(b10, b10, m) + cov(b01, b01, n)
    var_diff = var_a + var_b - 2 * (cov(a10, b10, m) + cov(a01, b01, n))
    return (
        float(a10.mean()),
        float(b10.mean()),
        float(np.sqrt(max(var_a, 0.0))),
        float(np.sqrt(max(var_b, 0.0))),
        float(np.sqrt(max(var_diff, 0.0))),
    )


def auc_interval(auc: float, se: float, z: float = Z) -> tuple[float, float]:
    return (max(0.0, auc - z * se), min(1.0, auc + z * se))


def bootstrap(
    statistics: Callable[[np.ndarray], tuple[float | None, ...]],
    n: int,
    rng: np.random.Generator,
    rounds: int = BOOTSTRAP_ROUNDS,
) -> list[tuple[float, float] | None]:
    """Percentile intervals of several statistics of the same rows, each resample shared by
    all of them (so a difference of two is paired): `statistics(indices)` gives one value per
    statistic for `n` row indices drawn with replacement. An interval is None when fewer than
    half the resamples give its statistic a value (a resample can lack a class an AUC needs)."""
    collected: list[list[float]] = []
    for _ in range(rounds):
        values = statistics(rng.integers(0, n, n))
        if not collected:
            collected = [[] for _ in values]
        for bucket, value in zip(collected, values, strict=True):
            if value is not None and np.isfinite(value):
                bucket.append(float(value))
    tail = (1 - LEVEL) / 2 * 100
    out: list[tuple[float, float] | None] = []
    for bucket in collected:
        if len(bucket) < rounds / 2:
            out.append(None)
        else:
            low, high = np.percentile(bucket, [tail, 100 - tail])
            out.append((float(low), float(high)))
    return out


def median_ratio_interval(
    numerator: np.ndarray, denominator: np.ndarray, rng: np.random.Generator
) -> tuple[float, float] | None:
    """Bootstrap interval of median(numerator) / median(denominator), each sample resampled
    on its own; None when a resampled denominator's median is 0 in most resamples."""
    a, b = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if not len(a) or not len(b):
        return None
    ratios = []
    for _ in range(BOOTSTRAP_ROUNDS):
        below = float(np.median(b[rng.integers(0, len(b), len(b))]))
        if below > 0:
            ratios.append(float(np.median(a[rng.integers(0, len(a), len(a))])) / below)
    if len(ratios) < BOOTSTRAP_ROUNDS / 2:
        return None
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return (float(low), float(high))


def rounded(interval: tuple[float, float] | None, digits: int = 4) -> list[float] | None:
    return None if interval is None else [round(interval[0], digits), round(interval[1], digits)]
