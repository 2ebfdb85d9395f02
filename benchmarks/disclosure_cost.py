"""What disclosure control costs and buys: protocol latency, accuracy, attacks that miss.

    python benchmarks/disclosure_cost.py                   # every table, this checkout
    python benchmarks/disclosure_cost.py --latency --label before   # with PYTHONPATH=<old tree>

Latency: the protocol's own seconds (the smallest `PartyOutcome.seconds` of the parties: each
party times from its MPyC start, which includes waiting for its peers to connect, so the last
one to connect measures the protocol itself; process start excluded), median of `--repeat` runs,
3 and 5 parties over 3 000 pooled rows. Run it once in this checkout and once with `PYTHONPATH`
pointing at a checkout from before the rules (e.g. `git worktree add /tmp/before d92fcd5`) to
compare; it uses only what both have.

Accuracy: the `exact` mode's perturbation against the exact answer at n = 100, 1 000, 10 000
pooled rows, over `--seeds` random cohorts, from `smpc.statistics.reference_parties` (the
plaintext twin the MPC matches exactly, so no MPC run is needed): mean |count error|, mean
relative error of a mean and of a variance, mean |error| of a maximum and of a median as a share
of the declared range, mean |error| of an OLS slope in standard errors and of a correlation.

Attacks: per attempt, how often the attacks of `tests/adversarial/test_cells.py` (differencing
a sum, a mean, a count, two regressions and two survival curves; reading a child's value from a
maximum or a median) miss by more
than 2 % of the declared range (a count: are not exact), over `--trials` draws of the nodes'
row-key secrets, from the plaintext twin.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tessera.schemas import DatasetSchema

SCHEMA = DatasetSchema.model_validate(
    {
        "columns": [
            {"name": "age", "type": "integer", "min": 0, "max": 216},
            {"name": "weight", "type": "float", "min": 2, "max": 120},
            {"name": "sex", "type": "categorical", "levels": ["F", "M"]},
            {"name": "icu", "type": "boolean"},
            {"name": "stay", "type": "integer", "min": 0, "max": 60},
            {"name": "died", "type": "boolean"},
        ]
    }
)
STAY_HIGH = 60
QUERIES = {
    "count": {"statistic": "count", "group_by": ["sex"]},
    "mean": {"statistic": "mean", "column": "weight", "where": [["age", ">=", 24]]},
    "variance": {"statistic": "variance", "column": "weight"},
    "max": {"statistic": "max", "column": "weight", "group_by": ["sex"]},
    "histogram": {"statistic": "histogram", "column": "age", "bins": [0, 12, 24, 60, 120, 217]},
    "crosstab": {"statistic": "crosstab", "rows": "sex", "columns": "icu"},
    "quantile": {"statistic": "quantile", "column": "weight", "q": [0.25, 0.5, 0.75]},
    "linear_regression": {
        "statistic": "linear_regression",
        "outcome": "weight",
        "predictors": ["age", "sex"],
    },
    "logistic_regression": {
        "statistic": "logistic_regression",
        "outcome": "icu",
        "predictors": ["age", "weight"],
    },
    "correlation": {"statistic": "correlation", "columns": ["age", "weight"]},
    "ttest": {"statistic": "ttest", "column": "weight", "group": "sex"},
    "chi2": {"statistic": "chi2", "rows": "sex", "columns": "icu"},
    "kaplan_meier": {"statistic": "kaplan_meier", "time": "stay", "event": "died", "group": "sex"},
}


def cohort(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(0, 217, rows)
    return pd.DataFrame(
        {
            "age": age,
            "weight": np.round(3.5 + 0.25 * age + rng.normal(0, 3, rows), 1).clip(2, 120),
            "sex": rng.choice(["F", "M"], rows),
            "icu": rng.random(rows) < 0.2,
            "stay": rng.integers(0, STAY_HIGH + 1, rows),
            "died": rng.random(rows) < 0.3,
        }
    )


def split(frame: pd.DataFrame, parties: int) -> list[pd.DataFrame]:
    weights = np.arange(1, parties + 1, dtype=float)
    cuts = np.cumsum(weights / weights.sum() * len(frame)).astype(int)[:-1]
    bounds = [0, *cuts, len(frame)]
    return [frame.iloc[a:b].reset_index(drop=True) for a, b in itertools.pairwise(bounds)]


def protocol_seconds(query: dict, frames: list[pd.DataFrame]) -> float:
    """One run's protocol seconds (what `simulate` does, timed)."""
    from smpc.job import PartyJob
    from smpc.runner import start_parties, wait_party
    from smpc.simulation import free_ports
    from smpc.statistics import compile_query

    statistic = compile_query({"dataset": "d", **query}, SCHEMA)
    local = getattr(statistic, "local_summary", statistic.local_input)
    summaries = [local(frame) for frame in frames]
    addresses = [("127.0.0.1", port) for port in free_ports(len(frames))]
    jobs = [
        PartyJob(
            query=statistic.query.to_json(),
            dataset_schema=SCHEMA,
            summary=summary,
            party_id=i,
            parties=addresses,
            min_count_floor=5,
            timeout_s=120,
        )
        for i, summary in enumerate(summaries)
    ]
    procs = start_parties(jobs)
    # each party times from its start, connecting included; the last to connect waited least
    return min(wait_party(p, j).seconds for p, j in zip(procs, jobs, strict=True))


def latency(repeat: int, label: str, only: list[str] | None = None) -> None:
    frame = cohort(3000, 1)
    print(f"\nProtocol seconds ({label}), median of {repeat}, 3 000 pooled rows, floors 5")
    print("| statistic | 3 parties | 5 parties |\n|---|---|---|")
    for name, query in QUERIES.items():
        if only and name not in only:
            continue
        cells = []
        for parties in (3, 5):
            frames = split(frame, parties)
            try:
                runs = [protocol_seconds(query, frames) for _ in range(repeat)]
                cells.append(f"{float(np.median(runs)):.3f}")
            except Exception as exc:  # a statistic the other checkout lacks, or refuses
                cells.append(f"({type(exc).__name__})")
        print(f"| {name} | {cells[0]} | {cells[1]} |", flush=True)


def accuracy(seeds: int) -> None:
    from smpc.statistics import reference, reference_parties

    print(f"\nAccuracy of the exact mode's perturbation, mean over {seeds} cohorts, 3 parties")
    print(
        "| pooled n | |count error| | mean: rel. error | variance: rel. error "
        "| max: |error| / range | median: |error| / range | OLS slope: |error| / SE "
        "| r: |error| | Welch's t: |error| |\n|---|---|---|---|---|---|---|---|---|"
    )
    for n in (100, 1000, 10000):
        errors: dict[str, list[float]] = {
            k: [] for k in ("count", "mean", "var", "max", "q", "slope", "r", "t")
        }
        for seed in range(seeds):
            frames = split(cohort(n, 100 + seed), 3)
            pooled = pd.concat(frames, ignore_index=True)

            def both(
                query: dict, frames: list[pd.DataFrame] = frames, pooled: pd.DataFrame = pooled
            ) -> tuple[dict, dict]:
                q = {"dataset": "d", **query}
                return reference_parties(q, frames, SCHEMA), reference(q, pooled, SCHEMA)

            moved, truth = both({"statistic": "count"})
            errors["count"].append(abs(moved["count"] - truth["count"]))
            moved, truth = both({"statistic": "variance", "column": "weight"})
            errors["mean"].append(abs(moved["mean"] / truth["mean"] - 1))
            errors["var"].append(abs(moved["variance"] / truth["variance"] - 1))
            moved, truth = both({"statistic": "max", "column": "weight"})
            errors["max"].append(abs(moved["max"] - truth["max"]) / 118)
            moved, truth = both({"statistic": "quantile", "column": "weight", "q": [0.5]})
            errors["q"].append(abs(moved["quantiles"]["0.5"] - truth["quantiles"]["0.5"]) / 118)
            moved, truth = both(QUERIES["linear_regression"])
            errors["slope"].append(
                abs(moved["coefficients"]["age"] - truth["coefficients"]["age"])
                / truth["std_errors"]["age"]
            )
            moved, truth = both(QUERIES["correlation"])
            errors["r"].append(abs(moved["matrix"][0][1] - truth["matrix"][0][1]))
            moved, truth = both(QUERIES["ttest"])
            errors["t"].append(abs(moved["statistic"] - truth["statistic"]))
        row = [f"{np.mean(errors['count']):.2f}"] + [
            f"{100 * np.mean(errors[k]):.2f} %" for k in ("mean", "var", "max", "q")
        ]
        row += [f"{np.mean(errors[k]):.{d}f}" for k, d in (("slope", 2), ("r", 4), ("t", 3))]
        print(f"| {n} | " + " | ".join(row) + " |", flush=True)


def welch_attack_error(others: pd.DataFrame, test: dict, truth: float) -> float:
    """The full-knowledge attack on a t-test of weight by sex (the target a girl of weight
    `truth`): the weight on the declared range whose Welch t and df, with `others`, come
    closest to the published ones (relative errors); its error in kg, infinite when the test
    is suppressed."""
    from smpc.statistics.ttest import welch_with_one_more

    if test["statistic"] is None:
        return math.inf
    a = others[others.sex == "F"].weight.to_numpy()
    b = others[others.sex == "M"].weight.to_numpy()
    grid = np.linspace(2, 120, 11_801)
    t, df = welch_with_one_more(a, b, grid)
    score = ((t - test["statistic"]) / max(abs(test["statistic"]), 0.1)) ** 2
    score += ((df - test["df"]) / test["df"]) ** 2
    return abs(float(grid[np.argmin(score)]) - truth)


def attacks(trials: int) -> None:
    """How often each attack of tests/adversarial/test_cells.py misses, per attempt, over
    `trials` draws of the nodes' row-key secrets (the plaintext twin: no MPC needed)."""
    from smpc.cellkey import new_secret
    from smpc.statistics import reference_parties
    from tessera.errors import TesseraError

    frames = split(cohort(2400, 7), 3)
    for h, age in enumerate((201, 203, 205, 207, 209)):  # one child of each age, alone
        lone = pd.DataFrame(
            {
                "age": [age],
                "weight": [40.0 + 7 * h],
                "sex": ["F"],
                "icu": [False],
                "stay": [5 + 11 * h],
                "died": [h % 2 == 0],
            }
        )
        frames[h % 3] = pd.concat([frames[h % 3], lone], ignore_index=True)
    data = pd.concat(frames, ignore_index=True)
    span = 120 - 2
    missed = {
        "sum": 0,
        "mean": 0,
        "count": 0,
        "max": 0,
        "median": 0,
        "models": 0,
        "level": 0,
        "logistic": 0,
        "logistic_rounded": 0,
        "survival": 0,
        "ttest": 0,
    }
    for trial in range(trials):
        secrets = [new_secret() for _ in frames]
        age = 201 + 2 * (trial % 5)

        def ask(query: dict, secrets: list[str] = secrets) -> dict:
            return reference_parties({"dataset": "d", **query}, frames, SCHEMA, key_secrets=secrets)

        at_least, above = [["age", ">=", age]], [["age", ">", age]]
        truth = float(data[data.age == age].weight.iloc[0])
        n = int((data.age >= age).sum())
        s = [
            ask({"statistic": "sum", "column": "weight", "where": w})["sum"]
            for w in (at_least, above)
        ]
        missed["sum"] += abs(s[0] - s[1] - truth) > 0.02 * span
        m = [
            ask({"statistic": "mean", "column": "weight", "where": w})["mean"]
            for w in (at_least, above)
        ]
        missed["mean"] += abs(m[0] * n - m[1] * (n - 1) - truth) > 0.02 * span
        c = [
            ask({"statistic": "count", "where": w})["count"]
            for w in ([["age", ">=", 100]], [["age", ">", 100]])
        ]
        missed["count"] += c[0] - c[1] != int((data.age == 100).sum())
        low = 20 * (trial % 5)
        where = [["age", ">=", low], ["age", "<", low + 100]]
        rows = data[(data.age >= low) & (data.age < low + 100)].weight
        top = ask({"statistic": "max", "column": "weight", "where": where})["max"]
        missed["max"] += abs(top - rows.max()) > 0.02 * span
        mid = ask({"statistic": "quantile", "column": "weight", "q": [0.5], "where": where})
        exact = float(np.quantile(rows, 0.5, method="inverted_cdf"))
        missed["median"] += abs(mid["quantiles"]["0.5"] - exact) > 0.02 * span
        means = []  # y on x and x on y pass through (x̄, ȳ): ȳ = (a + b·c) / (1 − b·d)
        for w in (at_least, above):
            fits = [
                ask({"statistic": "linear_regression", "outcome": y, "predictors": [x], "where": w})
                for y, x in (("weight", "age"), ("age", "weight"))
            ]
            a, b = (fits[0]["coefficients"][k] for k in ("const", "age"))
            c, d = (fits[1]["coefficients"][k] for k in ("const", "weight"))
            means.append(((a + b * c) / (1 - b * d), fits[0]["n"]))
        (mean, count), (mean_without, _) = means
        guess = count * (mean - mean_without) + mean_without
        missed["models"] += abs(guess - truth) > 0.02 * span
        # a model on sex alone: its constant is the girls' mean (or log-odds) per selection
        girls = int(((data.age >= age) & (data.sex == "F")).sum())
        for statistic, outcome in (("linear_regression", "weight"), ("logistic_regression", "icu")):
            levels = []
            for w in (at_least, above):
                query = {"statistic": statistic, "outcome": outcome, "predictors": ["sex"]}
                try:
                    const = ask({**query, "where": w})["coefficients"]["const"]
                except TesseraError:  # refused (e.g. separated): the attack gets nothing
                    const = math.nan
                logistic = statistic == "logistic_regression"
                levels.append(1 / (1 + math.exp(-const)) if logistic else const)
            guess = girls * (levels[0] - levels[1]) + levels[1]  # nan: a miss below
            target = float(data[data.age == age][outcome].iloc[0])
            if statistic == "linear_regression":
                missed["level"] += not abs(guess - target) <= 0.02 * span
            else:
                missed["logistic"] += not abs(guess - target) <= 0.02
                rounded = round(min(max(guess, 0.0), 1.0)) if math.isfinite(guess) else None
                missed["logistic_rounded"] += rounded != target
        # two survival curves: the risk sets differ by one up to the child's stay (CUSUM)
        risk = []
        for w in (at_least, above):
            curve = ask({"statistic": "kaplan_meier", "time": "stay", "event": "died", "where": w})
            shown = curve["groups"]["all"]
            on_grid = np.zeros(STAY_HIGH + 1)
            for t in range(STAY_HIGH + 1):
                later = [r for u, r in zip(shown["time"], shown["at_risk"], strict=True) if u >= t]
                on_grid[t] = later[0] if later else 0
            risk.append(on_grid)
        guess = int(np.argmax(np.cumsum(risk[0] - risk[1] - 0.5)))
        stay = int(data[data.age == age].stay.iloc[0])
        missed["survival"] += abs(guess - stay) > 0.02 * STAY_HIGH
        # a t-test of weight by sex over ages a − 40 … a, the attacker knowing every other child
        where = [["age", ">=", age - 40], ["age", "<=", age]]
        test = ask({"statistic": "ttest", "column": "weight", "group": "sex", "where": where})
        others = data[data.age.between(age - 40, age) & (data.age != age)]
        missed["ttest"] += welch_attack_error(others, test, truth) > 0.02 * span
    print(
        f"\nAttacks that miss (by more than 2 % of the declared range; a count: not exact), "
        f"per attempt, over {trials} draws of the row-key secrets"
    )
    print("| attack | misses |\n|---|---|")
    names = {
        "sum": "sum(age >= a) − sum(age > a), one child aged a",
        "mean": "the same with means × known n",
        "count": "count(age >= a) − count(age > a)",
        "max": "max of a selection",
        "median": "median of a selection",
        "models": "two regressions (y on x, x on y) per selection: n·(ȳ − ȳ′) + ȳ′",
        "level": "a regression on sex alone per selection: n_F·(const − const′) + const′",
        "logistic": "the same with a logistic regression of the ICU flag (by 2 % of 0–1)",
        "logistic_rounded": "the same, the estimate rounded to 0 or 1 (chance: 50 %)",
        "survival": "two Kaplan–Meier curves per selection: the risk sets' change point (CUSUM)",
        "ttest": "a t-test, every other child known: the weight whose t and df fit best",
    }
    for key, label in names.items():
        print(f"| {label} | {100 * missed[key] / trials:.0f} % |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", action="store_true", help="only the latency table")
    parser.add_argument("--accuracy", action="store_true", help="only the accuracy table")
    parser.add_argument("--attacks", action="store_true", help="only the attacks table")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--only", help="latency of these statistics only (comma-separated)")
    args = parser.parse_args()
    both = not (args.latency or args.accuracy or args.attacks)
    if args.latency or both:
        latency(args.repeat, args.label, args.only.split(",") if args.only else None)
    if args.accuracy or both:
        accuracy(args.seeds)
    if args.attacks or both:
        attacks(args.trials)


if __name__ == "__main__":
    main()
