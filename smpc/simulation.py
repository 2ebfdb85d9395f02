"""`simulate`: the real protocol on one machine, one MPyC party process per data frame.

Each frame plays one hospital: its local summary is computed here, handed to its own party
process, and the parties talk over loopback TCP on free ports. The result is what every party
opened (they must agree). It is the library's test harness and a statistician's sandbox.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from contextlib import closing
from typing import Any

import pandas as pd

from smpc.cellkey import frame_secret
from smpc.frames import infer_schema
from smpc.job import PartyJob
from smpc.runner import start_parties, wait_all, wait_party
from smpc.statistics import compile_query
from smpc.tls import local_parties
from tessera.errors import ProtocolFailed, QueryInvalid
from tessera.schemas import DatasetSchema, DisclosureRules

MIN_PARTIES = 3
MAX_PARTIES = 16


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Distinct ports that were free a moment ago (the OS picks them)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            with closing(s):
                pass


def declaring(schema: DatasetSchema, rows: int) -> DatasetSchema:
    """The schema a party hands its party process: its declared `rows`, or else the row count
    of the data it actually holds (as a node does: `node_agent`)."""
    return schema if schema.rows is not None else schema.model_copy(update={"rows": rows})


def simulate(
    query: dict[str, Any],
    parties: Sequence[pd.DataFrame],
    schema: DatasetSchema | None = None,
    *,
    min_count_floors: Sequence[int] | None = None,
    rules: DisclosureRules | Sequence[DisclosureRules] | None = None,
    key_secrets: Sequence[str] | None = None,
    timeout_s: float = 60.0,
    tls: bool = True,
) -> dict[str, Any]:
    """Run `query` by MPC over `parties` (one frame each) and return the pooled result.

    `schema` defaults to one inferred from the frames (`smpc.frames.infer_schema`: categorical
    levels are the sorted union of values seen, a pandas categorical's its own; no bounds).
    `min_count_floors` plays each party's policy floor, `rules` its disclosure mode and rules
    (one for all, or one per party; default: the `exact` mode with DataSHIELD's defaults, as a
    node's policy), `key_secrets` its row-key secret (`smpc.cellkey`; default: one derived from
    each frame's contents, so the same frames always get the same perturbation). Each party
    declares its frame's row count (`DatasetSchema.rows`), unless `schema` declares one for
    all. With `tls`
    (the default) the parties authenticate each other with fresh per-run certificates, as
    nodes do.
    """
    if not MIN_PARTIES <= len(parties) <= MAX_PARTIES:
        raise QueryInvalid(
            f"simulate needs {MIN_PARTIES} to {MAX_PARTIES} data frames (an honest majority "
            f"needs at least 3 parties), got {len(parties)}"
        )
    if schema is None:
        schema = infer_schema(parties)
    statistic = compile_query(query, schema)
    floors = list(min_count_floors or [0] * len(parties))
    if len(floors) != len(parties):
        raise QueryInvalid("give one min_count floor per party")
    if rules is None or isinstance(rules, DisclosureRules):
        rules = [rules or DisclosureRules()] * len(parties)
    if len(rules) != len(parties):
        raise QueryInvalid("give one set of disclosure rules per party, or one for all")
    if any(r.mode == "dp" for r in rules) and statistic.query.dp is None:
        raise QueryInvalid(
            "a party's dataset is in the 'dp' disclosure mode: every query on it must carry 'dp'",
            {"field": "dp"},
        )
    secrets = list(key_secrets or [frame_secret(frame) for frame in parties])
    if len(secrets) != len(parties):
        raise QueryInvalid("give one row-key secret per party")
    summaries = []
    for frame, secret in zip(parties, secrets, strict=True):
        statistic.key_secret = secret
        summaries.append(statistic.local_summary(frame))
    addresses = [("127.0.0.1", port) for port in free_ports(len(parties))]
    material = local_parties(len(parties), "simulation") if tls else []
    jobs = [
        PartyJob(
            query=statistic.query.to_json(),
            dataset_schema=declaring(schema, len(frame)),
            summary=summary,
            party_id=i,
            parties=addresses,
            min_count_floor=floors[i],
            rules=rules[i],
            timeout_s=timeout_s,
            tls=material[i] if tls else None,
        )
        for i, (summary, frame) in enumerate(zip(summaries, parties, strict=True))
    ]
    procs = start_parties(jobs)
    outcomes = wait_all(procs, lambda i, proc: wait_party(proc, jobs[i]))
    results = {json.dumps(o.result, sort_keys=True) for o in outcomes}
    if len(results) != 1:
        raise ProtocolFailed("the parties opened different results", {"results": sorted(results)})
    return outcomes[0].result
