"""A pooled synthesizer: MST's noisy marginals measured over every hospital's rows by MPC, so
one synthetic cohort carries the joint structure of all of them while no row, and no exact
count of any hospital or of the union, leaves a hospital or is ever opened.

    from synth import train_pooled
    model = train_pooled([site_a, site_b, site_c], "mst", metadata=metadata, epsilon=1.0)
    cohort = model.sample(2000, seed=7)

How (`measure_as_party`, one MPyC party process per hospital, `python -m synth.pooled`):

1. Every party runs MST's own measurement driver (`MST.measure`, synth/generators/mst.py) on
   its own rows. Each histogram MST asks for is this party's exact counts plus this party's
   share of discrete Gaussian noise (`smpc.noise`); the parties' vectors are secret-shared,
   added and only the noisy sum is opened (`SecureMeasurer`). Every party opens the same
   sums, so every decision MST takes between measurements (grid sizes, compression, groups,
   the tree) is the same at every party, and all of them end with the same measurements.
2. Selection of the tree is post-processing of noisy tables of every pair (MST's
   `selection="measured"`): the exponential mechanism would need exact pooled scores and a
   sampler inside MPC; noisy tables cost one secure sum.
3. The model is fitted on the opened measurements (`MST.fit_measurements`, mbi, as for one
   table): post-processing, done once, wherever the measurements are.

**The guarantee, exactly.** Neighbouring datasets differ by one row of one hospital. Against
the coordinator, the analyst and any coalition of at most t = ⌊(m−1)/2⌋ of the m hospitals
(semi-honest, MPyC's threshold), together, the opened measurements are ρ-zCDP for the ρ the
accountant records, and (ε, δ)-DP for the ε converted from it; the noise of the m − t
hospitals outside the coalition alone carries the guarantee (`smpc.noise`, whose module doc
gives the bound of Kairouz, Liu and Steinke and its slack term, recorded per measurement).
Every spend is in `model.accounting`, with each party's noise variance, the honest parties
and the cells, so ρ can be recomputed (`synth.accounting.rho_of_spends`). The price: the
opened noise is √(m/(m−t)) times central MST's (1.22 at 3 parties, 1.29 at 5).

Not covered: what the hospitals' evaluations of the cohort against their own rows disclose
(the report's aggregates, docs/synthetic.md); a hospital that feeds wrong counts can bias the
cohort (integrity is outside the semi-honest model).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import operator
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from smpc.noise import discrete_gaussian, opened_sigma, share_variance
from smpc.tls import PartyTLS
from synth.accounting import ZCDPAccountant, gaussian_sigma, rho_for
from synth.base import Synthesizer, TrainingProgress
from synth.generators.mst import MST, Measurements, Request
from synth.metadata import TableMetadata
from tessera.errors import InvalidRequest, ProtocolFailed
from tessera.schemas import POOLED_GENERATORS
from tessera.signing import canonical

MIN_PARTIES = 3
MAX_PARTIES = 16
COUNT_BITS = 64  # secure integers for noisy pooled counts: far beyond any table


class MeasurementJob(BaseModel):
    """What a hospital hands its party process: the measurement (`query`: generator, ε, δ,
    parameters, metadata; the same at every party, checked before anything is shared), its
    own training rows (column → values; they never leave this machine) and the run."""

    model_config = ConfigDict(extra="forbid")

    query: dict[str, Any]
    rows: dict[str, list[Any]]
    party_id: int = Field(ge=0)
    parties: list[tuple[str, int]] = Field(min_length=MIN_PARTIES, max_length=MAX_PARTIES)
    timeout_s: float = Field(300.0, gt=0)
    tls: PartyTLS | None = None
    # In the network: once measured, party `fitter` fits the model, samples `candidate_rows`
    # rows (with `seed`) and sends the candidate to every party over the run's authenticated
    # channels; no one else holds it before every hospital's stewards approved it.
    candidate_rows: int | None = Field(None, ge=1, le=1_000_000)
    seed: int | None = None
    fitter: int = Field(0, ge=0)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def measurement_query(
    metadata: TableMetadata, epsilon: float, delta: float | None, params: dict[str, Any]
) -> dict[str, Any]:
    """The measurement every party must agree on."""
    return {
        "measure": "mst",
        "epsilon": float(epsilon),
        "delta": delta,
        "params": params,
        "metadata": metadata.to_json(),
    }


def pooled_model(query: dict[str, Any]) -> MST:
    """The MST a measurement query describes (selection by noisy tables: see the module doc)."""
    if query.get("measure") not in POOLED_GENERATORS:
        raise InvalidRequest(
            f"a pooled synthesizer is one of: {', '.join(POOLED_GENERATORS)}",
            {"generator": query.get("measure")},
        )
    params = dict(query.get("params") or {})
    if params.get("selection", "measured") != "measured":
        raise InvalidRequest("a pooled mst selects its tree from noisy pair tables only")
    params["selection"] = "measured"
    metadata = TableMetadata.from_json(query["metadata"])
    model = MST(metadata, epsilon=query["epsilon"], delta=query.get("delta"), **params)
    model.check_declared()
    return model


def rows_of(frame: pd.DataFrame, metadata: TableMetadata) -> dict[str, list[Any]]:
    """A frame's declared columns as JSON-ready lists (missing values as None)."""
    checked = metadata.check(frame)
    out: dict[str, list[Any]] = {}
    for c in metadata.columns:
        out[c.name] = [
            None if v is None or (isinstance(v, float) and np.isnan(v)) else v
            for v in checked[c.name].tolist()
        ]
    return out


class SecureMeasurer:
    """MST's measurer inside MPC: each party's counts plus its own discrete Gaussian share,
    secret-shared, summed, and only the sum opened (see the module doc)."""

    def __init__(self, mpc: Any, accounting: ZCDPAccountant) -> None:
        self.mpc = mpc
        self.parties = len(mpc.parties)
        self.accounting = accounting
        self.secint = mpc.SecInt(COUNT_BITS)
        self.cells_opened = 0
        self.rounds = 0

    def opened_sd(self, rho: float) -> float:
        return opened_sigma(share_variance(gaussian_sigma(rho), self.parties), self.parties)

    async def measure(self, requests: list[Request]) -> list[tuple[np.ndarray, float]]:
        if not requests:
            return []
        vectors, spreads = [], []
        for r in requests:
            variance, _ = self.accounting.distributed_gaussian(
                r.label, r.rho, self.parties, r.cells
            )
            counts = np.bincount(r.codes, minlength=r.cells).astype(np.int64)
            vectors.append(counts + discrete_gaussian(variance, r.cells))
            spreads.append(opened_sigma(variance, self.parties))
        flat = np.concatenate(vectors)
        mine = self.secint.array(np.array([int(v) for v in flat], dtype=object))
        total = functools.reduce(operator.add, self.mpc.input(mine))
        opened = np.asarray(await self.mpc.output(total)).astype(np.int64).ravel()
        self.cells_opened += len(flat)
        self.rounds += 1
        out, at = [], 0
        for r, sd in zip(requests, spreads, strict=True):
            out.append((opened[at : at + r.cells].astype(float), sd))
            at += r.cells
        return out


async def measure_as_party(mpc: Any, job: MeasurementJob) -> dict[str, Any]:
    """This party's side of a pooled measurement (the body of `python -m synth.pooled`)."""
    model = pooled_model(job.query)
    assert model.metadata is not None
    frame = model.metadata.check(job.frame())
    accounting = ZCDPAccountant(rho_for(model.target_epsilon, model.target_delta))
    measurer = SecureMeasurer(mpc, accounting)
    started = time.perf_counter()
    measured = await model.measure(frame, measurer)
    outcome: dict[str, Any] = {
        "measurements": measured.to_json(),
        "cells": measurer.cells_opened,
        "rounds": measurer.rounds,
        "measure_seconds": round(time.perf_counter() - started, 3),
    }
    if job.candidate_rows is not None:
        outcome["candidate"] = await _shared_candidate(mpc, job, outcome["measurements"])
    return outcome


async def _shared_candidate(
    mpc: Any, job: MeasurementJob, measurements: dict[str, Any]
) -> dict[str, Any]:
    """The fitter fits and samples; every party receives the same Parquet bytes (checked by
    hash against what the fitter says it sent)."""
    assert job.candidate_rows is not None
    mine: dict[str, Any] | None = None
    if mpc.pid == job.fitter:
        model = fit_pooled(job.query, measurements, len(job.parties), job.seed)
        synthetic = model.sample(job.candidate_rows, seed=job.seed)
        buffer = io.BytesIO()
        synthetic.to_parquet(buffer, index=False)
        data = buffer.getvalue()
        mine = {
            "parquet": base64.b64encode(data).decode("ascii"),
            "sha256": hashlib.sha256(data).hexdigest(),
            "fit_seconds": model.fit_seconds or 0.0,
            "epsilon": model.epsilon,
            "delta": model.delta,
            "params": model.params,
            "device": model.device,
        }
    received = (await mpc.transfer(mine))[job.fitter]
    if not isinstance(received, dict):
        raise ProtocolFailed(f"party {job.fitter} sent no candidate")
    data = base64.b64decode(received["parquet"])
    if hashlib.sha256(data).hexdigest() != received["sha256"]:
        raise ProtocolFailed(f"the candidate from party {job.fitter} does not match its hash")
    return dict(received)


def measurement_sha256(measurements: dict[str, Any]) -> str:
    """The hash of opened measurements (canonical JSON): what the nodes compare."""
    return hashlib.sha256(canonical(measurements).encode()).hexdigest()


def fit_pooled(
    query: dict[str, Any], measurements: dict[str, Any], parties: int, seed: int | None = None
) -> MST:
    """The pooled model fitted on opened measurements (post-processing; any one place)."""
    model = pooled_model(query)
    assert model.metadata is not None
    started = time.perf_counter()
    model.fit_measurements(Measurements.from_json(measurements, model.metadata))
    model.fit_seconds = round(time.perf_counter() - started, 3)
    model.training_rows = None  # nobody knows the pooled count; only its noisy estimates
    model.parties = parties
    model.default_seed = seed
    model._fitted = True
    model.report(TrainingProgress("trained", f"pooled over {parties} parties"))
    return model


def train_pooled(
    frames: Sequence[pd.DataFrame],
    generator: str = "mst",
    *,
    metadata: TableMetadata,
    epsilon: float,
    seed: int | None = None,
    delta: float | None = None,
    timeout_s: float = 300.0,
    tls: bool = True,
    **params: Any,
) -> Synthesizer:
    """A synthesizer trained on the union of `frames` without pooling them: one MPC party
    process per frame (on this machine, over loopback, as `smpc.simulate` does), MST's
    measurements taken by secure sums of noisy counts (the module doc), the model fitted once
    on what was opened. `seed` makes sampling without a seed reproducible; the privacy noise
    is never seeded (each party's comes from the operating system)."""
    from smpc.runner import start_program, wait_all, wait_program
    from smpc.simulation import free_ports
    from smpc.tls import local_parties

    if not MIN_PARTIES <= len(frames) <= MAX_PARTIES:
        raise InvalidRequest(
            f"a pooled synthesizer needs {MIN_PARTIES} to {MAX_PARTIES} data frames (an honest "
            f"majority needs at least 3 parties), got {len(frames)}"
        )
    if generator not in POOLED_GENERATORS:
        raise InvalidRequest(
            f"a pooled synthesizer is one of: {', '.join(POOLED_GENERATORS)}, not {generator!r}",
            {"generator": generator},
        )
    query = measurement_query(metadata, epsilon, delta, params)
    pooled_model(query)  # refuse a bad request before any process starts
    rows = [rows_of(frame, metadata) for frame in frames]
    addresses = [("127.0.0.1", port) for port in free_ports(len(frames))]
    material = local_parties(len(frames), "pooled-synthesis") if tls else [None] * len(frames)
    jobs = [
        MeasurementJob(
            query=query,
            rows=rows[i],
            party_id=i,
            parties=addresses,
            timeout_s=timeout_s,
            tls=material[i],
        )
        for i in range(len(frames))
    ]
    procs = [start_program("synth.pooled", job.model_dump_json()) for job in jobs]
    outcomes = wait_all(procs, lambda i, proc: wait_program(proc, timeout_s, i))
    model = fit_pooled(query, agreed(outcomes), len(frames), seed)
    model.measurement = {
        "parties": len(frames),
        "cells": outcomes[0]["cells"],
        "rounds": outcomes[0]["rounds"],
        "seconds": max(o["measure_seconds"] for o in outcomes),
    }
    return model


def agreed(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """The measurements every party opened; they must be one and the same."""
    if len({measurement_sha256(o["measurements"]) for o in outcomes}) != 1:
        raise ProtocolFailed("the parties opened different measurements")
    measurements: dict[str, Any] = outcomes[0]["measurements"]
    return measurements


def main() -> int:
    from smpc.party import main as party_main

    return party_main(MeasurementJob, measure_as_party)


if __name__ == "__main__":
    sys.exit(main())
