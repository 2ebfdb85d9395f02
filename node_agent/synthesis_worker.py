"""One synthesis job, in a process of its own: `python -m node_agent.synthesis_worker`.

The node agent starts it for each job it accepted and writes the job on its standard input
(JSON: the job, the dataset's configuration, the candidate's folder, the policy's device,
disclosure floor, default delta, training-time limit and release gates). The worker reads the
dataset itself, holds out `spec.holdout` of the rows, trains the generator on the rest,
samples `spec.rows` rows, evaluates them against the held-out rows, applies the release gates,
and writes into the folder:

    synthetic.parquet   the candidate (written under a temporary name, then renamed)
    report.html         the evaluation report, with the gates
    report.json         the same as JSON

Its standard output is one JSON object per line: `{"progress": {...}}` while it works, then
`{"done": {"card": ..., "gates": [...]}}` (the card opens with its verdict: pass, needs
attention or fail, and why, `synth.verdict`) or `{"error": {"code", "message"}}`. Those lines hold
stages, epochs, losses and aggregate metrics, never a value of a row. The trained model is not
kept: nothing needs it after sampling, and a model can hold training values.

A process of its own keeps the agent responsive while torch or JAX compute, lets the agent
stop a job at its deadline (SIGKILL), and frees the memory (GPU memory too) when it ends.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from tessera.errors import TesseraError


def emit(kind: str, body: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps({kind: body}, default=str) + "\n")
    sys.stdout.flush()


def public_metrics(evaluation: dict[str, Any], dp: bool) -> dict[str, Any]:
    """The evaluation as published on a release card. A differentially private release
    withholds the exact row counts (table sizes, test rows, attack rows; the DCR histogram as
    shares), which its guarantee does not cover."""
    if not dp:
        return evaluation
    out = json.loads(json.dumps(evaluation))
    out.pop("sizes", None)
    out.get("utility", {}).pop("test_rows", None)
    privacy = out.get("privacy", {})
    privacy.pop("mia_rows", None)
    histogram = privacy.get("dcr_histogram")
    if histogram:
        for key in ("synthetic", "holdout"):
            counts = histogram[key]
            total = sum(counts) or 1
            histogram[key] = [round(c / total, 4) for c in counts]
    return out


def run(job_input: dict[str, Any]) -> dict[str, Any]:
    import synth
    from node_agent.config import DatasetConfig
    from node_agent.datasets import load
    from synth.gates import ReleaseGates
    from tessera.schemas import SynthesisJobOut

    job = SynthesisJobOut.model_validate(job_input["job"])
    spec = job.spec
    dataset = DatasetConfig.model_validate(job_input["dataset"])
    folder = Path(job_input["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    gates = ReleaseGates(**job_input.get("gates", {}))

    emit("progress", {"stage": "loading", "message": f"dataset {dataset.name}"})
    frame = load(dataset)
    if job_input.get("pooled") is not None:
        return run_pooled(job_input, job, dataset, frame, folder, gates)
    metadata = synth.TableMetadata.from_schema(dataset.schema_, frame)
    frame = frame[metadata.names]
    train, holdout = hold_out(frame, spec)
    params = dict(spec.params)
    dp = spec.differentially_private
    if dp:
        params["epsilon"] = spec.epsilon
        params["delta"] = spec.delta or job_input.get("default_delta", 1e-6)

    def progress(event: Any) -> None:
        emit("progress", event.to_json())

    started = time.perf_counter()
    model = synth.train(
        train,
        spec.generator,
        metadata=metadata,
        device=job_input.get("device", "auto"),
        progress=progress,
        **params,
    )
    limit = job_input.get("max_training_seconds")
    trained = time.perf_counter() - started
    if limit is not None and trained > limit:
        raise TesseraError(
            f"training took {trained:.0f} s, more than the policy's max_training_seconds "
            f"({limit:g} s)",
            {"seconds": trained},
        )
    emit("progress", {"stage": "sampling", "message": f"{spec.rows} rows"})
    synthetic = model.sample(spec.rows, seed=spec.seed)
    emit("progress", {"stage": "evaluating", "message": "fidelity, utility, privacy"})
    evaluation = synth.evaluate(
        train,
        synthetic,
        holdout,
        target=spec.target,
        metadata=model.metadata,
        seed=spec.seed or 0,
    )
    outcomes = [g.model_dump(mode="json") for g in gates.apply(evaluation, model.epsilon)]

    buffer = io.BytesIO()
    synthetic.to_parquet(buffer, index=False)
    fields = {
        "generator": model.name,
        "generator_license": model.license,
        "params": model.params,
        "epsilon": model.epsilon,
        "delta": model.delta,
        "device": model.device,
        "fit_seconds": model.fit_seconds or 0.0,
        "training_rows": None if dp else len(train),
        "holdout_rows": None if dp else len(holdout),
    }
    title = (
        f"Synthetic {dataset.name} at {job_input.get('node', 'this node')} "
        f"({model.name}), job {job.id}"
    )
    return candidate(
        job_input,
        folder,
        title,
        fields,
        evaluation,
        outcomes,
        dp,
        train,
        synthetic,
        model.metadata,
        buffer.getvalue(),
    )


def candidate(
    job_input: dict[str, Any],
    folder: Path,
    title: str,
    fields: dict[str, Any],
    evaluation: dict[str, Any],
    outcomes: list[dict[str, Any]],
    dp: bool,
    train: Any,
    synthetic: Any,
    metadata: Any,
    data: bytes,
) -> dict[str, Any]:
    """The card (its verdict first), the report, and the data when every gate passed."""
    from synth.report import write_report
    from synth.verdict import verdict as judge

    spec = job_input["job"]["spec"]
    metrics = public_metrics(evaluation, dp)
    # Judged on what the card publishes: a DP release's verdict names no row count either.
    verdict = judge(metrics, outcomes)
    card: dict[str, Any] = {
        "verdict": verdict,
        **fields,
        "rows": len(synthetic),
        "columns": list(synthetic.columns),
        "metrics": metrics,
        "sha256": hashlib.sha256(data).hexdigest(),
        "seed": spec.get("seed"),
        "target": spec.get("target"),
    }
    emit("progress", {"stage": "reporting", "message": "report.html"})
    write_report(
        folder / "report.html",
        card["metrics"],
        train,
        synthetic,
        metadata=metadata,
        title=title,
        card={k: v for k, v in card.items() if k not in ("metrics", "verdict")},
        gates=outcomes,
        min_count=int(job_input.get("min_count", 0)),
        verdict=verdict,
    )
    if all(g["passed"] for g in outcomes):
        partial = folder / "synthetic.parquet.partial"
        partial.write_bytes(data)
        partial.replace(folder / "synthetic.parquet")
    return {"card": card, "gates": outcomes}


def hold_out(frame: Any, spec: Any) -> tuple[Any, Any]:
    """The training rows and the rows held out for evaluation (`synth.holdout`)."""
    from synth.holdout import split_holdout

    train, holdout = split_holdout(frame, spec.holdout, seed=spec.seed, target=spec.target)
    emit(
        "progress",
        {"stage": "holding out", "message": f"{spec.holdout:.0%} of the rows for evaluation"},
    )
    return train, holdout


def run_pooled(
    job_input: dict[str, Any],
    job: Any,
    dataset: Any,
    frame: Any,
    folder: Path,
    gates: Any,
) -> dict[str, Any]:
    """A pooled job: hold out, measure by MPC with the other nodes (this node's party process
    reads the training rows; only noisy sums are opened), receive the candidate the fitter
    sampled, and evaluate it against this node's own held-out rows and gates."""
    import base64

    import pandas as pd

    import synth
    from smpc.runner import start_program, wait_program
    from smpc.tls import PartyTLS
    from synth.generators.mst import DEFAULT_DELTA
    from synth.pooled import (
        MeasurementJob,
        measurement_query,
        measurement_sha256,
        rows_of,
    )

    spec = job.spec
    pooled = job_input["pooled"]
    # The declared schema alone (never the rows): every node must build the same measurement.
    metadata = synth.TableMetadata.from_schema(dataset.schema_)
    frame = frame[metadata.names]
    train, holdout = hold_out(frame, spec)
    query = measurement_query(
        metadata, float(spec.epsilon), spec.delta or DEFAULT_DELTA, dict(spec.params)
    )
    party = MeasurementJob(
        query=query,
        rows=rows_of(train, metadata),
        party_id=pooled["party_id"],
        parties=[tuple(p) for p in pooled["parties"]],
        timeout_s=pooled["timeout_s"],
        tls=PartyTLS.model_validate(pooled["tls"]),
        candidate_rows=spec.rows,
        seed=spec.seed,
        fitter=0,
    )
    emit(
        "progress",
        {"stage": "measuring", "message": f"by MPC with {len(party.parties) - 1} other nodes"},
    )
    proc = start_program("synth.pooled", party.model_dump_json())
    outcome = wait_program(proc, party.timeout_s, party.party_id)
    candidate_made = outcome["candidate"]
    data = base64.b64decode(candidate_made["parquet"])
    if hashlib.sha256(data).hexdigest() != candidate_made["sha256"]:
        raise TesseraError("the pooled candidate does not match its hash")
    synthetic = pd.read_parquet(io.BytesIO(data))
    emit("progress", {"stage": "evaluating", "message": "against this node's held-out rows"})
    evaluation = synth.evaluate(
        train, synthetic, holdout, target=spec.target, metadata=metadata, seed=spec.seed or 0
    )
    outcomes = [
        g.model_dump(mode="json") for g in gates.apply(evaluation, candidate_made["epsilon"])
    ]
    generator = synth.generator_class(spec.generator)
    fields = {
        "generator": spec.generator,
        "generator_license": generator.license,
        "params": candidate_made["params"],
        "epsilon": candidate_made["epsilon"],
        "delta": candidate_made["delta"],
        "device": candidate_made["device"],
        "fit_seconds": candidate_made["fit_seconds"],
        "training_rows": None,
        "holdout_rows": None,
        "scope": "pooled",
        "parties": list(pooled["names"]),
        "measurement_sha256": measurement_sha256(outcome["measurements"]),
    }
    title = (
        f"Pooled synthetic {dataset.name} ({', '.join(pooled['names'])}), evaluated at "
        f"{job_input.get('node', 'this node')}, job {job.id}"
    )
    return candidate(
        job_input,
        folder,
        title,
        fields,
        evaluation,
        outcomes,
        True,
        train,
        synthetic,
        metadata,
        data,
    )


def main() -> int:
    warnings.simplefilter("ignore")
    try:
        job_input = json.loads(sys.stdin.read())
        emit("done", run(job_input))
        return 0
    except TesseraError as exc:
        emit("error", {"code": exc.code, "message": exc.message})
        return 2
    except Exception as exc:  # its text may quote data: the type and the frames only
        frames = "".join(traceback.format_tb(exc.__traceback__))
        print(f"synthesis failed: {type(exc).__name__}\n{frames}", file=sys.stderr)
        message = f"synthesis failed: {type(exc).__name__} (see the node's log)"
        emit("error", {"code": "synthesis_error", "message": message})
        return 3


if __name__ == "__main__":
    sys.exit(main())
