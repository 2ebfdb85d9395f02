"""A node feeding inputs outside its declaration, through the real MPC parties.

The issue's requirement: each party's inputs are checked against its declared bounds and its
declared row count inside MPC, before anything is opened, so a node cannot feed values
outside its schema. A tampered node is played by editing its local summary before it reaches
its party process (as tests/adversarial/test_cells.py does for the cell statistics). Every
refusal must name no site.

The cohort: three hospitals (300, 200, 150 rows), ages in years (declared 0–18), weights in
kg (declared 2–120), sex.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from smpc.encoding import FRAC_BITS
from smpc.statistics import compile_query
from smpc.statistics.design import symmetric_index
from tessera.errors import DisclosureRefused
from tessera.schemas import DatasetSchema

SCHEMA = DatasetSchema.model_validate(
    {
        "columns": [
            {"name": "age", "type": "float", "min": 0, "max": 18},
            {"name": "weight", "type": "float", "min": 2, "max": 120},
            {"name": "sex", "type": "categorical", "levels": ["F", "M"]},
        ]
    }
)
FLOORS = [3, 3, 3]


@pytest.fixture(scope="module")
def cohort() -> list[pd.DataFrame]:
    rng = np.random.default_rng(5)
    frames = []
    for rows in (300, 200, 150):
        age = rng.uniform(0, 18, rows)
        weight = (3.5 + 3.2 * age + rng.normal(0, 3, rows)).clip(2, 120)
        frames.append(
            pd.DataFrame({"age": age, "weight": weight, "sex": rng.choice(["F", "M"], rows)})
        )
    return frames


def run_with_summaries(
    query: dict,
    summaries: list,
    declared: list[int | None] | None = None,
    schema: DatasetSchema = SCHEMA,
) -> dict[str, Any]:
    """The real parties on given local summaries, party i declaring `declared[i]` rows."""
    from smpc.job import PartyJob
    from smpc.runner import start_parties, wait_party
    from smpc.simulation import free_ports

    statistic = compile_query({"dataset": "d", **query}, schema)
    declared = declared or [None] * len(summaries)
    addresses = [("127.0.0.1", port) for port in free_ports(len(summaries))]
    jobs = [
        PartyJob(
            query=statistic.query.to_json(),
            dataset_schema=schema.model_copy(update={"rows": declared[i]}),
            summary=summary,
            party_id=i,
            parties=addresses,
            min_count_floor=FLOORS[i],
            timeout_s=60,
        )
        for i, summary in enumerate(summaries)
    ]
    procs = start_parties(jobs)
    outcomes = [wait_party(proc, job) for proc, job in zip(procs, jobs, strict=True)]
    return outcomes[0].result


def summaries_of(query: dict, frames: list[pd.DataFrame]) -> list:
    compiled = compile_query({"dataset": "d", **query}, SCHEMA)
    return [compiled.local_summary(frame) for frame in frames]


def assert_names_no_site(refused: pytest.ExceptionInfo[DisclosureRefused]) -> None:
    text = str(refused.value)
    assert "which site is not revealed" in text
    assert "party" not in text and "site 1" not in text and "hospital" not in text


def gram_entry(query: dict, i: int, j: int) -> int:
    """Where entry (i, j) of [1, terms…]'s Gram matrix sits in a group's upper triangle."""
    statistic = compile_query({"dataset": "d", **query}, SCHEMA)
    return int(symmetric_index(len(statistic.names))[i, j])


REGRESSION = {"statistic": "linear_regression", "outcome": "weight", "predictors": ["age", "sex"]}
CORRELATION = {"statistic": "correlation", "columns": ["age", "weight"]}


@pytest.mark.parametrize(
    ("query", "entry", "change"),
    [
        # the outcome's Σy (terms: age, sex[M], weight) raised by 10⁵ kg: a mean weight beyond 120
        (REGRESSION, (0, 3), 10**5 << FRAC_BITS),
        # a predictor's Σx² made negative
        (REGRESSION, (1, 1), -(10**6 << FRAC_BITS)),
        # an indicator's Σx beyond the site's n
        (REGRESSION, (0, 2), 10**4 << FRAC_BITS),
        # correlation: a weight sum inflated beyond n·120
        (CORRELATION, (0, 2), 10**5 << FRAC_BITS),
        # correlation: an age Σx² beyond n·18²
        (CORRELATION, (1, 1), 10**6 << FRAC_BITS),
        # a cross product Σ age·weight beyond n·18·120 (each entry alone within its bounds)
        (REGRESSION, (1, 3), 10**6 << FRAC_BITS),
        # correlation: Σ age·weight negative, though both columns are declared nonnegative
        (CORRELATION, (1, 2), -(10**5 << FRAC_BITS)),
    ],
)
def test_a_node_feeding_a_gram_matrix_outside_its_declared_bounds_is_refused(
    cohort: list[pd.DataFrame], query: dict, entry: tuple[int, int], change: int
) -> None:
    summaries = summaries_of(query, cohort)
    assert run_with_summaries(query, summaries)["n"] is not None  # honest: runs
    summaries[1].vectors["gram"][gram_entry(query, *entry)] += change
    with pytest.raises(DisclosureRefused, match="declared bounds") as refused:
        run_with_summaries(query, summaries)
    assert_names_no_site(refused)


def test_a_node_whose_gram_n_is_not_its_count_is_refused(cohort: list[pd.DataFrame]) -> None:
    """The constant entry of a site's Gram matrix is its n: doubling it (to move the
    intercept, or the degrees of freedom) without doubling the count is refused."""
    summaries = summaries_of(REGRESSION, cohort)
    summaries[2].vectors["gram"][0] *= 2
    with pytest.raises(DisclosureRefused, match="declared bounds") as refused:
        run_with_summaries(REGRESSION, summaries)
    assert_names_no_site(refused)


@pytest.mark.parametrize(
    "query",
    [{"statistic": "count"}, {"statistic": "mean", "column": "weight"}, REGRESSION],
)
def test_a_node_counting_more_rows_than_it_declares_is_refused(
    cohort: list[pd.DataFrame], query: dict
) -> None:
    """Party 1 holds 200 rows; declaring 200 runs, declaring 150 is refused before anything
    is opened (its selection, and its counts, exceed its declaration)."""
    summaries = summaries_of(query, cohort)
    assert run_with_summaries(query, summaries, [300, 200, 150])["n"] is not None
    with pytest.raises(DisclosureRefused, match="declared") as refused:
        run_with_summaries(query, summaries, [300, 150, 150])
    assert_names_no_site(refused)


def test_counts_beyond_the_declared_rows_are_refused_even_with_an_honest_selection(
    cohort: list[pd.DataFrame],
) -> None:
    """A node keeps its selection honest but inflates the cell counts it inputs: the counts
    themselves are checked against its declared rows (`smpc.protocol.check_counts`)."""
    query = {"statistic": "count", "group_by": ["sex"]}
    summaries = summaries_of(query, cohort)
    summaries[1].counts[0] += 100
    with pytest.raises(DisclosureRefused, match="row count it declared") as refused:
        run_with_summaries(query, summaries, [300, 200, 150])
    assert_names_no_site(refused)


def test_a_negative_count_is_refused(cohort: list[pd.DataFrame]) -> None:
    """A node entering −k in a cell would learn whether the others' pooled count reaches T + k
    from the release bit: negative counts are refused before any bit is opened."""
    query = {"statistic": "count", "group_by": ["sex"]}
    summaries = summaries_of(query, cohort)
    summaries[1].counts[0] = -50
    with pytest.raises(DisclosureRefused, match="negative") as refused:
        run_with_summaries(query, summaries)
    assert_names_no_site(refused)


@pytest.mark.parametrize(
    ("moment", "change"),
    [
        # a level's Σx raised by 10⁵ kg: a mean weight far beyond the declared 120
        ("sum", 10**5 << FRAC_BITS),
        # a level's Σx² made negative: a negative variance would move t
        ("sumsq", -(10**6 << FRAC_BITS)),
    ],
)
def test_a_node_feeding_ttest_sums_outside_the_declared_bounds_is_refused(
    cohort: list[pd.DataFrame], moment: str, change: int
) -> None:
    """The t-test's sums are checked against the column's declared bounds inside MPC, before
    the release bits are opened, as the cell statistics' are."""
    query = {"statistic": "ttest", "column": "weight", "group": "sex"}
    summaries = summaries_of(query, cohort)
    assert run_with_summaries(query, summaries)["statistic"] is not None  # honest: runs
    summaries[2].moments[moment][1] += change
    with pytest.raises(DisclosureRefused, match="declared bounds") as refused:
        run_with_summaries(query, summaries)
    assert_names_no_site(refused)


def test_a_node_feeding_inconsistent_survival_counts_is_refused() -> None:
    """A Kaplan–Meier site's risk set must never grow and its events must be among the rows
    leaving it: a node that adds deaths (to pull the pooled curve down) or lifts a late risk
    set is refused inside MPC before any count or bit is opened."""
    schema = DatasetSchema.model_validate(
        {
            "columns": [
                {"name": "days", "type": "integer", "min": 0, "max": 30},
                {"name": "died", "type": "boolean"},
            ]
        }
    )
    rng = np.random.default_rng(3)
    frames = [
        pd.DataFrame({"days": rng.integers(0, 31, rows), "died": rng.random(rows) < 0.4})
        for rows in (80, 60, 50)
    ]
    query = {"statistic": "kaplan_meier", "time": "days", "event": "died"}
    compiled = compile_query({"dataset": "d", **query}, schema)
    honest = [compiled.local_summary(frame) for frame in frames]
    for tamper in ("events", "at_risk"):
        summaries = [s.model_copy(deep=True) for s in honest]
        summaries[1].vectors[tamper][20] += 10  # 10 more deaths, or 10 more at risk, at day 20
        with pytest.raises(DisclosureRefused, match="risk set") as refused:
            run_with_summaries(query, summaries, schema=schema)
        assert_names_no_site(refused)
    assert abs(run_with_summaries(query, honest, schema=schema)["n"] - 190) <= 3  # honest: runs


ICU_SCHEMA = DatasetSchema.model_validate(
    {"columns": [*SCHEMA.model_dump()["columns"], {"name": "icu", "type": "boolean"}]}
)
LOGISTIC = {"statistic": "logistic_regression", "outcome": "icu", "predictors": ["age", "weight"]}


def test_a_node_feeding_logistic_rows_outside_the_declared_bounds_is_refused(
    cohort: list[pd.DataFrame],
) -> None:
    """Logistic regression keeps each node's rows in its party (the Hessian and score are
    computed from them at every iterate): a node whose rows hold an age of 500 (declared
    0–18) is caught by the per-iteration check of its Hessian and score, before any step is
    opened, and the refusal names no site."""
    rng = np.random.default_rng(8)
    frames = [f.assign(icu=rng.random(len(f)) < 0.3) for f in cohort]
    compiled = compile_query({"dataset": "d", **LOGISTIC}, ICU_SCHEMA)
    summaries = [compiled.local_summary(frame) for frame in frames]
    honest = run_with_summaries(LOGISTIC, summaries, schema=ICU_SCHEMA)
    assert honest["coefficients"]["age"] is not None
    rows = summaries[2].unpack_rows()
    rows[0, 2] = 500.0  # [group, const, age, weight, icu]: one row's age beyond its bounds
    summaries[2].rows = summaries[2].pack_rows(rows)
    with pytest.raises(DisclosureRefused, match="Hessian or score breaks") as refused:
        run_with_summaries(LOGISTIC, summaries, schema=ICU_SCHEMA)
    assert_names_no_site(refused)


def test_chi2_counts_are_checked_too() -> None:
    """χ²'s cell counts go through the same check: a negative cell (which would probe whether
    the others' cell reaches T + k through the tested bit) and counts beyond a site's
    declared rows are refused before anything is opened."""
    schema = DatasetSchema.model_validate(
        {
            "columns": [
                {"name": "a", "type": "categorical", "levels": ["x", "y"]},
                {"name": "b", "type": "categorical", "levels": ["u", "v"]},
            ]
        }
    )
    rng = np.random.default_rng(4)
    frames = [
        pd.DataFrame({"a": rng.choice(["x", "y"], k), "b": rng.choice(["u", "v"], k)})
        for k in (80, 60, 40)
    ]
    query = {"statistic": "chi2", "rows": "a", "columns": "b"}
    compiled = compile_query({"dataset": "d", **query}, schema)
    summaries = [compiled.local_summary(frame) for frame in frames]
    assert run_with_summaries(query, summaries, schema=schema)["statistic"] is not None
    summaries[1].counts[0] = -50
    with pytest.raises(DisclosureRefused, match="negative") as refused:
        run_with_summaries(query, summaries, schema=schema)
    assert_names_no_site(refused)
    summaries[1].counts[0] = 500
    with pytest.raises(DisclosureRefused, match="row count it declared") as refused:
        run_with_summaries(query, summaries, [80, 60, 40], schema=schema)
    assert_names_no_site(refused)


# ---- the dp mode: the same checks before any noisy value is opened -------------------------

DP = {"dp": {"epsilon": 1.0}}


@pytest.mark.parametrize(
    ("query", "tamper", "message"),
    [
        # a mean's clipped Σx raised by 10⁵ kg: beyond n·120
        (
            {"statistic": "mean", "column": "weight", **DP},
            lambda s: s.moments["sum"].__setitem__(0, s.moments["sum"][0] + (10**5 << FRAC_BITS)),
            "declared bounds",
        ),
        # a variance's Σx² made negative
        (
            {"statistic": "variance", "column": "weight", **DP},
            lambda s: s.moments["sumsq"].__setitem__(0, -(1 << FRAC_BITS)),
            "declared bounds",
        ),
        # a count beyond the rows the site declares
        (
            {"statistic": "count", "group_by": ["sex"], **DP},
            lambda s: s.counts.__setitem__(0, s.counts[0] + 500),
            "row count it declared",
        ),
        # a dp quantile's histogram with a negative bin, compensated to keep its total
        (
            {"statistic": "quantile", "column": "weight", "q": [0.5], **DP},
            lambda s: (
                s.vectors["bins"].__setitem__(0, s.vectors["bins"][0] - 40),
                s.vectors["bins"].__setitem__(200, s.vectors["bins"][200] + 40),
            ),
            "histogram",
        ),
        # a dp quantile's histogram that does not add up to the site's count
        (
            {"statistic": "quantile", "column": "weight", "q": [0.5], **DP},
            lambda s: s.vectors["bins"].__setitem__(100, s.vectors["bins"][100] + 30),
            "histogram",
        ),
        # a dp correlation's Σ age·weight (clipped, centred) beyond what n rows allow
        (
            {"statistic": "correlation", "columns": ["age", "weight"], **DP},
            lambda s: s.vectors["gram"].__setitem__(3, s.vectors["gram"][3] + (10**7 << FRAC_BITS)),
            "declared bounds",
        ),
        # the exact quantile's grid histogram that does not add up to the site's count
        (
            {"statistic": "quantile", "column": "weight", "q": [0.5]},
            lambda s: s.vectors["grid"].__setitem__(2000, s.vectors["grid"][2000] + 30),
            "histogram",
        ),
    ],
    ids=[
        "dp-mean",
        "dp-variance",
        "dp-count",
        "dp-quantile-sign",
        "dp-quantile-sum",
        "dp-correlation",
        "quantile-grid",
    ],
)
def test_a_node_feeding_inputs_outside_its_declaration_is_refused_in_every_mode(
    cohort: list[pd.DataFrame], query: dict, tamper: Any, message: str
) -> None:
    """The dp mode's protocols (and the exact quantile's histogram) check every site's inputs
    inside MPC before any noisy value or release bit is opened, as the exact mode's cell
    statistics do: counts against the declared rows, clipped sums against the bounds, a
    histogram's bins ≥ 0 and adding up to the site's count. A failure names no site."""
    summaries = summaries_of(query, cohort)
    assert run_with_summaries(query, summaries, [300, 200, 150])["n"] is not None  # honest
    tamper(summaries[1])
    with pytest.raises(DisclosureRefused, match=message) as refused:
        run_with_summaries(query, summaries, [300, 200, 150])
    assert_names_no_site(refused)
