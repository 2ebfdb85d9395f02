"""Pooled-query latency: through the REST API (coordinator + node agents) and bare `simulate`.

For count, mean and a 10-bin histogram, with 3 and 5 nodes and 1 k / 100 k / 1 M rows per node,
it measures repeated runs and prints p50/p95 seconds, then writes JSON next to this script
(benchmarks/results/query_latency.json).

- REST: submit through the API as a researcher and long-poll until the result is stored
  (nodes long-poll for the task, compute their local summary on their cached data, accept,
  run their MPyC party, post the opened result; the coordinator compares and stores).
- simulate: `smpc.simulate` on the same frames (local summaries + one party process per frame).

Run: `.venv/bin/python benchmarks/query_latency.py [--quick] [--repeats N]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from demo.cohort import DATASET, DemoHospital, cohort, schema  # noqa: E402
from demo.network import DataSource, Network, NodeSpec  # noqa: E402
from smpc import simulate  # noqa: E402

QUERIES: dict[str, dict[str, Any]] = {
    "count": {"statistic": "count", "dataset": DATASET},
    "mean": {"statistic": "mean", "dataset": DATASET, "column": "weight_kg"},
    "histogram": {
        "statistic": "histogram",
        "dataset": DATASET,
        "column": "age_months",
        "bins": [0, 12, 24, 36, 48, 60, 84, 108, 144, 180, 216],
    },
}
MIX = (0.15, 0.25, 0.15, 0.15, 0.2, 0.1)


def frames_for(nodes: int, rows: int) -> list[pd.DataFrame]:
    return [cohort(DemoHospital(f"site_{i}", rows, 100 + i, MIX)) for i in range(nodes)]


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile of `values` (the nearest rank); NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[k]


def timed(fn: Any, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_simulate(frames: list[pd.DataFrame], repeats: int) -> dict[str, list[float]]:
    declared = schema()
    out = {}
    for name, query in QUERIES.items():
        simulate(query, frames, declared)  # warm the party pool
        time.sleep(1.0)
        out[name] = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            simulate(query, frames, declared)
            out[name].append(time.perf_counter() - t0)
            time.sleep(1.5)  # let the warm pool refill, as between real queries
    return out


def bench_rest(frames: list[pd.DataFrame], repeats: int) -> dict[str, list[float]]:
    from tessera.client import TesseraClient

    declared = schema()
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
        root = Path(tmp)
        net = Network(root)
        try:
            net.start_coordinator()
            admin = TesseraClient(net.url)
            admin.login("admin", net.admin_password)
            org_ids = []
            for i, frame in enumerate(frames):
                path = root / f"site_{i}.parquet"
                frame.to_parquet(path, index=False)
                org = admin.create_organisation(f"Site {i}")
                org_ids.append(org["id"])
                node = admin.create_node(f"site_{i}", org["id"])
                spec = NodeSpec(
                    f"site_{i}",
                    f"Site {i}",
                    [DataSource(DATASET, "parquet", declared, path=str(path))],
                )
                net.start_node(spec, node["api_key"], node["enrolment_token"])
            admin.create_user("bench", "bench-password-1", role="researcher")
            study = admin.create_study(
                "bench", organisation_ids=org_ids, datasets=[DATASET], members=["bench"]
            )
            from demo.scenario import wait_for_datasets

            wait_for_datasets(admin, study["id"], len(frames), net)
            client = TesseraClient(net.url)
            client.login("bench", "bench-password-1")

            def run(query: dict[str, Any]) -> None:
                done = client.wait_query(client.submit_query(study["id"], query)["id"], 120)
                if done["status"] != "succeeded":
                    raise RuntimeError(f"query failed: {done.get('error')}")

            out = {}
            for name, query in QUERIES.items():
                run(query)  # first run loads each node's data into its cache
                time.sleep(1.0)
                out[name] = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    run(query)
                    out[name].append(time.perf_counter() - t0)
                    time.sleep(1.5)
            return out
        finally:
            net.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 k and 100 k rows, 3 nodes only")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--nodes", type=int, nargs="+", help="node counts (default 3 5)")
    parser.add_argument("--rows", type=int, nargs="+", help="rows per node (default 1e3 1e5 1e6)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "query_latency.json")
    args = parser.parse_args()

    sizes = args.rows or ([1_000, 100_000] if args.quick else [1_000, 100_000, 1_000_000])
    node_counts = args.nodes or ([3] if args.quick else [3, 5])
    rows_out = []
    header = (
        f"{'nodes':>5} {'rows/node':>10} {'query':<10} {'REST p50':>9} {'REST p95':>9} "
        f"{'sim p50':>8} {'sim p95':>8} {'REST/sim':>8}"
    )
    print(header)
    print("-" * len(header))
    for nodes in node_counts:
        for rows in sizes:
            frames = frames_for(nodes, rows)
            sim = bench_simulate(frames, args.repeats)
            rest = bench_rest(frames, args.repeats)
            for name in QUERIES:
                r50, r95 = percentile(rest[name], 0.5), percentile(rest[name], 0.95)
                s50, s95 = percentile(sim[name], 0.5), percentile(sim[name], 0.95)
                row = {
                    "nodes": nodes,
                    "rows_per_node": rows,
                    "query": name,
                    "rest_p50_s": r50,
                    "rest_p95_s": r95,
                    "simulate_p50_s": s50,
                    "simulate_p95_s": s95,
                    "rest_runs_s": rest[name],
                    "simulate_runs_s": sim[name],
                }
                rows_out.append(row)
                print(
                    f"{nodes:>5} {rows:>10,} {name:<10} {r50:>9.3f} {r95:>9.3f} "
                    f"{s50:>8.3f} {s95:>8.3f} {r50 / s50:>8.2f}",
                    flush=True,
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                    "cpus": __import__("os").cpu_count(),
                },
                "repeats": args.repeats,
                "median_of_all_rest_p50_s": float(np.median([r["rest_p50_s"] for r in rows_out])),
                "rows": rows_out,
            },
            indent=2,
        )
    )
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
