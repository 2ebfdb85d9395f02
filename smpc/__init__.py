"""Secure pooled statistics on MPyC: the query language, local summaries, the protocol.

A library: it imports no web, database or HTTP code, and only the MPC party process imports
`mpyc.runtime` (which parses `sys.argv` at import). Public entry points:

- `parse_query(dict)` and `prepare(dict, schema)`: validate a query (and against a schema);
- `local_summary(query, frame, schema)`: what one party secret-shares (never rows);
- `run_party(job)`: run one party of the protocol in its own process;
- `simulate(query, frames)`: the whole protocol, one process per frame, on loopback;
- `reference(query, frame, schema)`: the plaintext oracle on pooled data (tests and demo).
"""

from smpc.job import LocalSummary, PartyJob, PartyOutcome
from smpc.query import STATISTICS, check_query, parse_query
from smpc.runner import run_party
from smpc.simulate import simulate
from smpc.statistics import SUPPORTED, local_summary, prepare, reference

__all__ = [
    "STATISTICS",
    "SUPPORTED",
    "LocalSummary",
    "PartyJob",
    "PartyOutcome",
    "check_query",
    "local_summary",
    "parse_query",
    "prepare",
    "reference",
    "run_party",
    "simulate",
]
