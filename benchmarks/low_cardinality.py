"""The default generator against the default release gates on real low-cardinality tables.

Survey-like tables, whose columns take a handful of values each, are where a generator copies
training rows: real unseen rows repeat training rows there too, and the gates allow a
generator no more copies than they show (plus a point), no closer rows, and no membership
attack beyond an advantage of 0.1 that chance cannot explain. Each table is split 80/20
(`synth.holdout.split_holdout`) with seeds 0 to `--seeds` − 1; `cart` with its defaults, and with
the defaults it had before (leaves of 30, replicated uniques kept), trains on the 80 %,
samples as many rows, and is evaluated and gated (`synth.gates.ReleaseGates()`).

Tables (packaged with statsmodels and lifelines, nothing downloaded):

- `fair` (statsmodels): 6 366 answers to a 1974 magazine survey on marriage; 8 columns of
  4 to 7 values, one continuous rate;
- `anes96` (statsmodels): 944 respondents of the 1996 American National Election Study;
  7-point scales, income bracket, age, vote, and population of the place (continuous);
- `rossi` (lifelines): 432 released prisoners; 6 yes/no columns, age, prior convictions, week
  of arrest (most at 52);
- `kidney_transplant` (lifelines): 863 patients; sex by race as three yes/no columns, age,
  death, days observed.

Run: `.venv/bin/python benchmarks/low_cardinality.py [--seeds 5] [--out PATH]`. Prints a
Markdown table (means over the splits; the attack's largest advantage in brackets); writes the
per-split numbers to benchmarks/results/low_cardinality.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
sys.path.insert(0, str(ROOT.parent))

from benchmarks.synth import load_randhie  # noqa: E402, F401, I001 -- one BLAS thread first

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import pandas as pd  # noqa: E402

import synth  # noqa: E402
from synth.gates import ReleaseGates  # noqa: E402
from synth.holdout import split_holdout  # noqa: E402
from synth.verdict import verdict  # noqa: E402

HOLDOUT = 0.2
GENERATORS: dict[str, dict[str, Any]] = {
    "cart": {},
    "cart, leaves of 30, uniques kept (before)": {
        "min_samples_leaf": 30,
        "drop_unique_copies": False,
    },
}


def _fair() -> pd.DataFrame:
    import statsmodels.api as sm

    return sm.datasets.fair.load_pandas().data


def _anes96() -> pd.DataFrame:
    import statsmodels.api as sm

    return sm.datasets.anes96.load_pandas().data


def _rossi() -> pd.DataFrame:
    from lifelines.datasets import load_rossi

    return load_rossi()


def _kidney() -> pd.DataFrame:
    from lifelines.datasets import load_kidney_transplant

    return load_kidney_transplant()


TABLES: dict[str, Callable[[], pd.DataFrame]] = {
    "fair": _fair,
    "anes96": _anes96,
    "rossi": _rossi,
    "kidney_transplant": _kidney,
}


def measure(table: str, generator: str, seed: int) -> dict[str, Any]:
    frame = TABLES[table]()
    train, holdout = split_holdout(frame, HOLDOUT, seed=seed)
    started = time.perf_counter()
    model = synth.train(train, "cart", **GENERATORS[generator])
    synthetic = model.sample(len(train), seed=seed)
    evaluation = synth.evaluate(train, synthetic, holdout, metadata=model.metadata, seed=seed)
    outcomes = ReleaseGates().apply(evaluation, model.epsilon)
    privacy = evaluation["privacy"]
    return {
        "table": table,
        "rows": len(frame),
        "generator": generator,
        "seed": seed,
        "fidelity": evaluation["fidelity"]["score"],
        "exact_match_rate": privacy["exact_match_rate"],
        "exact_match_rate_holdout": privacy["exact_match_rate_holdout"],
        "dcr_closer_p_value": privacy["dcr_closer_p_value"],
        "mia_advantage": privacy["mia_advantage"],
        "mia_advantage_ci": privacy["ci"]["mia_advantage"],
        "failed_gates": [g.name for g in outcomes if not g.passed],
        "verdict": verdict(evaluation, outcomes)["verdict"],
        "seconds": round(time.perf_counter() - started, 2),
    }


def markdown(results: list[dict[str, Any]]) -> str:
    head = (
        "| table | rows | generator | fidelity | exact copies: synthetic | holdout | "
        "MIA advantage (max) | gates passed | failed gates | verdicts |\n"
        "|---|---:|---|---:|---:|---:|---:|---:|---|---|\n"
    )
    lines = []
    frame = pd.DataFrame(results)
    for (table, generator), runs in frame.groupby(["table", "generator"], sort=False):
        failed = sorted({g for names in runs["failed_gates"] for g in names})
        counts = runs["verdict"].value_counts()
        verdicts = ", ".join(
            f"{counts[v]} {v}" for v in ("pass", "needs attention", "fail") if v in counts
        )
        lines.append(
            f"| {table} | {runs['rows'].iloc[0]:,} | {generator} | {runs['fidelity'].mean():.3f} "
            f"| {runs['exact_match_rate'].mean():.3f} "
            f"| {runs['exact_match_rate_holdout'].mean():.3f} "
            f"| {runs['mia_advantage'].mean():.3f} ({runs['mia_advantage'].max():.3f}) "
            f"| {sum(not f for f in runs['failed_gates'])}/{len(runs)} "
            f"| {', '.join(failed) or '–'} | {verdicts} |"
        )
    return head + "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tables", default=",".join(TABLES))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "low_cardinality.json")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    results = []
    for table in args.tables.split(","):
        for generator in GENERATORS:
            for seed in range(args.seeds):
                results.append(measure(table, generator, seed))
                r = results[-1]
                print(
                    f"{table} / {generator} / seed {seed}: {r['seconds']:.1f} s, failed "
                    f"{', '.join(r['failed_gates']) or 'none'}",
                    file=sys.stderr,
                    flush=True,
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(markdown(results))


if __name__ == "__main__":
    main()
