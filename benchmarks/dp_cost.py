"""What differential privacy inside MPC costs: `simulate` with and without `dp`.

For a mean (one cell: a noisy count and a noisy Σx, ε/2 each), a 20-bin histogram (20 noisy
counts) and a mean grouped by sex × diagnosis group (12 cells), with 3 and 5 parties of 1 000
demo rows each, it times repeated `simulate` runs (wall seconds, party processes from the warm
pool included) and prints p50 / min per query, then writes JSON to
benchmarks/results/dp_cost.json. The noise's coins are also counted (see `smpc.dp`).

Run: `.venv/bin/python benchmarks/dp_cost.py [--repeats N] [--parties 3 5]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from demo.cohort import DATASET, DemoHospital, cohort, schema  # noqa: E402
from smpc import prepare, simulate  # noqa: E402
from smpc.statistics import statistic_for  # noqa: E402

DP = {"epsilon": 1.0, "delta": 0.0}
QUERIES: dict[str, dict[str, Any]] = {
    "mean": {"statistic": "mean", "dataset": DATASET, "column": "weight_kg"},
    "histogram_20": {
        "statistic": "histogram",
        "dataset": DATASET,
        "column": "age_months",
        "bins": [i * 10.8 for i in range(21)],
    },
    "mean_by_sex_dx": {
        "statistic": "mean",
        "dataset": DATASET,
        "column": "weight_kg",
        "group_by": ["sex", "diagnosis_group"],
    },
}
MIX = (0.15, 0.25, 0.15, 0.15, 0.2, 0.1)


def coins(query: dict[str, Any]) -> int:
    statistic = statistic_for(prepare(query, schema()), schema())
    per_cell = sum(2 * (spec.bits - spec.fair_digits) for spec in statistic.noise.values())
    return per_cell * statistic.layout.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--parties", type=int, nargs="+", default=[3, 5])
    args = parser.parse_args()
    rows = []
    for parties in args.parties:
        frames = [cohort(DemoHospital(f"site_{i}", 1000, 100 + i, MIX)) for i in range(parties)]
        for name, query in QUERIES.items():
            for dp in (False, True):
                q = {**query, "dp": DP} if dp else query
                simulate(q, frames, schema())  # warm the party pool
                times = []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    simulate(q, frames, schema())
                    times.append(time.perf_counter() - started)
                rows.append(
                    {
                        "parties": parties,
                        "query": name,
                        "dp": dp,
                        "coins": coins(q) if dp else 0,
                        "p50_s": float(np.median(times)),
                        "min_s": min(times),
                    }
                )
                r = rows[-1]
                print(
                    f"{parties} parties  {name:15s} dp={'yes' if dp else 'no ':3s} "
                    f"coins={r['coins']:5d}  p50={r['p50_s']:.2f} s  min={r['min_s']:.2f} s",
                    flush=True,
                )
    out = ROOT / "results" / "dp_cost.json"
    out.parent.mkdir(exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine()}
    out.write_text(json.dumps({"meta": meta, "epsilon": DP["epsilon"], "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
