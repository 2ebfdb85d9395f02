"""Many researchers at once: throughput, latency and failures of count and mean queries.

A coordinator (SQLite or PostgreSQL) and three or five node agents run on this machine as OS
processes (`demo.network.Network`), each node serving 1 000 rows. N researchers (each its own
account, as concurrent users are) submit queries back to back for a fixed time, alternating a
count and a mean, each submitting its next query once the last one is finished (submit, then
long-poll). The table shows, per configuration:

- **queries**: finished within the window (succeeded + failed); **throughput**: those per second
  of the window;
- **p50 / p95**: REST latency, from the submit call to the finished answer, of succeeded queries;
- **failed**: queries that finished as failed (the error codes are listed under the table);
  **429**: submissions the coordinator turned away with 429 (the researcher waits
  `Retry-After` and submits again; the wait is not part of any latency).

Run: `.venv/bin/python benchmarks/load.py [--clients 1 5 20 50] [--database sqlite postgres]
[--nodes 3 5] [--seconds 30]`. `--quick` is one 10-second window at 1 and 5 clients, SQLite,
3 nodes. Results are also written as JSON (benchmarks/results/load.json by default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from query_latency import MIX, percentile  # noqa: E402
from query_latency import QUERIES as LATENCY_QUERIES  # noqa: E402

from demo.cohort import DATASET, DemoHospital, cohort, schema  # noqa: E402
from demo.network import DataSource, Network, NodeSpec  # noqa: E402

QUERIES: list[dict[str, Any]] = [LATENCY_QUERIES["count"], LATENCY_QUERIES["mean"]]
PASSWORD = "load-password-1"
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one coordinator, dropped afterwards."""
    import sqlalchemy as sa

    name = f"tessera_load_{secrets.token_hex(4)}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    failed: Counter[str] = field(default_factory=Counter)
    throttled: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def network(root: Path, nodes: int, rows: int, database_url: str | None) -> Iterator[Any]:
    """A running network with one study over every node; yields (net, study id, admin)."""
    from demo.scenario import wait_for_datasets
    from tessera.client import TesseraClient

    declared = schema()
    net = Network(root)
    try:
        net.start_coordinator(database_url)
        admin = TesseraClient(net.url)
        admin.login("admin", net.admin_password)
        org_ids = []
        for i in range(nodes):
            frame = cohort(DemoHospital(f"site_{i}", rows, 100 + i, MIX))
            path = root / f"site_{i}.parquet"
            frame.to_parquet(path, index=False)
            org = admin.create_organisation(f"Site {i}")
            org_ids.append(org["id"])
            node = admin.create_node(f"site_{i}", org["id"])
            spec = NodeSpec(
                f"site_{i}", f"Site {i}", [DataSource(DATASET, "parquet", declared, path=str(path))]
            )
            net.start_node(spec, node["api_key"], node["enrolment_token"])
        study = admin.create_study("load", organisation_ids=org_ids, datasets=[DATASET])
        wait_for_datasets(admin, study["id"], nodes, net)
        yield net, study["id"], admin
    finally:
        net.stop()


def researchers(admin: Any, url: str, study_id: int, count: int, tag: str) -> list[Any]:
    from tessera.client import TesseraClient

    clients = []
    for i in range(count):
        name = f"load-{tag}-{i}"
        admin.create_user(name, PASSWORD, role="researcher")
        admin.add_study_member(study_id, name)
        client = TesseraClient(url)
        client.login(name, PASSWORD)
        clients.append(client)
    return clients


def drive(client: Any, study_id: int, until: float, tally: Tally, offset: int) -> None:
    """Submit, wait, repeat until the window closes."""
    from tessera.errors import TesseraError

    i = offset
    while time.monotonic() < until:
        query = QUERIES[i % len(QUERIES)]
        i += 1
        started = time.perf_counter()
        try:
            submitted = client.submit_query(study_id, query)
        except TesseraError as exc:
            if exc.http_status == 429:
                with tally.lock:
                    tally.throttled += 1
                retry = float((exc.details or {}).get("retry_after_s", 1.0))
                time.sleep(min(retry, max(0.0, until - time.monotonic())))
                continue
            with tally.lock:
                tally.failed[f"submit {exc.code}"] += 1
            continue
        done = client.wait_query(submitted["id"], 180)
        elapsed = time.perf_counter() - started
        with tally.lock:
            if done["status"] == "succeeded":
                tally.latencies.append(elapsed)
            else:
                tally.failed[str((done.get("error") or {}).get("code", done["status"]))] += 1


def measure(study_id: int, clients: list[Any], seconds: float) -> dict[str, Any]:
    tally = Tally()
    until = time.monotonic() + seconds
    started = time.perf_counter()
    threads = [
        threading.Thread(target=drive, args=(c, study_id, until, tally, i), daemon=True)
        for i, c in enumerate(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    window = time.perf_counter() - started  # includes the last queries' completion
    done = len(tally.latencies) + sum(tally.failed.values())
    return {
        "clients": len(clients),
        "queries": done,
        "succeeded": len(tally.latencies),
        "failed": sum(tally.failed.values()),
        "failures": dict(tally.failed),
        "throttled": tally.throttled,
        "window_s": round(window, 2),
        "throughput_qps": done / window,
        "p50_s": percentile(tally.latencies, 0.5),
        "p95_s": percentile(tally.latencies, 0.95),
    }


def run_configuration(
    database: str, nodes: int, client_counts: list[int], seconds: float, rows: int
) -> list[dict[str, Any]]:
    out = []
    with tempfile.TemporaryDirectory(prefix="tessera-load-") as tmp:
        pg = postgres_database() if database == "postgres" else None
        url = pg.__enter__() if pg is not None else None
        try:
            with network(Path(tmp), nodes, rows, url) as (net, study_id, admin):
                warm = researchers(admin, net.url, study_id, 1, "warm")[0]
                for query in QUERIES:  # every node loads its data into its cache
                    warm.wait_query(warm.submit_query(study_id, query)["id"], 120)
                for count in client_counts:
                    clients = researchers(admin, net.url, study_id, count, f"c{count}")
                    row = measure(study_id, clients, seconds)
                    row |= {"database": database, "nodes": nodes}
                    out.append(row)
                    print(format_row(row), flush=True)
                    time.sleep(2.0)  # let the last runs' processes exit
        finally:
            if pg is not None:
                pg.__exit__(None, None, None)
    return out


HEADER = (
    f"{'database':<9} {'nodes':>5} {'clients':>7} {'queries':>7} {'q/s':>6} "
    f"{'p50 s':>6} {'p95 s':>6} {'failed':>6} {'429':>5}"
)


def format_row(row: dict[str, Any]) -> str:
    return (
        f"{row['database']:<9} {row['nodes']:>5} {row['clients']:>7} {row['queries']:>7} "
        f"{row['throughput_qps']:>6.2f} {row['p50_s']:>6.2f} {row['p95_s']:>6.2f} "
        f"{row['failed']:>6} {row['throttled']:>5}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 5, 20, 50])
    parser.add_argument("--database", nargs="+", choices=["sqlite", "postgres"])
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--seconds", type=float, default=30.0, help="each window's length")
    parser.add_argument("--rows", type=int, default=1_000, help="rows per node")
    parser.add_argument("--quick", action="store_true", help="1 and 5 clients, 10 s, SQLite, 3")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "load.json")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.database, args.nodes, args.seconds = [1, 5], ["sqlite"], [3], 10.0
    databases = args.database or ["sqlite", "postgres"]

    print(HEADER)
    print("-" * len(HEADER))
    rows = []
    for database in databases:
        for nodes in args.nodes:
            rows += run_configuration(database, nodes, args.clients, args.seconds, args.rows)
    failures = Counter[str]()
    for row in rows:
        failures.update(row["failures"])
    if failures:
        print("\nfailures: " + ", ".join(f"{code} x{n}" for code, n in failures.most_common()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                },
                "seconds": args.seconds,
                "rows_per_node": args.rows,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
