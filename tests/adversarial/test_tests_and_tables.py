"""Attacks on the tests and tables (chi2, correlation, ttest, Kaplan–Meier) and their defences.

Each test plays an analyst who tries to learn a small cell, a suppressed count or which node
holds a row, through the protocol as it runs (`smpc.simulate`, three party processes).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from smpc import reference, simulate
from smpc.secure import OUTPUT_PRECISION_BITS, count_base
from smpc.statistics import reference_parties
from tessera.errors import DisclosureRefused
from tessera.schemas import ColumnSpec, DatasetSchema


def table_rows(cells: dict[tuple[str, str], int], **extra: str) -> pd.DataFrame:
    rows = [(a, b) for (a, b), k in cells.items() for _ in range(k)]
    return pd.DataFrame(rows, columns=["a", "b"]).assign(**extra)


def thirds(frame: pd.DataFrame) -> list[pd.DataFrame]:
    return [frame.iloc[i::3].reset_index(drop=True) for i in range(3)]


CATEGORICAL = DatasetSchema(
    columns=[
        ColumnSpec(name="a", type="categorical", levels=["x", "y"]),
        ColumnSpec(name="b", type="categorical", levels=["u", "v"]),
        ColumnSpec(name="g", type="categorical", levels=[f"g{i}" for i in range(5)]),
    ]
)


def test_a_2x2_chi2_with_a_cell_of_1_is_suppressed() -> None:
    """(a) Every margin is ≥ T (the old rule tested this table, and χ² with n and the margins
    gave the cell of 1 away); now every cell must reach T inside MPC: nothing is opened."""
    frame = table_rows({("x", "u"): 1, ("x", "v"): 20, ("y", "u"): 20, ("y", "v"): 20}, g="g0")
    query = {"statistic": "chi2", "dataset": "d", "rows": "a", "columns": "b", "min_count": 3}
    result = simulate(query, thirds(frame), CATEGORICAL)
    assert result == {"n": None, "statistic": None, "p_value": None, "df": None}
    assert result == reference(query, frame, CATEGORICAL)


def test_a_chi2_cell_with_one_row_at_a_site_is_not_tested() -> None:
    """(one site's view) The pooled cell (x, u) holds 6 rows, 5 of them at the first hospital
    and 1 at the second: with every cell ≥ T the table would be tested, and the first hospital,
    knowing its own 5, could read the second's single patient from χ² and the margins. Every
    site's share of every cell must be 0 or at least its floor (3), decided inside MPC: the
    table is not tested. With the single row moved to the first hospital it is."""
    others = table_rows({("x", "v"): 30, ("y", "u"): 30, ("y", "v"): 30}, g="g0")
    split = thirds(others)
    query = {"statistic": "chi2", "dataset": "d", "rows": "a", "columns": "b"}

    def run(at_first: int, at_second: int) -> dict:
        frames = [
            pd.concat([split[0], table_rows({("x", "u"): at_first}, g="g0")]),
            pd.concat([split[1], table_rows({("x", "u"): at_second}, g="g0")]),
            split[2],
        ]
        frames = [f.reset_index(drop=True) for f in frames]
        result = simulate(query, frames, CATEGORICAL, min_count_floors=[3, 3, 3])
        # the plaintext twin applies the same per-site rule from each site's counts
        assert result == reference_parties(query, frames, CATEGORICAL, min_count_floors=[3] * 3)
        return result

    assert run(5, 1) == {"n": None, "statistic": None, "p_value": None, "df": None}
    tested = run(6, 0)
    assert tested["statistic"] is not None and tested["df"] == 1


def test_chi2_n_cannot_undo_a_crosstab_suppression() -> None:
    """(d) "count minus released cells": a crosstab of a × b suppresses the cell (x, u) of
    size s < T; chi2 of the same rows over a × g (every cell ≥ T) reports n. Five attempts
    (five groups, five different totals and hidden cells): with n exact, n − (released cells)
    = s every time. n is published rounded to a multiple of max(5, T): the difference equals
    s at most when the true n happens to be a multiple (here once in five), never reliably."""
    frames, truths = [], []
    for i in range(5):
        hidden = 1 + i % 4  # the suppressed crosstab cell, below T = 5
        cells = {("x", "u"): hidden, ("x", "v"): 30 + i, ("y", "u"): 25 + i, ("y", "v"): 27 + 2 * i}
        rows = table_rows(cells, g=f"g{i}")
        # a second grouping variable, independent of b, with every (a, c) cell ≥ T
        rows = rows.assign(b=np.where(np.arange(len(rows)) % 2 == 0, "u", "v"))
        released = sum(cells.values()) - hidden  # the attacker's best case: exact released cells
        truths.append((hidden, released, sum(cells.values())))
        frames.append(rows)
    pooled = pd.concat(frames, ignore_index=True)
    query = {
        "statistic": "chi2",
        "dataset": "d",
        "rows": "a",
        "columns": "b",
        "group_by": ["g"],
        "min_count": 5,
    }
    result = simulate(query, thirds(pooled), CATEGORICAL)
    hits = 0
    base = count_base(5)
    for group, (hidden, released, n) in zip(result["groups"], truths, strict=True):
        assert group["n"] is not None and group["n"] % base == 0
        assert abs(group["n"] - n) <= base // 2
        hits += group["n"] - released == hidden
        # (e) the opened statistic is a multiple of the published precision
        units = group["statistic"] * 2**OUTPUT_PRECISION_BITS
        assert units == int(units)
    assert hits <= 1
    assert result["n"] == sum(g["n"] for g in result["groups"])
    ref = reference(query, pooled, CATEGORICAL)
    for got, want in zip(result["groups"], ref["groups"], strict=True):
        assert got["n"] == want["n"]
        assert abs(got["statistic"] - want["statistic"]) <= 2.0**-OUTPUT_PRECISION_BITS


BOOLEANS = DatasetSchema(
    columns=[
        ColumnSpec(name="p", type="boolean"),
        ColumnSpec(name="q", type="boolean"),
        ColumnSpec(name="z", type="float"),
    ]
)


def test_a_boolean_correlation_with_a_small_cell_is_suppressed() -> None:
    """(b) The correlation of two booleans with n and their sums is the whole 2×2 table. A pair
    whose pooled cell (True, True) holds 2 rows (< T = 4) is null; the other pairs are shown."""
    rng = np.random.default_rng(7)
    p = np.array([True] * 2 + [True] * 30 + [False] * 40)
    q = np.array([True] * 2 + [False] * 30 + [True] * 20 + [False] * 20)
    frame = pd.DataFrame({"p": p, "q": q, "z": rng.normal(size=len(p))})
    query = {"statistic": "correlation", "dataset": "d", "columns": ["p", "q", "z"]}
    result = simulate({**query, "min_count": 4}, thirds(frame), BOOLEANS)
    matrix = result["matrix"]
    assert matrix[0][1] is None and matrix[1][0] is None
    assert matrix[0][2] is not None and matrix[1][2] is not None
    assert abs(result["n"] - 72) <= 3  # 72 rows, published with the count perturbation
    expected = reference({**query, "min_count": 4}, frame, BOOLEANS)
    assert expected["matrix"][0][1] is None and expected["n"] == 72


def test_correlation_outputs_are_rounded_inside_mpc_not_exact_fractions() -> None:
    """(e) r² is opened only rounded toward zero to 25 significant bits (`smpc.rounded`), never
    as the exact fraction C_jk² / (C_jj·C_kk), whose reduced numerator and denominator would
    give the pooled table away; r is ±√ of that value."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {"p": rng.random(60) < 0.5, "q": rng.random(60) < 0.5, "z": rng.random(60)}
    )
    query = {"statistic": "correlation", "dataset": "d", "columns": ["z", "p"]}
    result = simulate(query, thirds(frame), BOOLEANS)
    r = result["matrix"][0][1]
    # the value of the cell-key perturbed Gram matrix (its plaintext twin, in float64)
    perturbed = reference_parties(query, thirds(frame), BOOLEANS)["matrix"][0][1]
    assert math.copysign(1, r) == math.copysign(1, perturbed)
    opened = r * r  # the opened r², up to the square root's last bit
    mantissa, _ = math.frexp(opened)
    assert abs(mantissa * 2**25 - round(mantissa * 2**25)) < 1e-6  # 25 significant bits
    # truncated toward zero: below the perturbed matrix's r², by less than one unit of 2**-24
    assert -1e-12 < perturbed * perturbed - opened < 2**-23 * perturbed * perturbed
    exact = float(np.corrcoef(frame["z"], frame["p"].astype(float))[0, 1])
    assert opened != exact * exact


SURVIVAL = DatasetSchema(
    columns=[
        ColumnSpec(name="t", type="integer", min=0, max=10),
        ColumnSpec(name="dead", type="integer", min=0, max=1),
        ColumnSpec(name="age", type="integer", min=0, max=120),
    ]
)


def survival_frames(bad_at: int | None) -> list[pd.DataFrame]:
    frames = []
    for i in range(3):
        frame = pd.DataFrame(
            {"t": [1, 2, 3, 4, 5, 6, 7, 8], "dead": [1, 0, 1, 1, 0, 1, 0, 1], "age": 30 + 5 * i}
        )
        if i == bad_at:  # one patient aged 77 with a time off the declared grid [0, 10]
            frame = pd.concat([frame, pd.DataFrame({"t": [12], "dead": [1], "age": [77]})])
        frames.append(frame.reset_index(drop=True))
    return frames


def test_kaplan_meier_off_grid_refusal_is_pooled_and_names_no_node() -> None:
    """(c) A binary search with `where` for the row with an off-grid time: the refusal is the
    prelude's pooled row rule, the same whichever node holds the row, and it names no node and
    no value; a selection without the row runs."""
    query = {
        "statistic": "kaplan_meier",
        "dataset": "d",
        "time": "t",
        "event": "dead",
        "where": [["age", ">=", 35]],
    }
    refusals = []
    for node in (1, 2):
        with pytest.raises(DisclosureRefused) as caught:
            simulate(query, survival_frames(node), SURVIVAL)
        refusals.append((type(caught.value), str(caught.value)))
    assert refusals[0] == refusals[1] and "kaplan_meier: every time" in refusals[0][1]
    message = refusals[0][1].lower()
    assert "node" not in message and "party" not in message and "12" not in message
    narrower = {**query, "where": [["age", "<=", 37]]}
    result = simulate(narrower, survival_frames(2), SURVIVAL)
    assert result["n"] == 16
