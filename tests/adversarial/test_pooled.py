"""Attacks on the pooled synthesizer's measurement (`synth.pooled`), with real party processes.

- A curious party reads everything its party process hands back: it must hold the noisy pooled
  measurements only, never another party's counts, and every opened count carries noise.
- A coordinator that tells one hospital a larger epsilon (less noise) than the others, or a
  different table, gets nothing: the parties compare what they were asked before any share is
  sent, and the run stops naming the party that differs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from demo.cohort import HOSPITALS, cohort, schema
from smpc.runner import start_program, wait_program
from smpc.simulation import free_ports
from smpc.tls import local_parties
from synth.generators.mst import fine_codes, fine_grid
from synth.metadata import TableMetadata
from synth.pooled import MeasurementJob, measurement_query, rows_of
from tessera.errors import ProtocolFailed

pytestmark = pytest.mark.slow


def run(queries: list[dict[str, Any]], frames: list) -> list[Any]:
    metadata = TableMetadata.from_schema(schema())
    ports = free_ports(len(frames))
    tls = local_parties(len(frames), "pooled-attack")
    jobs = [
        MeasurementJob(
            query=queries[i],
            rows=rows_of(frame, metadata),
            party_id=i,
            parties=[("127.0.0.1", p) for p in ports],
            timeout_s=60,
            tls=tls[i],
        )
        for i, frame in enumerate(frames)
    ]
    procs = [start_program("synth.pooled", job.model_dump_json()) for job in jobs]
    out: list[Any] = []
    for i, proc in enumerate(procs):
        try:
            out.append(wait_program(proc, 60, i))
        except ProtocolFailed as exc:
            out.append(exc)
    return out


def test_a_party_learns_only_noisy_pooled_sums() -> None:
    frames = [cohort(h).iloc[:200] for h in HOSPITALS]
    metadata = TableMetadata.from_schema(schema())
    query = measurement_query(metadata, 1.0, None, {"iters": 10})
    outcomes = run([query] * 3, frames)
    assert all(isinstance(o, dict) for o in outcomes), outcomes
    assert {frozenset(o) for o in outcomes} == {
        frozenset({"measurements", "cells", "rounds", "measure_seconds", "seconds"})
    }
    first = outcomes[0]["measurements"]
    assert all(o["measurements"] == first for o in outcomes)  # every party opened the same
    # The sex column's one-way marginal: the opened counts are the pooled counts plus noise
    # (never equal to them in every cell, never equal to any one hospital's counts).
    column = next(c for c in metadata.columns if c.name == "sex")
    encoding = fine_grid(column, 64)
    exact = [np.bincount(fine_codes(encoding, f["sex"]), minlength=encoding.fine) for f in frames]
    spends = {s["measured"]: s for s in first["accounting"]["spends"]}
    assert "one-way marginal sex" in spends
    opened = np.array(
        first["encodings"][[e["column"] for e in first["encodings"]].index("sex")]["fine_weights"]
    )
    pooled = sum(exact)
    assert not np.array_equal(np.round(opened), pooled)
    assert all(not np.array_equal(np.round(opened), site) for site in exact)


def test_a_larger_epsilon_for_one_hospital_is_refused_before_any_share() -> None:
    frames = [cohort(h).iloc[:100] for h in HOSPITALS]
    metadata = TableMetadata.from_schema(schema())
    honest = measurement_query(metadata, 1.0, None, {"iters": 10})
    lenient = measurement_query(metadata, 8.0, None, {"iters": 10})
    outcomes = run([honest, honest, lenient], frames)
    assert all(isinstance(o, ProtocolFailed) for o in outcomes), outcomes
    assert "party 2 holds a different query" in str(outcomes[0])
    assert "nothing was computed" in str(outcomes[0])
