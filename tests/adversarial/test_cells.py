"""An adversarial analyst against the counting statistics, through `simulate` (the real MPC).

The attacks of issue 11 on tables and their cells: differencing two selections that differ by
one child, a count minus a histogram's released cells, repeating a query to average the
perturbation away, extremes and quantiles that are a child's value, one hospital's view of a
small pooled cell, a threshold that overflows the secure comparison, and a selection of one
child. Each test asserts that the attack fails: the query is refused, the target cell is
suppressed, or the attacker's estimate is off by more than 2 % of the column's declared range
in at least 4 of 5 attempts on different targets. The accuracy the perturbation costs is
checked on a few thousand rows.

The cohort: 2 400 children over three hospitals (1 200, 800, 400 rows), ages in months
(declared 0–216), weights in kg (declared 2–120), sex.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest

from smpc import simulate
from smpc.statistics import reference_parties
from tessera.errors import DisclosureRefused, QueryInvalid
from tessera.schemas import DatasetSchema

WEIGHT_RANGE = 120 - 2
AGE_RANGE = 216
TARGETS = (201, 203, 205, 207, 209)
FLOORS = [3, 3, 3]  # each hospital's min_count floor (a node's default is 5)

SCHEMA = DatasetSchema.model_validate(
    {
        "columns": [
            {"name": "age_months", "type": "integer", "min": 0, "max": 216},
            {"name": "weight_kg", "type": "float", "min": 2, "max": 120},
            {"name": "sex", "type": "categorical", "levels": ["F", "M"]},
        ]
    }
)


@pytest.fixture(scope="module")
def cohort() -> list[pd.DataFrame]:
    rng = np.random.default_rng(11)
    frames = []
    for rows in (1200, 800, 400):
        age = rng.integers(0, 200, rows)
        frames.append(
            pd.DataFrame(
                {
                    "age_months": age,
                    "weight_kg": np.round(3.5 + 0.25 * age + rng.normal(0, 3, rows), 1).clip(
                        2, 120
                    ),
                    "sex": rng.choice(["F", "M"], rows),
                }
            )
        )
    # five targets, each the only child of their age (201, 203, …, 209 months), at different
    # hospitals, with 24 older children (211–216 months) at every hospital above them
    for i, age in enumerate(TARGETS):
        target = pd.DataFrame({"age_months": [age], "weight_kg": [40.0 + 7 * i], "sex": ["F"]})
        frames[i % 3] = pd.concat([frames[i % 3], target], ignore_index=True)
    for h in range(3):
        older = pd.DataFrame(
            {
                "age_months": rng.integers(211, 217, 8),
                "weight_kg": np.round(rng.uniform(45, 70, 8), 1),
                "sex": rng.choice(["F", "M"], 8),
            }
        )
        frames[h] = pd.concat([frames[h], older], ignore_index=True)
    return frames


def run(query: dict, frames: list[pd.DataFrame]) -> dict:
    result = simulate({"dataset": "d", **query}, frames, SCHEMA, min_count_floors=FLOORS)
    expected = reference_parties({"dataset": "d", **query}, frames, SCHEMA, min_count_floors=FLOORS)
    assert result == expected  # the MPC computed exactly the published perturbation
    return result


def pooled(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True)


def test_differencing_two_sums_does_not_give_a_childs_weight(cohort: list[pd.DataFrame]) -> None:
    errors = []
    for age in TARGETS:
        at_least = run(
            {"statistic": "sum", "column": "weight_kg", "where": [["age_months", ">=", age]]},
            cohort,
        )
        above = run(
            {"statistic": "sum", "column": "weight_kg", "where": [["age_months", ">", age]]},
            cohort,
        )
        truth = float(pooled(cohort).query("age_months == @age").weight_kg.iloc[0])
        assert at_least["sum"] is not None and above["sum"] is not None  # both released
        errors.append(abs(at_least["sum"] - above["sum"] - truth))
    off = [e > 0.02 * WEIGHT_RANGE for e in errors]
    assert sum(off) >= 4, errors


def test_differencing_two_means_does_not_give_a_childs_weight(cohort: list[pd.DataFrame]) -> None:
    """The attacker knows exactly how many children each selection holds (say, from elsewhere)
    and subtracts the totals mean × n."""
    data = pooled(cohort)
    errors = []
    for age in TARGETS:
        at_least = run(
            {"statistic": "mean", "column": "weight_kg", "where": [["age_months", ">=", age]]},
            cohort,
        )
        above = run(
            {"statistic": "mean", "column": "weight_kg", "where": [["age_months", ">", age]]},
            cohort,
        )
        n = int((data.age_months >= age).sum())
        estimate = at_least["mean"] * n - above["mean"] * (n - 1)
        truth = float(data[data.age_months == age].weight_kg.iloc[0])
        errors.append(abs(estimate - truth))
    assert sum(e > 0.02 * WEIGHT_RANGE for e in errors) >= 4, errors


def test_differencing_two_counts_does_not_give_one_child(cohort: list[pd.DataFrame]) -> None:
    wrong = 0
    for age in TARGETS:
        at_least = run({"statistic": "count", "where": [["age_months", ">=", age - 100]]}, cohort)
        above = run({"statistic": "count", "where": [["age_months", ">", age - 100]]}, cohort)
        truth = int((pooled(cohort).age_months == age - 100).sum())
        wrong += at_least["count"] - above["count"] != truth
    assert wrong >= 4


def test_a_count_minus_a_histograms_released_cells_misses_the_suppressed_one(
    cohort: list[pd.DataFrame],
) -> None:
    data = pooled(cohort)
    total = run({"statistic": "count"}, cohort)
    wrong = 0
    for k in range(5):
        # the bin [200, 202 + 2k) holds the targets aged 201 … 201 + 2k: 1 to 5 children at
        # three hospitals, each hospital's share below its floor of 3
        edges = [0, 50, 100, 150, 200, 202 + 2 * k, 217]
        histogram = run({"statistic": "histogram", "column": "age_months", "bins": edges}, cohort)
        counts = histogram["counts"]
        assert counts[4] is None and all(c is not None for c in counts[:4] + counts[5:])
        truth = int(((data.age_months >= 200) & (data.age_months < edges[5])).sum())
        estimate = total["count"] - sum(c for c in counts if c is not None)
        wrong += estimate != truth
    assert wrong >= 4


def test_repeating_a_query_gets_the_same_answer(cohort: list[pd.DataFrame]) -> None:
    query = {"statistic": "mean", "column": "weight_kg", "where": [["age_months", ">", 150]]}
    answers = [run(query, cohort) for _ in range(3)]
    assert answers[0] == answers[1] == answers[2]  # nothing to average away


@pytest.mark.parametrize("statistic", ["min", "max"])
def test_an_extreme_is_not_a_childs_value(cohort: list[pd.DataFrame], statistic: str) -> None:
    data = pooled(cohort)
    errors = []
    for low in (0, 20, 40, 60, 80):
        where = [["age_months", ">=", low], ["age_months", "<", low + 100]]
        result = run({"statistic": statistic, "column": "weight_kg", "where": where}, cohort)
        rows = data[(data.age_months >= low) & (data.age_months < low + 100)].weight_kg
        truth = rows.min() if statistic == "min" else rows.max()
        errors.append(abs(result[statistic] - truth))
    assert sum(e > 0.02 * WEIGHT_RANGE for e in errors) >= 4, errors


def test_a_quantile_is_not_a_childs_value(cohort: list[pd.DataFrame]) -> None:
    data = pooled(cohort)
    errors = []
    for low in (0, 20, 40, 60, 80):
        where = [["age_months", ">=", low], ["age_months", "<", low + 100]]
        result = run(
            {"statistic": "quantile", "column": "weight_kg", "q": [0, 0.5, 1], "where": where},
            cohort,
        )
        rows = data[(data.age_months >= low) & (data.age_months < low + 100)].weight_kg
        found = np.quantile(rows, [0, 0.5, 1], method="inverted_cdf")
        values = list(result["quantiles"].values())
        errors.append(min(abs(v - t) for v, t in zip(values, found, strict=True)))
    assert sum(e > 0.02 * WEIGHT_RANGE for e in errors) >= 4, errors


def test_one_hospitals_view_of_a_small_pooled_cell(cohort: list[pd.DataFrame]) -> None:
    """A pooled cell of 5 where hospital A holds 4 and hospital B 1: released, it would tell A
    that B has exactly one such child. Every site's contribution must be 0 or ≥ its floor."""
    frames = [f[f.age_months < 200] for f in cohort]
    cell = pd.DataFrame({"age_months": [212] * 5, "weight_kg": [50.0] * 5, "sex": ["M"] * 5})
    others = pd.DataFrame({"age_months": [211] * 10, "weight_kg": [48.0] * 10, "sex": ["F"] * 10})
    frames = [
        pd.concat([frames[0], cell[:4]]),  # hospital A: 4 of the cell
        pd.concat([frames[1], cell[4:]]),  # hospital B: 1
        pd.concat([frames[2], others]),
    ]
    result = run(
        {"statistic": "count", "group_by": ["sex"], "where": [["age_months", ">", 210]]}, frames
    )
    cell = next(g for g in result["groups"] if g["group"]["sex"] == "M")
    assert cell["n"] is None  # pooled 5 ≥ T = 3, but hospital B's 1 is below its floor


def test_a_hospital_padding_a_cell_does_not_release_anothers_single_child(
    cohort: list[pd.DataFrame],
) -> None:
    """A curious node inputs 50 fake rows to lift a cell over the threshold; the other site's
    single child still blocks the release."""
    frames = [f[f.age_months < 200] for f in cohort]
    fake = pd.DataFrame({"age_months": [213] * 50, "weight_kg": [60.0] * 50, "sex": ["F"] * 50})
    lone = pd.DataFrame({"age_months": [213], "weight_kg": [33.3], "sex": ["F"]})
    frames = [pd.concat([frames[0], fake]), pd.concat([frames[1], lone]), frames[2]]
    for statistic in ("count", "mean"):
        query = {"statistic": statistic, "where": [["age_months", "==", 213]]}
        if statistic == "mean":
            query["column"] = "weight_kg"
        result = run(query, frames)
        assert result["n"] is None


def test_a_threshold_beyond_a_million_is_refused_not_wrapped(cohort: list[pd.DataFrame]) -> None:
    for min_count in (2**67, 2**66 + 1, 10**6 + 1):
        with pytest.raises(QueryInvalid, match="min_count"):
            simulate({"statistic": "count", "dataset": "d", "min_count": min_count}, cohort, SCHEMA)


@pytest.mark.parametrize(
    "where",
    [
        [["age_months", "==", 201]],  # one child
        [["age_months", "!=", 203]],  # everyone but one child
    ],
)
def test_a_selection_or_its_complement_of_fewer_than_subset_min_is_refused(
    cohort: list[pd.DataFrame], where: list
) -> None:
    with pytest.raises(DisclosureRefused, match="subset_min") as refused:
        simulate({"statistic": "count", "dataset": "d", "where": where}, cohort, SCHEMA)
    assert "party" not in str(refused.value) and "hospital" not in str(refused.value)


def test_perturbation_costs_little_accuracy_on_a_few_thousand_rows(
    cohort: list[pd.DataFrame],
) -> None:
    data = pooled(cohort)
    counts = run({"statistic": "count", "group_by": ["sex"]}, cohort)
    for entry in counts["groups"]:
        truth = int((data.sex == entry["group"]["sex"]).sum())
        assert abs(entry["n"] - truth) <= 3
    assert abs(counts["n"] - len(data)) <= 3
    means = run({"statistic": "mean", "column": "weight_kg", "group_by": ["sex"]}, cohort)
    for entry in means["groups"]:
        truth = float(data[data.sex == entry["group"]["sex"]].weight_kg.mean())
        assert entry["mean"] == pytest.approx(truth, rel=0.01)


def run_with_summaries(query: dict, summaries: list, floors: list[int]) -> dict:
    """The real parties on given local summaries (a node that lies about its own rows)."""
    from smpc.job import PartyJob
    from smpc.runner import start_parties, wait_party
    from smpc.simulation import free_ports
    from smpc.statistics import compile_query

    statistic = compile_query({"dataset": "d", **query}, SCHEMA)
    addresses = [("127.0.0.1", port) for port in free_ports(len(summaries))]
    jobs = [
        PartyJob(
            query=statistic.query.to_json(),
            dataset_schema=SCHEMA,
            summary=summary,
            party_id=i,
            parties=addresses,
            min_count_floor=floors[i],
            timeout_s=60,
        )
        for i, summary in enumerate(summaries)
    ]
    procs = start_parties(jobs)
    outcomes = []
    for proc, job in zip(procs, jobs, strict=True):
        outcomes.append(wait_party(proc, job))
    return outcomes[0].result


@pytest.mark.parametrize(
    ("statistic", "tamper"),
    [
        ("mean", lambda s: s.moments["sum"].__setitem__(0, s.moments["sum"][0] + (10**6 << 40))),
        ("variance", lambda s: s.moments["sumsq"].__setitem__(0, -(1 << 40))),
        ("max", lambda s: s.vectors["extreme"].__setitem__(0, 500 << 40)),
    ],
)
def test_a_node_feeding_values_outside_its_declared_bounds_is_refused(
    cohort: list[pd.DataFrame], statistic: str, tamper: Any
) -> None:
    """A curious node inflates its sum to move a mean, feeds a negative Σx², or a maximum
    beyond the declared 120 kg: the parties check every site's inputs against the declared
    bounds inside MPC and refuse, naming no site, before any value is opened."""
    from smpc.statistics import compile_query

    query = {"statistic": statistic, "column": "weight_kg"}
    compiled = compile_query({"dataset": "d", **query}, SCHEMA)
    summaries = [compiled.local_summary(frame) for frame in cohort]
    assert run_with_summaries(query, summaries, FLOORS)["n"] is not None  # honest: runs
    tamper(summaries[1])
    with pytest.raises(DisclosureRefused, match="declared bounds") as refused:
        run_with_summaries(query, summaries, FLOORS)
    assert "party" not in str(refused.value) and "site 1" not in str(refused.value)


def regression_attack(cohort: list[pd.DataFrame], age: int, fit: Any) -> float:
    """The attacker's error on the weight of the child aged `age`: y = a + b·x and x = c + d·y
    fitted to the same rows give ȳ = (a + b·c) / (1 − b·d); two selections that differ by that
    child give its weight as n·(ȳ − ȳ′) + ȳ′ (an error in n hardly matters: it multiplies
    ȳ − ȳ′)."""
    means = []
    for op in (">=", ">"):
        where = [["age_months", op, age]]
        fits = [
            fit(
                {
                    "statistic": "linear_regression",
                    "dataset": "d",
                    "outcome": y,
                    "predictors": [x],
                    "where": where,
                }
            )
            for y, x in (("weight_kg", "age_months"), ("age_months", "weight_kg"))
        ]
        a, b = (fits[0]["coefficients"][k] for k in ("const", "age_months"))
        c, d = (fits[1]["coefficients"][k] for k in ("const", "weight_kg"))
        means.append(((a + b * c) / (1 - b * d), fits[0]["n"]))
    (mean, n), (mean_without, _) = means
    truth = float(pooled(cohort).query("age_months == @age").weight_kg.iloc[0])
    return abs(n * (mean - mean_without) + mean_without - truth)


def coefficients(result: dict) -> dict:
    return result["coefficients"]


def over_secrets(
    frames: list[pd.DataFrame],
    schema: DatasetSchema,
    attack: Callable[[int, Callable[[dict], dict]], Any],
    seed: int,
    outputs: Callable[[dict], dict] = coefficients,
    rel: float = 1e-5,
) -> list[Any]:
    """100 attempts of `attack(age, fit)` on a model (or test) query: the five targets with the
    frames' own row-key secrets (the first through `simulate`, whose n and `outputs` are
    checked against the plaintext twin's within `rel`, the rounding to 25 bits; the others
    through the twin), then the same five with 19 other sets of hospital row-key secrets
    through the twin."""

    def simulated(query: dict) -> dict:
        result = simulate(query, frames, schema, min_count_floors=FLOORS)
        twin = reference_parties(query, frames, schema, min_count_floors=FLOORS)
        assert result["n"] == twin["n"]
        for name, value in outputs(twin).items():
            assert outputs(result)[name] == pytest.approx(value, rel=rel)
        return result

    def keyed(secrets: list[str] | None) -> Callable[[dict], dict]:
        def fit(query: dict) -> dict:
            return reference_parties(
                query, frames, schema, min_count_floors=FLOORS, key_secrets=secrets
            )

        return fit

    out = [attack(age, simulated if k == 0 else keyed(None)) for k, age in enumerate(TARGETS)]
    rng = np.random.default_rng(seed)
    for _ in range(19):
        secrets = ["".join(rng.choice(list("abcdefghijklmnop"), 16)) for _ in range(3)]
        out += [attack(age, keyed(secrets)) for age in TARGETS]
    return out


@pytest.mark.slow
def test_differencing_through_regressions_does_not_give_a_childs_weight(
    cohort: list[pd.DataFrame],
) -> None:
    """Were models exact, the attack above would give each child's weight exactly. Each
    group's Gram matrix carries a cell-key pseudo-row instead (weight up to 2·magnitude, at
    the low or high declared bound of each column, by key) and the opened n its count
    perturbation, so the two selections' means move by different amounts.

    The five targets with the frames' own row-key secrets (the first through `simulate`,
    whose coefficients are the plaintext twin's rounded to 25 bits, the others through the
    twin), then the same five with 19 other sets of hospital row-key secrets through the
    twin: 100 attempts, of which at least 80 % (the issue's "4 of 5") must miss by more than
    2 % of the declared range. Measured: 95 % of 200 such attempts missed, with a median miss
    of 15 % of the range."""

    errors = over_secrets(cohort, SCHEMA, lambda age, fit: regression_attack(cohort, age, fit), 5)
    missed = sum(e > 0.02 * WEIGHT_RANGE for e in errors)
    assert missed >= 80, sorted(errors)


def welch_with(others: pd.DataFrame, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Welch's t and df of F against M when one more F child of each weight in `weights`
    joins the rows `others` (vectorised over the candidates)."""
    from smpc.statistics.ttest import welch_with_one_more

    a = others[others.sex == "F"].weight_kg.to_numpy()
    b = others[others.sex == "M"].weight_kg.to_numpy()
    return welch_with_one_more(a, b, weights)


def ttest_selection(age: int) -> list[list[Any]]:
    """The children aged `age` − 40 to `age` months: the target the oldest, 500 in all."""
    return [["age_months", ">=", age - 40], ["age_months", "<=", age]]


def ttest_attack(cohort: list[pd.DataFrame], age: int, fit: Callable[[dict], dict]) -> float:
    """The strongest differencing attacker: knows every selected child but the target (F,
    aged `age`) exactly, sees the t-test of the selection with the target, and takes the
    weight on the declared range whose t and df come closest (relative errors). Its error in
    kg; infinite where the test is suppressed."""
    data = pooled(cohort)
    query = {
        "statistic": "ttest",
        "dataset": "d",
        "column": "weight_kg",
        "group": "sex",
        "where": ttest_selection(age),
    }
    result = fit(query)
    if result["statistic"] is None:
        return float("inf")
    rows = data[data.age_months.between(age - 40, age)]
    grid = np.linspace(2, 120, 11_801)  # every 0.01 kg
    t, df = welch_with(rows[rows.age_months != age], grid)
    score = ((t - result["statistic"]) / max(abs(result["statistic"]), 0.1)) ** 2
    score += ((df - result["df"]) / result["df"]) ** 2
    truth = float(data[data.age_months == age].weight_kg.iloc[0])
    return abs(float(grid[np.argmin(score)]) - truth)


def test_a_ttest_does_not_give_a_childs_weight_to_one_who_knows_every_other_child(
    cohort: list[pd.DataFrame],
) -> None:
    """Were t and df exact (scipy's Welch test, checked first), the attacker would read each
    target's weight off them to the gram. Each level's sums carry a cell-key pseudo-row
    (weight up to 2·magnitude at the low or high declared bound, by key) instead, so t and df
    fit a range of weights. 100 attempts: the five targets with the frames' own row-key
    secrets (through `simulate`, which must equal the plaintext twin up to the rounding of t²
    and df to 25 bits, for the first), then with 19 other sets of hospital row-key secrets
    through the twin; at least 80 must miss by more than 2 % of the declared range."""
    from scipy import stats

    data = pooled(cohort)

    def exact(query: dict) -> dict:
        rows = data[data.age_months.between(query["where"][0][2], query["where"][1][2])]
        fit = stats.ttest_ind(
            rows[rows.sex == "F"].weight_kg, rows[rows.sex == "M"].weight_kg, equal_var=False
        )
        return {"statistic": float(fit.statistic), "df": float(fit.df)}

    assert all(ttest_attack(cohort, age, exact) < 0.011 for age in TARGETS)

    errors = over_secrets(
        cohort,
        SCHEMA,
        lambda age, fit: ttest_attack(cohort, age, fit),
        7,
        outputs=lambda result: {k: result[k] for k in ("statistic", "df", "p_value")},
        rel=1e-6,
    )
    suppressed = sum(e == float("inf") for e in errors)
    assert suppressed <= 20, suppressed  # the attack is tried, not merely refused
    assert sum(e > 0.02 * WEIGHT_RANGE for e in errors) >= 80, sorted(errors)


_QUANTILE_TRANSCRIPT = """
import asyncio, json, sys, types
import numpy as np
import pandas as pd
from mpyc.runtime import mpc
from smpc.disclosure import AppliedRules, DisclosureRules
from smpc.statistics import compile_query
from tessera.schemas import DatasetSchema

opened = []
original = mpc.output
async def recording(x, *args, **kwargs):
    value = await original(x, *args, **kwargs)
    values = getattr(value, "value", value)
    for v in np.asarray(values, dtype=object).ravel():
        opened.append(int(getattr(v, "value", v)))
    return value
mpc.output = recording

schema = DatasetSchema.model_validate(
    {"columns": [{"name": "x", "type": "float", "min": 0, "max": 100}], "rows": 1000}
)
rng = np.random.default_rng(3)
frame = pd.DataFrame({"x": np.round(rng.uniform(0, 100, 301), 3)})
statistic = compile_query(
    {"dataset": "d", "statistic": "quantile", "column": "x", "q": [0.1, 0.5, 0.9]}, schema
)
statistic.rules = AppliedRules.local(None, [5], [DisclosureRules()])
summary = statistic.local_summary(frame)

async def main():
    await mpc.start()
    result = await statistic.compute(mpc, types.SimpleNamespace(summary=summary))
    await mpc.shutdown()
    print(json.dumps({"opened": opened, "values": result.values[0], "n": result.counts[0]}))

mpc.run(main())
"""


def test_a_quantile_opens_no_childs_value_and_no_exact_n_to_the_parties() -> None:
    """Every value the protocol opens, recorded at `mpc.output` (one party, the same code): no
    exact quantile of the 301 values, nor any data value, appears in any fixed-point scale the
    protocol uses; the published quantiles are moved off the data and n only by its count
    perturbation. (The search this replaced opened [quantile ≤ cut] for 8 cut points a round:
    each party could read every exact quantile off it.)"""
    from .one_party import report

    transcript = report(_QUANTILE_TRANSCRIPT)
    opened = set(transcript["opened"])
    # the recording sees the openings: the published values themselves (scaled 2**60)
    assert all(round(v * 2**60) in opened for v in transcript["values"])
    assert transcript["n"] in opened
    assert 301 not in opened or transcript["n"] == 301  # the exact n only as n + 0
    rng = np.random.default_rng(3)
    data = np.round(rng.uniform(0, 100, 301), 3)
    exact = np.quantile(data, [0.1, 0.5, 0.9], method="inverted_cdf")
    scales = [2**16, 2**40, 2**60]  # the rounding grid, moments, moved extremes
    forbidden = {round(float(v) * s) for v in data for s in scales}
    assert not forbidden & opened
    assert all(abs(v - e) > 2**-12 for v, e in zip(transcript["values"], exact, strict=True))
    shifts = [v - e for v, e in zip(transcript["values"], exact, strict=True)]
    assert max(shifts) - min(shifts) < 100 / 4096 + 2**-15  # one shift, half a bin each
    assert abs(transcript["n"] - 301) <= 3
