"""Tail probabilities for p-values, from `scipy.special` (the functions `scipy.stats` itself
calls: its t, normal and χ² survival functions are these, to the last bit).

A party computes a model's p-values at the end of its protocol, inside the time it is timed and
paid for; importing `scipy.stats` costs 0.4 s of CPU (2 s on a busy machine) in every party
process, `scipy.special` a quarter of that.
"""

from __future__ import annotations


def t_two_sided(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's T with df degrees of freedom (`2·stats.t.sf(|t|, df)`)."""
    from scipy.special import stdtr

    return float(2 * stdtr(df, -abs(t)))


def normal_two_sided(z: float) -> float:
    """P(|Z| ≥ |z|) for a standard normal Z (`2·stats.norm.sf(|z|)`)."""
    from scipy.special import ndtr

    return float(2 * ndtr(-abs(z)))


def chi2_upper(statistic: float, df: float) -> float:
    """P(X ≥ statistic) for X ~ χ²(df) (`stats.chi2.sf`)."""
    from scipy.special import chdtrc

    return float(chdtrc(df, statistic))
