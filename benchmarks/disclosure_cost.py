"""What disclosure control costs: latency of each statistic's protocol, and accuracy.

    python benchmarks/disclosure_cost.py                   # both tables, this checkout
    python benchmarks/disclosure_cost.py --latency --label before   # with PYTHONPATH=<old tree>

Latency: the protocol's own seconds (the slowest party's `PartyOutcome.seconds`: from the
parties' connection to the opened result, process start excluded), median of `--repeat` runs,
3 and 5 parties over 3 000 pooled rows. Run it once in this checkout and once with `PYTHONPATH`
pointing at a checkout from before the rules (e.g. `git worktree add /tmp/before d92fcd5`) to
compare; it uses only what both have.

Accuracy: the `exact` mode's perturbation against the exact answer at n = 100, 1 000, 10 000
pooled rows, over `--seeds` random cohorts, from `smpc.statistics.reference_parties` (the
plaintext twin the MPC matches exactly, so no MPC run is needed): mean |count error|, mean
relative error of a mean and of a variance, mean |error| of a maximum and of a median as a share
of the declared range.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
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
        ]
    }
)
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
    "ttest": {"statistic": "ttest", "column": "weight", "group": "sex"},
    "chi2": {"statistic": "chi2", "rows": "sex", "columns": "icu"},
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
        }
    )


def split(frame: pd.DataFrame, parties: int) -> list[pd.DataFrame]:
    weights = np.arange(1, parties + 1, dtype=float)
    cuts = np.cumsum(weights / weights.sum() * len(frame)).astype(int)[:-1]
    bounds = [0, *cuts, len(frame)]
    return [frame.iloc[a:b].reset_index(drop=True) for a, b in itertools.pairwise(bounds)]


def protocol_seconds(query: dict, frames: list[pd.DataFrame]) -> float:
    """One run's slowest party's protocol seconds (what `simulate` does, timed)."""
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
    return max(wait_party(p, j).seconds for p, j in zip(procs, jobs, strict=True))


def latency(repeat: int, label: str) -> None:
    frame = cohort(3000, 1)
    print(f"\nProtocol seconds ({label}), median of {repeat}, 3 000 pooled rows, floors 5")
    print("| statistic | 3 parties | 5 parties |\n|---|---|---|")
    for name, query in QUERIES.items():
        cells = []
        for parties in (3, 5):
            frames = split(frame, parties)
            try:
                runs = [protocol_seconds(query, frames) for _ in range(repeat)]
                cells.append(f"{statistics.median(runs):.3f}")
            except Exception as exc:  # a statistic the other checkout lacks, or refuses
                cells.append(f"({type(exc).__name__})")
        print(f"| {name} | {cells[0]} | {cells[1]} |", flush=True)


def accuracy(seeds: int) -> None:
    from smpc.statistics import reference, reference_parties

    print(f"\nAccuracy of the exact mode's perturbation, mean over {seeds} cohorts, 3 parties")
    print(
        "| pooled n | |count error| | mean: rel. error | variance: rel. error "
        "| max: |error| / range | median: |error| / range |\n|---|---|---|---|---|---|"
    )
    for n in (100, 1000, 10000):
        errors: dict[str, list[float]] = {k: [] for k in ("count", "mean", "var", "max", "q")}
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
        row = [f"{np.mean(errors['count']):.2f}"] + [
            f"{100 * np.mean(errors[k]):.2f} %" for k in ("mean", "var", "max", "q")
        ]
        print(f"| {n} | " + " | ".join(row) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", action="store_true", help="only the latency table")
    parser.add_argument("--accuracy", action="store_true", help="only the accuracy table")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--label", default="this checkout")
    args = parser.parse_args()
    both = not (args.latency or args.accuracy)
    if args.latency or both:
        latency(args.repeat, args.label)
    if args.accuracy or both:
        accuracy(args.seeds)


if __name__ == "__main__":
    main()
