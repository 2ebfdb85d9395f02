"""The plaintext pieces of exact secure arithmetic: fields, rational reconstruction, bounds,
and the local design / Gram encoding of the regressions."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from smpc.exact import MERSENNE_EXPONENTS, field_exponent, hadamard_bits, rational
from smpc.frames import infer_schema
from smpc.statistics import local_summary, prepare
from smpc.statistics.design import FRAC_BITS, encode_gram, symmetric_index, terms
from tessera.errors import QueryInvalid


def test_mersenne_exponents_give_primes() -> None:
    import gmpy2

    for e in MERSENNE_EXPONENTS[:6]:  # the larger ones are known primes too; slow to re-check
        assert gmpy2.is_prime((1 << e) - 1)


def test_field_exponent_is_the_smallest_that_fits() -> None:
    assert field_exponent(100) == 521
    assert field_exponent(519) == 521
    assert field_exponent(520) == 607
    with pytest.raises(QueryInvalid, match="largest supported"):
        field_exponent(20_000)


@pytest.mark.parametrize("seed", range(5))
def test_rational_reconstruction_recovers_fractions(seed: int) -> None:
    rng = random.Random(seed)
    p = (1 << 521) - 1
    for _ in range(50):
        num = rng.randrange(-(1 << 250), 1 << 250)
        den = rng.randrange(1, 1 << 250)
        residue = num * pow(den, -1, p) % p
        assert rational(residue, p) == Fraction(num, den)


def test_rational_reconstruction_up_to_the_bound() -> None:
    p = (1 << 127) - 1
    bound = math.isqrt(p // 2)
    for num, den in ((bound, bound - 2), (-bound, 3), (1, bound)):
        assert rational(num * pow(den, -1, p) % p, p) == Fraction(num, den)


def test_hadamard_bits_bounds_determinants() -> None:
    rng = np.random.default_rng(0)
    for size in (2, 5, 9):
        m = rng.integers(-(2**20), 2**20, size=(size, size)).astype(object)
        det = abs(round(np.linalg.det(m.astype(float))))
        assert det.bit_length() <= hadamard_bits(size, 20)


def test_terms_code_categorical_predictors_against_the_first_level() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0], "c": ["b", "a"], "flag": [True, False]})
    schema = infer_schema([frame])
    names = [t.name for t in terms(schema, ["x", "c", "flag"], "linear_regression")]
    assert names == ["x", "c[b]", "flag"]


def test_symmetric_index_rebuilds_the_matrix() -> None:
    k = 4
    full = np.arange(16).reshape(4, 4)
    full = full + full.T
    upper = [full[i, j] for i in range(k) for j in range(i, k)]
    assert (np.array(upper)[symmetric_index(k)] == full).all()


def test_encode_gram_is_fixed_point_and_refuses_huge_values() -> None:
    gram = np.array([[2.0, 0.5], [0.5, 1.25]])
    assert encode_gram(gram, "correlation", ["a", "b"]) == [
        2 << FRAC_BITS,
        1 << (FRAC_BITS - 1),
        5 << (FRAC_BITS - 2),
    ]
    with pytest.raises(QueryInvalid, match=r"too large.*rescale"):
        encode_gram(np.array([[1e16]]), "correlation", ["a"])


def test_regression_local_summary_holds_gram_and_counts_not_rows() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, np.nan], "y": [1.0, 3.0, 2.0, 5.0]})
    schema = infer_schema([frame])
    query = prepare(
        {"statistic": "linear_regression", "dataset": "d", "outcome": "y", "predictors": ["x"]},
        schema,
    )
    summary = local_summary(query, frame, schema)
    assert summary.counts == [3]  # the row with a missing x is dropped
    assert summary.rows is None
    scale = 1 << FRAC_BITS
    # [1, x, y]: n, Σx, Σy, Σx², Σxy, Σy²
    assert summary.vectors["gram"] == [v * scale for v in (3, 6, 6, 14, 13, 14)]


def test_logistic_local_summary_keeps_rows_for_its_own_party() -> None:
    frame = pd.DataFrame({"x": [0.5, 1.5, 2.5], "y": [0, 1, 1]})
    schema = infer_schema([frame])
    query = prepare(
        {"statistic": "logistic_regression", "dataset": "d", "outcome": "y", "predictors": ["x"]},
        schema,
    )
    summary = local_summary(query, frame, schema)
    rows = summary.unpack_rows()
    assert rows.shape == (3, 4)  # group code, const, x, y
    assert math.isclose(rows[:, 2].sum(), 4.5)


@pytest.mark.parametrize("statistic", ["linear_regression", "logistic_regression"])
def test_regressions_refuse_more_terms_than_the_solver_supports(statistic: str) -> None:
    columns = [f"x{i}" for i in range(21)]
    frame = pd.DataFrame({**{c: [0.0, 1.0] for c in columns}, "y": [0, 1]})
    query = {"statistic": statistic, "dataset": "d", "outcome": "y", "predictors": columns}
    with pytest.raises(QueryInvalid, match="at most 20"):
        prepare(query, infer_schema([frame]))
