"""The pooled synthesizer against central MST and the sites' own: fidelity, and the MPC cost.

Quality (`--quality`, the default): each real packaged table (`gbsg2`, 686 rows, lifelines;
`randhie`, 20 190 rows, statsmodels; their declared schemas are benchmarks/synth.py's; `fair`,
6 366 survey answers, statsmodels, its schema here) is
shuffled and split *unevenly* over 3 parties (50/30/20 %) or 5 (35/25/20/12/8 %). At each ε
(δ = 1e-6) and repeat, it trains:

- `pooled`: `synth.train_pooled` over the parts (MPC between one party process per part);
- `central`: MST on the union of the parts (what a trusted curator holding every row would
  get: the target to come within 0.03 of);
- `sites`: MST on each part alone (what each hospital has today), averaged over the parts.

Each model samples as many rows as the union holds, and its fidelity is SDMetrics' quality
score (`synth.evaluation.fidelity_scores`) against the union (both subsampled to at most 5 000
rows). MST's noise is fresh OS entropy on every run, so the numbers vary; `--repeats` averages.

Timing (`--timing`): the pooled measurement alone (the parties' MPC, from connection to the last
opened sum, the slowest party's) and the whole `train_pooled` call (process start, measurement,
fitting), at 1 000, 10 000 and 100 000 pooled rows (randhie's rows drawn with replacement), with
3 and 5 parties, at ε = 1; and the worst case of a 10-column table, every column with 32
values (`--wide-rows`, 100 000 rows, ε = 20: every selection table keeps its 1 024 cells).

Run: `.venv/bin/python benchmarks/pooled_synth.py [--quality] [--timing] [--repeats 2]
[--tables gbsg2,randhie] [--smoke] [--out PATH]`. Prints Markdown tables; writes the raw numbers
to benchmarks/results/pooled_synth.json.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
sys.path.insert(0, str(ROOT.parent))

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks.synth import GBSG2_SCHEMA, RANDHIE_SCHEMA, load_gbsg2, load_randhie  # noqa: E402
from synth import train  # noqa: E402
from synth.evaluation import fidelity_scores  # noqa: E402
from synth.metadata import TableMetadata  # noqa: E402
from synth.pooled import train_pooled  # noqa: E402
from tessera.schemas import ColumnSpec, DatasetSchema  # noqa: E402

# statsmodels `fair`: 6 366 answers to a 1974 magazine survey on marriage, few values a column;
# bounds as a survey codebook would declare them
FAIR_SCHEMA = DatasetSchema(
    columns=[
        ColumnSpec(name="rate_marriage", type="integer", min=1, max=5),
        ColumnSpec(name="age", type="float", min=17, max=45),
        ColumnSpec(name="yrs_married", type="float", min=0, max=25),
        ColumnSpec(name="children", type="float", min=0, max=6),
        ColumnSpec(name="religious", type="integer", min=1, max=4),
        ColumnSpec(name="educ", type="integer", min=9, max=20),
        ColumnSpec(name="occupation", type="integer", min=1, max=6),
        ColumnSpec(name="occupation_husb", type="integer", min=1, max=6),
        ColumnSpec(name="affairs", type="float", min=0, max=60),
    ]
)


def load_fair() -> pd.DataFrame:
    import statsmodels.api as sm

    frame = sm.datasets.fair.load_pandas().data.copy()
    for name in ("rate_marriage", "religious", "educ", "occupation", "occupation_husb"):
        frame[name] = frame[name].astype(int)
    return frame[FAIR_SCHEMA.names].reset_index(drop=True)


TABLES = {
    "gbsg2": (load_gbsg2, GBSG2_SCHEMA),
    "randhie": (load_randhie, RANDHIE_SCHEMA),
    "fair": (load_fair, FAIR_SCHEMA),
}
SPLITS = {3: (0.5, 0.3, 0.2), 5: (0.35, 0.25, 0.2, 0.12, 0.08)}
EPSILONS = (1.0, 5.0)
DELTA = 1e-6
FIDELITY_ROWS = 5000
SIZES = (1_000, 10_000, 100_000)


def split(frame: pd.DataFrame, fractions: tuple[float, ...], seed: int) -> list[pd.DataFrame]:
    order = np.random.default_rng(seed).permutation(len(frame))
    bounds = np.round(np.cumsum((0.0, *fractions)) * len(frame)).astype(int)
    return [frame.iloc[order[a:b]].reset_index(drop=True) for a, b in itertools.pairwise(bounds)]


def fidelity(union: pd.DataFrame, synthetic: pd.DataFrame, metadata: TableMetadata) -> float:
    rng = np.random.default_rng(0)

    def sub(frame: pd.DataFrame) -> pd.DataFrame:
        if len(frame) <= FIDELITY_ROWS:
            return frame
        return frame.iloc[rng.choice(len(frame), FIDELITY_ROWS, replace=False)]

    score = fidelity_scores(sub(union), sub(synthetic), metadata)["score"]
    return float(score)


def quality(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for table in args.tables:
        load, schema = TABLES[table]
        union = load()
        metadata = TableMetadata.from_schema(schema)
        for parties in args.parties:
            for epsilon in args.epsilons:
                for repeat in range(args.repeats):
                    parts = split(union, SPLITS[parties], seed=repeat)
                    params = {"epsilon": epsilon, "delta": DELTA, "iters": args.iters}
                    n = len(union)
                    started = time.perf_counter()
                    pooled = train_pooled(parts, metadata=metadata, **params)
                    pooled_s = time.perf_counter() - started
                    central = train(union, "mst", metadata=metadata, **params)
                    sites = [train(p, "mst", metadata=metadata, **params) for p in parts]
                    row = {
                        "table": table,
                        "parties": parties,
                        "epsilon": epsilon,
                        "repeat": repeat,
                        "rows": n,
                        "pooled": fidelity(union, pooled.sample(n, seed=repeat), metadata),
                        "central": fidelity(union, central.sample(n, seed=repeat), metadata),
                        "sites": statistics.fmean(
                            fidelity(union, s.sample(n, seed=repeat), metadata) for s in sites
                        ),
                        "pooled_seconds": round(pooled_s, 2),
                        "pooled_epsilon": pooled.epsilon,
                    }
                    log(row)
                    rows.append(row)
                    release_memory()
    return rows


def release_memory() -> None:
    """JAX keeps every program mbi compiled: drop them between fits (a long run otherwise
    grows until the machine has no memory left)."""
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


def timing(args: argparse.Namespace) -> list[dict[str, Any]]:
    base = load_randhie()
    metadata = TableMetadata.from_schema(RANDHIE_SCHEMA)
    rows = []
    for size in args.sizes:
        frame = base.iloc[np.random.default_rng(size).integers(0, len(base), size)]
        for parties in args.parties:
            rows.append(timed(frame.reset_index(drop=True), parties, metadata, iters=args.iters))
    return rows


def timed(
    frame: pd.DataFrame, parties: int, metadata: TableMetadata, **params: Any
) -> dict[str, Any]:
    """One `train_pooled` over `frame` split evenly: its measurement's cost and its wall time."""
    parts = split(frame, (1 / parties,) * parties, seed=1)
    started = time.perf_counter()
    model = train_pooled(parts, metadata=metadata, **{"epsilon": 1.0, **params})
    wall = time.perf_counter() - started
    stats = model.measurement or {}
    row = {
        "rows": len(frame),
        "parties": parties,
        "measure_seconds": stats.get("seconds"),
        "cells": stats.get("cells"),
        "rounds": stats.get("rounds"),
        "train_pooled_seconds": round(wall, 2),
    }
    log(row)
    release_memory()
    return row


WIDE_COLUMNS, WIDE_LEVELS = 10, 32


def wide_timing(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The issue's worst case: 10 columns of 32 values each, so that every one of the 45 pair
    tables MST measures for its selection could have 32 x 32 = 1 024 cells; at epsilon 20 and
    100 000 rows MST keeps about 480 of them (its noise-sized groups): about 24 000 noisy cells
    opened."""
    schema = DatasetSchema(
        columns=[
            ColumnSpec(name=f"c{i}", type="integer", min=0, max=WIDE_LEVELS - 1)
            for i in range(WIDE_COLUMNS)
        ]
    )
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {c.name: rng.integers(0, WIDE_LEVELS, args.wide_rows) for c in schema.columns}
    )
    metadata = TableMetadata.from_schema(schema)
    label = f"{WIDE_COLUMNS} columns x {WIDE_LEVELS} values"
    return [
        {
            **timed(frame, parties, metadata, epsilon=20.0, iters=args.iters, bins=WIDE_LEVELS),
            "table": label,
        }
        for parties in args.parties
    ]


def quality_table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| table | parties | ε | runs | pooled | central | sites' mean | pooled − central "
        "(± se) | pooled > sites | within 0.03 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["table"], r["parties"], r["epsilon"]) for r in rows})
    for table, parties, epsilon in keys:
        group = [
            r for r in rows if (r["table"], r["parties"], r["epsilon"]) == (table, parties, epsilon)
        ]
        pooled = statistics.fmean(r["pooled"] for r in group)
        central = statistics.fmean(r["central"] for r in group)
        sites = statistics.fmean(r["sites"] for r in group)
        gaps = [r["pooled"] - r["central"] for r in group]  # paired: the same split
        se = statistics.stdev(gaps) / len(gaps) ** 0.5 if len(gaps) > 1 else float("nan")
        out.append(
            f"| {table} | {parties} | {epsilon:g} | {len(group)} | {pooled:.3f} | {central:.3f} "
            f"| {sites:.3f} | {pooled - central:+.3f} (± {se:.3f}) | "
            f"{'yes' if pooled > sites else 'no'} | "
            f"{'yes' if pooled >= central - 0.03 else 'no'} |"
        )
    return "\n".join(out)


def timing_table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| pooled rows | parties | MPC measurement s | cells opened | rounds | train_pooled s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        label = f"{r['rows']:,}" + (f" ({r['table']})" if "table" in r else "")
        out.append(
            f"| {label} | {r['parties']} | {r['measure_seconds']:.2f} | {r['cells']:,} | "
            f"{r['rounds']} | {r['train_pooled_seconds']:.1f} |"
        )
    return "\n".join(out)


def log(message: Any) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--timing", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tables", default="gbsg2,randhie,fair")
    parser.add_argument("--parties", default="3,5")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument(
        "--wide-rows", type=int, default=100_000, help="rows of the 10 x 32 table (0: skip it)"
    )
    parser.add_argument("--smoke", action="store_true", help="one small run of each part")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "pooled_synth.json")
    args = parser.parse_args(argv)
    args.tables = [t for t in args.tables.split(",") if t]
    unknown = [t for t in args.tables if t not in TABLES]
    if unknown:
        parser.error(f"unknown table(s) {', '.join(unknown)}; known: {', '.join(TABLES)}")
    args.parties = [int(p) for p in args.parties.split(",")]
    if any(p not in SPLITS for p in args.parties):
        parser.error("parties is 3 or 5")
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if not (args.quality or args.timing):
        args.quality = args.timing = True
    args.epsilons = list(EPSILONS)
    if args.smoke:
        args.tables, args.parties, args.repeats, args.epsilons = ["gbsg2"], [3], 1, [1.0]
        args.sizes, args.iters, args.wide_rows = [1_000], 100, 0
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report: dict[str, Any] = {"quality": [], "timing": []}
    if args.quality:
        report["quality"] = quality(args)
        print("## Fidelity: pooled MST vs central MST vs the sites' own\n")
        print(quality_table(report["quality"]) + "\n")
    if args.timing:
        report["timing"] = timing(args) + (wide_timing(args) if args.wide_rows else [])
        print("## The pooled measurement's cost\n")
        print(timing_table(report["timing"]) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
