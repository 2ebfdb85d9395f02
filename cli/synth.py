"""`tessera synth ...`: synthetic data from the shell.

`fit DATA --generator NAME --rows N --out synthetic.csv --report report.html` trains a generator
on one table on this machine, samples, evaluates against held-out rows, and writes the
synthetic table and its report; nothing leaves the machine.

Against a coordinator (logged in as `tessera query` is: `--coordinator`, `--user`,
`--password`, or `--token` from an identity provider, or `TESSERA_*`): `request` asks a
study's nodes to synthesise a dataset, `status` shows where a request stands, `releases`
lists a study's published releases and `download` fetches one's data and report, checked
against their hashes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cli.errors import reports_errors
from cli.query import (
    CoordinatorOption,
    JsonOption,
    PasswordOption,
    Progress,
    StudyOption,
    TokenOption,
    UserOption,
    connect,
    study_id,
)
from cli.simulate import read_frame, read_json
from tessera.errors import InvalidRequest

if TYPE_CHECKING:
    import pandas as pd

    from synth import TrainingProgress

app = typer.Typer(
    help="Synthetic data: fit on this machine; request, follow and download releases.",
    no_args_is_help=True,
)


class ProgressLine:
    """Training progress on stderr: one line rewritten in place on a terminal, else a line
    every tenth of the epochs (and the last)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.open_line = False

    def __call__(self, event: TrainingProgress) -> None:
        if self.quiet:
            return
        if event.epoch is not None and event.epochs:
            text = f"{event.stage}: epoch {event.epoch}/{event.epochs}"
            if event.loss is not None:
                text += f", loss {event.loss:.4f}"
            if self.tty:
                print(f"\r{text}\x1b[K", end="", file=sys.stderr, flush=True)
                self.open_line = True
                return
            step = max(1, event.epochs // 10)
            if event.epoch % step and event.epoch != event.epochs:
                return
        else:
            text = f"{event.stage}" + (f": {event.message}" if event.message else "")
        self.line(text)

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self.open_line:
            print(file=sys.stderr)
            self.open_line = False
        print(text, file=sys.stderr, flush=True)


def _params(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs; a value is read as JSON when it parses (numbers, lists, true),
    else kept as text."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidRequest(f"--param takes key=value, not {pair!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _write_table(frame: pd.DataFrame, path: Path) -> None:
    """CSV, or Parquet by extension; written to a temporary name, then renamed."""
    partial = path.with_name(path.name + ".partial")
    if path.suffix.lower() in (".parquet", ".pq"):
        frame.to_parquet(partial, index=False)
    else:
        frame.to_csv(partial, index=False)
    partial.replace(path)


def _summary(report: dict[str, Any], model: Any) -> list[tuple[str, str]]:
    from synth.report import pair_trends_text

    fidelity, privacy = report.get("fidelity", {}), report.get("privacy", {})
    utility = report.get("utility", {})
    rows = [
        ("generator", f"{model.name} ({model.license})"),
        ("device", model.device),
        ("fit seconds", f"{model.fit_seconds:.1f}"),
    ]
    if model.epsilon is not None:
        rows.append(("epsilon spent", f"{model.epsilon:g} (delta {model.delta:g})"))
    rows += [
        ("fidelity", f"{fidelity.get('score', float('nan')):.3f}"),
        ("  column shapes", f"{fidelity.get('column_shapes', float('nan')):.3f}"),
        ("  pair trends", pair_trends_text(fidelity)),
    ]
    if utility.get("target"):
        rows.append(
            (
                f"utility ({utility.get('metric')}, {utility['target']})",
                f"TSTR {utility.get('tstr', float('nan')):.3f} vs "
                f"TRTR {utility.get('trtr', float('nan')):.3f}",
            )
        )
    rows += [
        (
            "exact copies",
            f"{privacy.get('exact_match_rate', float('nan')):.3%} "
            f"(holdout {privacy.get('exact_match_rate_holdout', float('nan')):.3%})",
        ),
        (
            "DCR median",
            f"{privacy.get('dcr_synthetic_median', float('nan')):.4f} "
            f"(holdout {privacy.get('dcr_holdout_median', float('nan')):.4f})",
        ),
        ("MIA advantage", f"{privacy.get('mia_advantage', float('nan')):.3f}"),
    ]
    return rows


@app.command("fit")
@reports_errors
def fit(
    data: Path = typer.Argument(..., help="The real table: CSV, or Parquet by extension."),
    generator: str = typer.Option(
        "cart", "--generator", "-g", help="cart (default), gaussian_copula, ctgan, tvae or mst."
    ),
    rows: int | None = typer.Option(
        None, "--rows", "-n", min=1, help="Synthetic rows to sample (default: as many as real)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The synthetic table (.csv or .parquet)."),
    report_path: Path | None = typer.Option(
        None, "--report", help="Write the HTML report here (and its JSON beside it)."
    ),
    holdout: float = typer.Option(
        0.2, min=0.05, max=0.5, help="Share of real rows held out of training, for evaluation."
    ),
    target: str | None = typer.Option(
        None, help="Column the utility metric predicts (TSTR vs TRTR)."
    ),
    epsilon: float | None = typer.Option(
        None, help="Differential privacy budget of a DP generator (mst)."
    ),
    delta: float | None = typer.Option(None, help="Delta of a DP generator (default 1e-6)."),
    schema_file: Path | None = typer.Option(
        None,
        "--schema",
        help="Declared schema (JSON, as a node registers it): types, levels, bounds. A DP "
        "generator needs declared bounds for its guarantee.",
    ),
    param: list[str] = typer.Option(
        [], "--param", "-p", help="A generator parameter, key=value (repeatable)."
    ),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda."),
    seed: int | None = typer.Option(None, help="Seed of the holdout split and the sampling."),
    save_model: Path | None = typer.Option(None, help="Also save the trained generator here."),
    min_count: int = typer.Option(
        0, "--min-count", min=0, help="In the report, withhold real bars of fewer rows."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the evaluation as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
) -> None:
    """Train a generator on DATA, sample synthetic rows, and evaluate them against held-out
    real rows: fidelity, utility (with --target) and privacy. Exit code 2 on bad input."""
    import synth
    from synth.holdout import split_holdout
    from synth.report import write_report
    from tessera.schemas import DatasetSchema

    progress = ProgressLine(quiet or as_json)
    frame = read_frame(data)
    params = _params(param)
    if epsilon is not None:
        params["epsilon"] = epsilon
    if delta is not None:
        params["delta"] = delta
    metadata = None
    if schema_file is not None:
        try:
            schema = DatasetSchema.model_validate(read_json(schema_file, "schema"))
        except ValueError as exc:
            raise InvalidRequest(f"invalid schema in {schema_file}: {exc}") from None
        metadata = synth.TableMetadata.from_schema(schema, frame)
        frame = frame[metadata.names]
    if target is not None and target not in frame.columns:
        raise InvalidRequest(f"--target {target!r} is not a column of {data}")
    train_rows, holdout_rows = split_holdout(frame, holdout, seed=seed, target=target)
    progress.line(
        f"{data.name}: {len(frame)} rows, {frame.shape[1]} columns; training on "
        f"{len(train_rows)}, holding out {len(holdout_rows)}"
    )
    model = synth.train(
        train_rows, generator, metadata=metadata, device=device, progress=progress, **params
    )
    n = rows or len(frame)
    started = time.perf_counter()
    synthetic = model.sample(n, seed=seed)
    progress.line(f"sampled {n} rows in {time.perf_counter() - started:.1f} s; evaluating")
    started = time.perf_counter()
    report = synth.evaluate(
        real=train_rows,
        synthetic=synthetic,
        holdout=holdout_rows,
        target=target,
        metadata=model.metadata,
    )
    progress.line(f"evaluated in {time.perf_counter() - started:.1f} s")
    _write_table(synthetic, out)
    if save_model is not None:
        model.save(save_model)
    card = {
        "generator": model.name,
        "license": model.license,
        "params": model.params,
        "epsilon": model.epsilon,
        "delta": model.delta,
        "device": model.device,
        "fit_seconds": model.fit_seconds,
        "training_rows": len(train_rows),
        "holdout_rows": len(holdout_rows),
        "rows": n,
        "source": data.name,
    }
    if report_path is not None:
        write_report(
            report_path,
            report,
            train_rows,
            synthetic,
            metadata=model.metadata,
            title=f"Synthetic {data.stem} ({model.name})",
            card=card,
            min_count=min_count,
        )
    if as_json:
        typer.echo(json.dumps({"card": card, "evaluation": report}, indent=2, default=str))
        return
    width = max(len(k) for k, _ in _summary(report, model))
    for key, value in _summary(report, model):
        typer.echo(f"{key:<{width}}  {value}")
    typer.echo(f"wrote {out}" + (f" and {report_path}" if report_path else ""))


# ---- against a coordinator: requests and releases ------------------------------------------

_AT_REST = ("awaiting_review", "gated", "released", "rejected", "refused", "failed")


def job_line(job: dict[str, Any]) -> str:
    """`hospital-a training (epoch 12/300, loss 0.812)` or `hospital-b gated: ...`; a pooled
    job's node with its party id, `hospital-a [party 0] approved`."""
    party = f" [party {job['party_id']}]" if job.get("party_id") is not None else ""
    text = f"{job['node']}{party} {job['status']}"
    progress = job.get("progress") or {}
    if job["status"] == "training" and progress:
        if progress.get("epoch") is not None and progress.get("epochs"):
            text += f" (epoch {progress['epoch']}/{progress['epochs']}"
            if progress.get("loss") is not None:
                text += f", loss {progress['loss']:.3f}"
            text += ")"
        else:
            text += f" ({progress.get('stage')})"
    elif job.get("error"):
        text += f": {job['error']['message']}"
    return text


def request_lines(view: dict[str, Any]) -> list[str]:
    pooled = view.get("scope") == "pooled"
    rows = f"{view['spec']['rows']} rows " + ("pooled over every node" if pooled else "per node")
    lines = [
        f"synthesis {view['id']}: {view['generator']} on {view['dataset']}, {rows} — "
        f"{view['status']}"
    ]
    for job in view["jobs"]:
        tail = ""
        if job["status"] == "awaiting_review":
            tail = f" — awaiting {job['approvals_required']} steward approval(s) at the node"
        if job["status"] == "approved":
            tail = " — its stewards approved; waiting for the other nodes'"
        if job.get("release_id"):
            tail = f" — release {job['release_id']}"
        lines.append(f"  {job_line(job)}{tail}")
    for skipped in view.get("skipped") or []:
        lines.append(f"  {skipped['node']} skipped: {skipped['reason']}")
    return lines


def _wait_request(client: Any, request_id: int, timeout: float) -> dict[str, Any]:
    progress = Progress(sys.stderr)
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            view = client.get_synthesis(request_id, wait=max(0.0, min(1.0, left)))
            progress.show(
                f"synthesis {request_id}: " + "; ".join(job_line(j) for j in view["jobs"])
            )
            if view["at_rest"] or left <= 0:
                return dict(view)
    finally:
        progress.close()


@app.command("request")
@reports_errors
def request(
    study: str = StudyOption,
    dataset: str = typer.Option(..., help="The dataset every node of the study registered."),
    rows: int = typer.Option(
        ..., "--rows", "-n", min=1, help="Synthetic rows per node (pooled: in all)."
    ),
    generator: str = typer.Option("cart", "--generator", "-g", help="The generator."),
    epsilon: float | None = typer.Option(None, help="Epsilon of a DP generator (mst)."),
    delta: float | None = typer.Option(None, help="Delta of a DP generator (node default)."),
    holdout: float = typer.Option(0.2, min=0.05, max=0.5, help="Share of rows held out."),
    target: str | None = typer.Option(None, help="The column the utility metric predicts."),
    seed: int | None = typer.Option(None, help="Seed of the split and the sampling."),
    param: list[str] = typer.Option([], "--param", "-p", help="key=value (repeatable)."),
    pooled: bool = typer.Option(
        False,
        "--pooled",
        help="One generator (mst, with --epsilon) measured by MPC over every node's rows: one "
        "release, once every node's stewards approved it (at least 3 nodes).",
    ),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until every node is at rest."),
    timeout: float = typer.Option(3600.0, min=0, help="Seconds to wait."),
    as_json: bool = JsonOption,
    coordinator: str = CoordinatorOption,
    user: str | None = UserOption,
    password: str | None = PasswordOption,
    token: str | None = TokenOption,
) -> None:
    """Ask the study's nodes to synthesise a dataset; wait until each has a candidate for its
    stewards (or ended). Releases appear once the hospitals' stewards approve them."""
    spec: dict[str, Any] = {
        "dataset": dataset,
        "generator": generator,
        "rows": rows,
        "holdout": holdout,
        "params": _params(param),
        "scope": "pooled" if pooled else "local",
    }
    for key, value in (("epsilon", epsilon), ("delta", delta), ("target", target), ("seed", seed)):
        if value is not None:
            spec[key] = value
    with connect(coordinator, user, password, token) as client:
        view = client.request_synthesis(study_id(client, study), spec)
        if wait:
            view = _wait_request(client, view["id"], timeout)
    typer.echo(
        json.dumps(view, indent=2, default=str) if as_json else "\n".join(request_lines(view))
    )


@app.command("status")
@reports_errors
def status(
    request_id: int = typer.Argument(..., help="The synthesis request's id."),
    wait: bool = typer.Option(False, "--wait", help="Wait until every node is at rest."),
    timeout: float = typer.Option(3600.0, min=0, help="Seconds to wait."),
    as_json: bool = JsonOption,
    coordinator: str = CoordinatorOption,
    user: str | None = UserOption,
    password: str | None = PasswordOption,
    token: str | None = TokenOption,
) -> None:
    """Where a synthesis request stands: each node's job, gates, decisions and release."""
    with connect(coordinator, user, password, token) as client:
        view = (
            _wait_request(client, request_id, timeout) if wait else client.get_synthesis(request_id)
        )
    typer.echo(
        json.dumps(view, indent=2, default=str) if as_json else "\n".join(request_lines(view))
    )


@app.command("releases")
@reports_errors
def releases(
    study: str = StudyOption,
    as_json: bool = JsonOption,
    coordinator: str = CoordinatorOption,
    user: str | None = UserOption,
    password: str | None = PasswordOption,
    token: str | None = TokenOption,
) -> None:
    """The study's published synthetic datasets, with their generator, epsilon and scores."""
    with connect(coordinator, user, password, token) as client:
        listed = client.releases(study_id(client, study))
    if as_json:
        typer.echo(json.dumps(listed, indent=2, default=str))
        return
    if not listed:
        typer.echo("no release in this study yet")
        return
    typer.echo(
        f"{'release':>7}  {'node':<16} {'dataset':<20} {'generator':<16} {'rows':>7}  "
        f"{'epsilon':>7}  {'fidelity':>8}  signed by (key fingerprint)"
    )
    for r in listed:
        typer.echo(release_line(r))


def release_line(r: dict[str, Any]) -> str:
    """One release's row: its node (`pooled (a, b, c)` for a pooled one), dataset, generator,
    rows, epsilon, fidelity (a local release's) and who signed (every node's, pooled)."""
    card = r["card"]
    eps = f"{card['epsilon']:g}" if card.get("epsilon") is not None else "-"
    fid = "-"
    node = r["node"]
    if r.get("scope") == "pooled":
        node = f"pooled ({', '.join(r.get('parties') or [])})"
        approvers = "; ".join(
            f"{part['node']}: {_approvers(part['approvals'], r, part['node'])}"
            for part in card.get("nodes", [])
        )
    else:
        fidelity = card.get("metrics", {}).get("fidelity", {}).get("score")
        fid = f"{fidelity:.3f}" if fidelity is not None else "-"
        approvers = _approvers(card.get("approvals", []), r, None)
    return (
        f"{r['id']:>7}  {node:<16} {r['dataset']:<20} {card['generator']:<16} "
        f"{r['rows']:>7}  {eps:>7}  {fid:>8}  {approvers}"
    )


def _approvers(approvals: list[dict[str, Any]], release: dict[str, Any], node: str | None) -> str:
    """`sam (SHA256:…), sue` — each approving steward with the key fingerprint the coordinator
    verified (of `node`'s stewards, for a pooled release)."""
    prints = {
        x["steward"]: x.get("fingerprint")
        for x in release.get("signed_by", [])
        if node is None or x.get("node") == node
    }
    return ", ".join(
        f"{a['steward']} ({prints[a['steward']]})" if prints.get(a["steward"]) else a["steward"]
        for a in approvals
    )


@app.command("download")
@reports_errors
def download(
    release_id: int = typer.Argument(..., help="The release's id."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the data (.csv/.parquet)."),
    report_path: Path | None = typer.Option(None, "--report", help="Also write the report."),
    node: str | None = typer.Option(
        None, "--node", help="A pooled release's: this node's report (default: the first's)."
    ),
    coordinator: str = CoordinatorOption,
    user: str | None = UserOption,
    password: str | None = PasswordOption,
    token: str | None = TokenOption,
) -> None:
    """Download a release's data (as CSV, or Parquet by extension) and optionally its report;
    each checked against the hash the coordinator states, written under a temporary name."""
    fmt = "parquet" if out.suffix.lower() in (".parquet", ".pq") else "csv"
    with connect(coordinator, user, password, token) as client:
        data = client.release_data(release_id, fmt)
        report = client.release_report(release_id, node) if report_path is not None else None
    for path, content in ((out, data), (report_path, report)):
        if path is not None and content is not None:
            partial = path.with_name(path.name + ".partial")
            partial.write_bytes(content)
            partial.replace(path)
    typer.echo(
        f"release {release_id}: wrote {out} ({len(data)} bytes, {fmt}, hash verified)"
        + (f" and {report_path}" if report_path else "")
    )
