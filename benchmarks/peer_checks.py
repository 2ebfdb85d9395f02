"""What the parties' checks of each other cost: protocol seconds over TLS, as nodes run it.

    python benchmarks/peer_checks.py                        # this checkout
    PYTHONPATH=/tmp/before python benchmarks/peer_checks.py --label before

Each run hands every party its TLS material as a node would: in this checkout, run
certificates issued by each party's node key, checked against it (`smpc.tls.install`), every
connection pinned to its party id and the query, schema and parties agreed by a hash
(`smpc.peers`); in a checkout from before node identities (`smpc.tls.new_identity`), fresh
self-signed certificates. The protocol's own seconds (the smallest `PartyOutcome.seconds`:
each party times from its MPyC start, connecting included) and the wall seconds from handing
the jobs over to the last outcome (party start included), median of `--repeat` runs, count and
mean over 3 000 pooled rows, 3 and 5 parties. `--alternate DIR` runs this checkout and the one
at DIR in turn, `--rounds` times, in subprocesses, and prints both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
QUERIES = {
    "count": {"statistic": "count"},
    "mean": {"statistic": "mean", "column": "weight"},
}


def cohort(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    return pd.DataFrame({"weight": np.round(rng.uniform(3, 90, rows), 1)})


def material(parties: int) -> list:
    """Every party's TLS material, as this checkout's nodes make it."""
    import smpc.tls as tls

    if hasattr(tls, "local_parties"):
        return tls.local_parties(parties, "benchmark")
    identities = [tls.new_identity(i) for i in range(parties)]  # before node identities
    certificates = [cert for _, cert in identities]
    return [tls.PartyTLS(key_pem=key, certificates=certificates) for key, _ in identities]


def one_run(query: dict, frames: list[pd.DataFrame]) -> tuple[float, float]:
    from smpc.job import PartyJob
    from smpc.runner import start_parties, wait_party
    from smpc.simulation import free_ports
    from smpc.statistics import compile_query
    from tessera.schemas import ColumnSpec, DatasetSchema

    schema = DatasetSchema(columns=[ColumnSpec(name="weight", type="float", min=2, max=120)])
    statistic = compile_query({"dataset": "d", **query}, schema)
    summaries = [statistic.local_summary(frame) for frame in frames]
    addresses = [("127.0.0.1", port) for port in free_ports(len(frames))]
    tls = material(len(frames))
    jobs = [
        PartyJob(
            query=statistic.query.to_json(),
            dataset_schema=schema.model_copy(update={"rows": len(frames[i])}),
            summary=summary,
            party_id=i,
            parties=addresses,
            min_count_floor=5,
            timeout_s=60,
            tls=tls[i],
        )
        for i, summary in enumerate(summaries)
    ]
    started = time.perf_counter()
    procs = start_parties(jobs)
    outcomes = [wait_party(p, j) for p, j in zip(procs, jobs, strict=True)]
    return min(o.seconds for o in outcomes), time.perf_counter() - started


def measure(repeat: int) -> dict[str, list[float]]:
    frame = cohort(3000)
    out = {}
    for name, query in QUERIES.items():
        for parties in (3, 5):
            frames = [frame.iloc[i::parties].reset_index(drop=True) for i in range(parties)]
            one_run(query, frames)  # warm the zygote
            runs = [one_run(query, frames) for _ in range(repeat)]
            out[f"{name}/{parties}"] = [
                float(np.median([r[0] for r in runs])),
                float(np.median([r[1] for r in runs])),
            ]
    return out


def table(results: dict[str, dict[str, list[list[float]]]]) -> None:
    labels = list(results)
    print(
        "| statistic | parties | " + " | ".join(f"{x}: protocol s, wall s" for x in labels) + " |"
    )
    print("|---|---|" + "---|" * len(labels))
    for key in next(iter(results.values())):
        name, parties = key.split("/")
        cells = []
        for label in labels:
            rounds = results[label][key]
            protocol = [r[0] for r in rounds]
            wall = [r[1] for r in rounds]
            cells.append(
                f"{min(protocol):.3f}–{max(protocol):.3f}, {min(wall):.3f}–{max(wall):.3f}"
            )
        print(f"| {name} | {parties} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--json", action="store_true", help="print the medians as JSON")
    parser.add_argument("--alternate", type=Path, help="another checkout, run in turn")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.alternate is None:
        measured = measure(args.repeat)
        if args.json:
            print(json.dumps(measured))
        else:
            table({args.label: {k: [v] for k, v in measured.items()}})
        return
    results: dict[str, dict[str, list[list[float]]]] = {"before": {}, "this checkout": {}}
    for _ in range(args.rounds):
        for label, path in (("before", args.alternate), ("this checkout", ROOT)):
            env = {**os.environ, "PYTHONPATH": str(path)}
            argv = [sys.executable, str(Path(__file__).resolve()), "--repeat", str(args.repeat)]
            # run in that checkout: party processes start with `python -m`, which reads the
            # working directory first
            done = subprocess.run(
                [*argv, "--json"], env=env, cwd=path, capture_output=True, text=True, check=True
            )
            for key, value in json.loads(done.stdout.strip().splitlines()[-1]).items():
                results[label].setdefault(key, []).append(value)
    print(f"median of {args.repeat} runs per round, range over {args.rounds} rounds")
    table(results)


if __name__ == "__main__":
    main()
