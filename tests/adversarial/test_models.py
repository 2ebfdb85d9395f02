"""Adversarial tests of the regressions: what a researcher can learn from a refusal or a result
beyond the pooled model.

- small cells behind a model: a categorical level (or boolean predictor) held by one patient
  would make that patient's outcome readable as const + β; the query is refused (or the group's
  model is null) instead;
- error oracles: a logistic outcome that is not 0/1, or a singular design, is refused by one
  pooled decision whose message is the same whichever node holds the offending row and names no
  node, term, count or tolerance, so a binary search with `where` learns nothing about a site;
- what the elimination opens: a masked pivot and one tolerance bit per step (never a tolerance).
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from smpc import simulate
from smpc.frames import uneven_shares as split
from tessera.errors import TesseraError

from .one_party import report

FLOORS = [5, 5, 5]  # every node's min_count floor (the node configuration's default)


def leaks_nothing(error: TesseraError, *names: str) -> None:
    """A pooled refusal (`DisclosureRefused`'s code) that names no party, no term and carries no
    number but the public threshold."""
    assert error.code == "disclosure_refused"
    message = error.message
    assert "party" not in message.lower()
    for name in names:
        assert name not in message
    assert not re.search(r"\d\.\d|e-\d", message), message  # no tolerance or other ratio


@pytest.fixture(scope="module")
def wards() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    n = 240
    ward = np.where(np.arange(n) % 2 == 0, "A", "B").astype(object)
    ward[17] = "C"  # one patient alone in ward C
    age = rng.uniform(20, 80, n)
    stay = 3.0 + 0.05 * age + (ward == "B") * 1.5 + rng.normal(0, 1, n)
    stay[17] = 42.0  # the target's outcome
    return pd.DataFrame({"ward": ward, "age": age, "stay": stay, "flag": ward == "C"})


def test_a_one_patient_level_is_refused_not_readable_as_const_plus_beta(
    wards: pd.DataFrame,
) -> None:
    query = {
        "statistic": "linear_regression",
        "dataset": "d",
        "outcome": "stay",
        "predictors": ["ward"],
    }
    with pytest.raises(TesseraError) as caught:
        simulate(query, split(wards, 3), min_count_floors=FLOORS)
    leaks_nothing(caught.value, "ward[C]", "'C'", "42")
    assert "fewer than" in caught.value.message


def test_a_one_patient_boolean_predictor_is_refused(wards: pd.DataFrame) -> None:
    query = {
        "statistic": "linear_regression",
        "dataset": "d",
        "outcome": "stay",
        "predictors": ["age", "flag"],
    }
    with pytest.raises(TesseraError, match="boolean predictor has fewer than"):
        simulate(query, split(wards, 3), min_count_floors=FLOORS)


def test_a_small_cell_in_one_group_nulls_that_groups_model(wards: pd.DataFrame) -> None:
    data = wards.assign(site=np.where(np.arange(len(wards)) < 120, "north", "south"))
    query = {
        "statistic": "linear_regression",
        "dataset": "d",
        "outcome": "stay",
        "predictors": ["age", "ward"],
        "group_by": ["site"],
        "min_count": 3,
    }
    result = simulate(query, split(data, 3))
    by_site = {g["group"]["site"]: g for g in result["groups"]}
    north = by_site["north"]  # holds row 17, ward C's only patient
    # its n is shown (with the count perturbation of its rows), its model is not
    assert abs(north["n"] - 120) <= 3 and all(v is None for v in north["coefficients"].values())
    south = by_site["south"]  # ward C is empty here: a small (zero) cell too
    assert all(v is None for v in south["coefficients"].values())


def test_a_logistic_model_with_a_one_patient_level_is_refused(wards: pd.DataFrame) -> None:
    data = wards.assign(long=(wards.stay > wards.stay.median()).astype(int))
    query = {
        "statistic": "logistic_regression",
        "dataset": "d",
        "outcome": "long",
        "predictors": ["age", "ward"],
    }
    with pytest.raises(TesseraError, match="fewer than"):
        simulate(query, split(data, 3), min_count_floors=FLOORS)


def test_b_binary_search_on_a_non_binary_outcome_learns_no_site() -> None:
    rng = np.random.default_rng(3)
    n = 90
    base = pd.DataFrame({"age": rng.permutation(n).astype(float), "x": rng.normal(size=n)})
    base["died"] = (rng.uniform(size=n) < 0.4).astype(int)
    query = {
        "statistic": "logistic_regression",
        "dataset": "d",
        "outcome": "died",
        "predictors": ["x"],
        "where": [["age", ">=", 40]],
    }
    messages = set()
    for holder in range(3):
        frames = [f.reset_index(drop=True) for f in split(base, 3)]
        at = frames[holder].index[frames[holder].age >= 40][0]
        frames[holder].loc[at, "died"] = 7  # one selected row, at this site, is not 0/1
        with pytest.raises(TesseraError) as caught:
            simulate(query, frames, min_count_floors=FLOORS)
        messages.add((type(caught.value).__name__, caught.value.code, caught.value.message))
        leaks_nothing(caught.value, "7")
    assert len(messages) == 1  # the same refusal whichever site holds the row
    # the same row left out by `where`: the query runs (only selected rows count)
    frames = [f.reset_index(drop=True) for f in split(base, 3)]
    at = frames[0].index[frames[0].age < 40][0]
    frames[0].loc[at, "died"] = 7
    n = simulate(query, frames, min_count_floors=FLOORS)["n"]
    assert abs(n - int((base.age >= 40).sum())) <= 3  # n + p: the count perturbation


def test_b_declared_bounds_beyond_0_1_refuse_a_logistic_outcome_at_the_query() -> None:
    from smpc.statistics import prepare
    from tessera.errors import QueryInvalid
    from tessera.schemas import ColumnSpec, DatasetSchema

    schema = DatasetSchema(
        columns=[
            ColumnSpec(name="y", type="integer", min=0, max=3),
            ColumnSpec(name="x", type="float"),
        ],
    )
    query = {
        "statistic": "logistic_regression",
        "dataset": "d",
        "outcome": "y",
        "predictors": ["x"],
    }
    with pytest.raises(QueryInvalid, match="beyond"):
        prepare(query, schema)


@pytest.mark.parametrize("holder", [0, 2])
def test_c_a_collinear_design_is_refused_naming_no_term_node_or_tolerance(holder: int) -> None:
    rng = np.random.default_rng(5)
    n = 120
    # whole numbers, so every party's Gram matrix is exactly singular in floating point too
    data = pd.DataFrame({"a": rng.integers(0, 50, n), "b": rng.integers(0, 9, n)}).astype(float)
    data["y"] = data.a + rng.normal(size=n)
    data["dup"] = data.a * 2.0 + data.b
    frames = split(data, 3)
    if holder:  # the rows that make it singular sit at another site: the same refusal
        frames = frames[holder:] + frames[:holder]
    query = {
        "statistic": "linear_regression",
        "dataset": "d",
        "outcome": "y",
        "predictors": ["a", "b", "dup"],
    }
    with pytest.raises(TesseraError, match="singular") as caught:
        simulate(query, frames, min_count_floors=FLOORS)
    leaks_nothing(caught.value, "dup", "'a'", "'b'")
    assert set(caught.value.details) <= {"rule", "party_id"}


_ELIMINATION = """
import asyncio, json, sys
import numpy as np
from mpyc.runtime import mpc
from smpc.exact import exact_type, gauss_jordan

opened = []
original = mpc.output
def recording(x, *args, **kwargs):
    size = len(x) if isinstance(x, list) else getattr(x, "size", 1)
    out = original(x, *args, **kwargs)
    opened.append(size)
    return out
mpc.output = recording

async def main():
    await mpc.start()
    stype = exact_type(mpc, 400)
    g = np.array(json.loads(sys.argv[1]), dtype=object)
    size = g.shape[0]
    augmented = stype.array(np.hstack((g, np.eye(size, dtype=object))))
    try:
        await gauss_jordan(mpc, augmented, size)
        outcome = "solved"
    except Exception as exc:
        outcome = type(exc).__name__
    await mpc.shutdown()
    print(json.dumps({"opened": opened, "outcome": outcome}))

mpc.run(main())
"""


@pytest.mark.parametrize(
    ("gram", "outcome", "openings"),
    [
        # per step the masked pivot; then, for the tolerances' comparison, the masked chunks
        # of its random bits moved between fields (5 per tolerance) and the masked
        # tolerances; last the one bit
        ([[10, 3, 2], [3, 5, 1], [2, 1, 4]], "solved", [1, 1, 1, 15, 3, 1]),
        ([[4, 2, 4], [2, 1, 2], [4, 2, 4]], "Singular", [1, 1]),  # a zero pivot: at once
        ([[10**12, 1], [1, 10**12]], "solved", [1, 1, 10, 2, 1]),
        ([[10**12, 10**12], [10**12, 10**12 + 1]], "Singular", [1, 1, 10, 2, 1]),
    ],
)
def test_d_the_elimination_opens_masked_pivots_and_one_bit_never_a_tolerance(
    gram: list[list[int]], outcome: str, openings: list[int]
) -> None:
    assert report(_ELIMINATION, json.dumps(gram)) == {"opened": openings, "outcome": outcome}


def test_d_no_opened_output_is_an_exact_rational() -> None:
    """A coefficient is opened rounded toward zero to 25 significant bits inside MPC
    (`smpc.rounded`), and of the Gram matrix with its cell-key pseudo-row: not the exact
    fraction of the data (here a difference of two means over 7 and 53 rows, whose denominator
    would give the group sizes away), only the first 25 bits of the perturbed model's (the
    plaintext twin's)."""
    from fractions import Fraction

    from smpc.frames import infer_schema
    from smpc.statistics import reference_parties

    rng = np.random.default_rng(2)
    n = 60
    data = pd.DataFrame({"g": np.where(np.arange(n) < 7, "rare", "common")})
    data["y"] = rng.integers(0, 5, n).astype(float)
    query = {"statistic": "linear_regression", "dataset": "d", "outcome": "y", "predictors": ["g"]}
    frames = split(data, 3)
    result = simulate(query, frames, min_count_floors=FLOORS)
    beta = result["coefficients"]["g[rare]"]
    exact = Fraction(int(data.y[:7].sum()), 7) - Fraction(int(data.y[7:].sum()), 53)
    assert abs(float(exact) - beta) > 1e-4  # moved by the pseudo-row
    twin = reference_parties(query, frames, infer_schema(frames), min_count_floors=FLOORS)
    perturbed = Fraction(twin["coefficients"]["g[rare]"])
    assert 0 <= abs(perturbed) - abs(Fraction(beta)) < abs(perturbed) * Fraction(1, 2**24)
    mantissa, _ = math.frexp(beta)
    assert mantissa * 2**25 == int(mantissa * 2**25)


def test_one_hospitals_two_patients_of_a_group_block_the_groups_model(wards: pd.DataFrame) -> None:
    """A hospital with two patients of a group (below its floor of 5) keeps that group's model
    from being released, whatever the pooled n: released, the other hospitals would learn the
    pair's contribution to the coefficients. The per-site floor rule, as for tables."""
    data = wards.assign(unit=np.where(np.arange(len(wards)) % 3 == 0, "y", "x"))
    x, y = data[data.unit == "x"], data[data.unit == "y"]
    frames = [
        pd.concat([x[:60], y[:2]], ignore_index=True),  # two patients of group y here
        pd.concat([x[60:120], y[2:40]], ignore_index=True),
        pd.concat([x[120:], y[40:]], ignore_index=True),
    ]
    query = {
        "statistic": "linear_regression",
        "dataset": "w",
        "outcome": "stay",
        "predictors": ["age"],
        "group_by": ["unit"],
    }
    result = simulate(query, frames, min_count_floors=FLOORS)
    groups = {g["group"]["unit"]: g for g in result["groups"]}
    assert groups["y"]["n"] is None
    assert all(v is None for v in groups["y"]["coefficients"].values())
    assert groups["x"]["n"] is not None
    assert all(v is not None for v in groups["x"]["coefficients"].values())
    assert result["n"] is None  # a suppressed group hides the total too
