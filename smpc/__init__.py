"""Secure pooled statistics on MPyC: the query language, local summaries, the protocol.

A library: it imports no web, database or HTTP code, and only the MPC party process imports
`mpyc.runtime` (which parses `sys.argv` at import). Public entry points:

- `parse_query(dict)` and `prepare(dict, schema)`: validate a query (and against a schema);
  `compile_query(dict, schema)`: the same, once, as the statistic that will run it;
- `local_summary(query, frame, schema)`: what one party secret-shares (never rows);
- `run_party(job)`: run one party of the protocol in its own process;
- `simulate(query, frames)`: the whole protocol, one process per frame, on loopback;
- `reference(query, frame, schema)`: the plaintext oracle on pooled data (tests and demo);
- `disclosure(query, schema)`: what a query would reveal and the ε it would spend (dry runs).

Names are imported on first use so that the party process, which needs neither pandas nor the
simulator, starts quickly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smpc.job import LocalSummary, PartyJob, PartyOutcome
    from smpc.query import applied_threshold, check_query
    from smpc.runner import run_party
    from smpc.simulation import simulate
    from smpc.statistics import (
        DP_STATISTICS,
        STATISTICS,
        compile_query,
        disclosure,
        local_summary,
        parse_query,
        prepare,
        reference,
    )

_HOMES = {
    "LocalSummary": "smpc.job",
    "PartyJob": "smpc.job",
    "PartyOutcome": "smpc.job",
    "applied_threshold": "smpc.query",
    "check_query": "smpc.query",
    "run_party": "smpc.runner",
    "simulate": "smpc.simulation",
    "DP_STATISTICS": "smpc.statistics",
    "STATISTICS": "smpc.statistics",
    "compile_query": "smpc.statistics",
    "parse_query": "smpc.statistics",
    "disclosure": "smpc.statistics",
    "local_summary": "smpc.statistics",
    "prepare": "smpc.statistics",
    "reference": "smpc.statistics",
}

__all__ = [
    "DP_STATISTICS",
    "STATISTICS",
    "LocalSummary",
    "PartyJob",
    "PartyOutcome",
    "applied_threshold",
    "check_query",
    "compile_query",
    "disclosure",
    "local_summary",
    "parse_query",
    "prepare",
    "reference",
    "run_party",
    "simulate",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'smpc' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
