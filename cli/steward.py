"""`tessera steward list|show|approve|reject`: a hospital's data stewards decide on the
synthetic datasets their node has trained, on the node's own host.

Each command reads the node's configuration (`--config node.toml`) and its candidate store in
work_dir; nothing is sent from here. A decision is written to the store, and the running node
agent acts on it within a second: it records it in the node's audit log, reports a rejection,
and uploads a candidate once the policy's `approvals_required` stewards approved it. A steward
names themself with `--as` (or `TESSERA_STEWARD`), one of the policy's `stewards`; who may run
these commands is who may read the node's work_dir. Read the report (`show` prints its path)
before approving. Every failure is one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cli.errors import reports_errors
from tessera.errors import InvalidRequest, PolicyDenied

if TYPE_CHECKING:
    from node_agent.candidates import Candidate, CandidateStore
    from node_agent.config import NodeSettings

app = typer.Typer(
    help="Review, approve or reject the synthetic datasets this node trained (local).",
    no_args_is_help=True,
)
ConfigOption = typer.Option(
    ..., "--config", "-c", help="The node's TOML configuration file (as for `tessera node run`)."
)
StewardOption = typer.Option(
    ..., "--as", envvar="TESSERA_STEWARD", help="Your steward name, as the node's policy lists it."
)
JsonOption = typer.Option(False, "--json", help="Print JSON instead of text.")


def _open(config: Path) -> tuple[NodeSettings, CandidateStore]:
    from node_agent.candidates import CandidateStore
    from node_agent.config import NodeSettings

    settings = NodeSettings.load(config)
    path = settings.candidates_path
    if not path.exists():
        raise InvalidRequest(f"no candidates at this node yet ({path} does not exist)")
    return settings, CandidateStore(path)


def _steward(settings: NodeSettings, name: str) -> str:
    rules = settings.policy.synthesis
    if rules is None:
        raise PolicyDenied("this node's policy allows no synthesis ([policy.synthesis])")
    if name not in rules.stewards:
        raise PolicyDenied(
            f"{name!r} is not a steward of node {settings.name} (stewards: "
            f"{', '.join(rules.stewards)})"
        )
    return name


def _summary(c: Candidate) -> dict[str, Any]:
    card = c.card or {}
    metrics = card.get("metrics", {})
    fidelity = metrics.get("fidelity", {})
    privacy = metrics.get("privacy", {})
    utility = metrics.get("utility", {})
    return {
        "job": c.job_id,
        "request": c.request_id,
        "study": c.study_id,
        "dataset": c.dataset,
        "generator": c.generator,
        "requested_by": c.requested_by,
        "status": c.status,
        "rows": card.get("rows"),
        "epsilon": card.get("epsilon"),
        "fidelity": fidelity.get("score"),
        "utility": (
            {
                "target": utility.get("target"),
                "tstr": utility.get("tstr"),
                "trtr": utility.get("trtr"),
            }
            if utility.get("target")
            else None
        ),
        "exact_match_rate": privacy.get("exact_match_rate"),
        "exact_match_rate_holdout": privacy.get("exact_match_rate_holdout"),
        "dcr_synthetic_median": privacy.get("dcr_synthetic_median"),
        "dcr_holdout_median": privacy.get("dcr_holdout_median"),
        "mia_advantage": privacy.get("mia_advantage"),
        "gates": c.gates,
        "approvals_required": c.approvals_required,
        "decisions": [d.model_dump(mode="json") for d in c.decisions],
        "release_id": c.release_id,
        "error": c.error,
        "report": str(c.report_path) if c.report_path.exists() else None,
        "created_at": c.created_at,
    }


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


@app.command("list")
@reports_errors
def list_candidates(
    config: Path = ConfigOption,
    everything: bool = typer.Option(
        False, "--all", help="Every candidate, not only those awaiting review."
    ),
    as_json: bool = JsonOption,
) -> None:
    """The candidates awaiting review (with --all: every candidate and how it ended)."""
    _, store = _open(config)
    candidates = store.list(None if everything else ("awaiting_review",))
    if as_json:
        typer.echo(json.dumps([_summary(c) for c in candidates], indent=2, default=str))
        return
    if not candidates:
        typer.echo("no candidate awaits review" + ("" if everything else " (--all: every one)"))
        return
    head = f"{'job':>5}  {'status':<16} {'dataset':<20} {'generator':<16} {'rows':>7}  "
    typer.echo(head + f"{'fidelity':>8}  approvals  requested by")
    for c in candidates:
        s = _summary(c)
        approvals = f"{len(c.approvals)}/{c.approvals_required or '-'}"
        typer.echo(
            f"{c.job_id:>5}  {c.status:<16} {c.dataset:<20} {c.generator:<16} "
            f"{_num(s['rows']):>7}  {_num(s['fidelity']):>8}  {approvals:<9}  {c.requested_by}"
        )


@app.command("show")
@reports_errors
def show(
    job: int = typer.Argument(..., help="The candidate's job id (from `list`)."),
    config: Path = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """A candidate's card, metrics, release gates and decisions, and where its report is."""
    _, store = _open(config)
    s = _summary(store.get(job))
    if as_json:
        typer.echo(json.dumps(s, indent=2, default=str))
        return
    lines = [
        f"candidate {s['job']} (request {s['request']}, study {s['study']}): {s['status']}",
        f"  dataset {s['dataset']}, generator {s['generator']}, {_num(s['rows'])} rows, "
        f"requested by {s['requested_by']}",
    ]
    if s["epsilon"] is not None:
        lines.append(f"  differentially private: epsilon {_num(s['epsilon'], 4)}")
    lines.append(f"  fidelity {_num(s['fidelity'])}")
    if s["utility"]:
        u = s["utility"]
        lines.append(f"  utility ({u['target']}): TSTR {_num(u['tstr'])} vs TRTR {_num(u['trtr'])}")
    lines.append(
        f"  exact copies {_num(s['exact_match_rate'], 4)} (holdout "
        f"{_num(s['exact_match_rate_holdout'], 4)}); DCR median "
        f"{_num(s['dcr_synthetic_median'], 4)} (holdout {_num(s['dcr_holdout_median'], 4)}); "
        f"membership attack advantage {_num(s['mia_advantage'])}"
    )
    for g in s["gates"] or []:
        mark = "passed" if g["passed"] else "FAILED"
        lines.append(f"  gate {g['name']}: {mark} ({g.get('message', '')})")
    for d in s["decisions"]:
        reason = f": {d['reason']}" if d.get("reason") else ""
        lines.append(f"  {d['steward']} {d['decision']}d at {d['at']}{reason}")
    if s["approvals_required"]:
        lines.append(
            f"  approvals: {sum(d['decision'] == 'approve' for d in s['decisions'])} of "
            f"{s['approvals_required']} required"
        )
    if s["error"]:
        lines.append(f"  ended: {s['error']}")
    lines.append(f"  report: {s['report'] or 'none'}")
    typer.echo("\n".join(lines))


@app.command("approve")
@reports_errors
def approve(
    job: int = typer.Argument(..., help="The candidate's job id."),
    config: Path = ConfigOption,
    steward: str = StewardOption,
    reason: str = typer.Option("", help="A note kept with the decision (optional)."),
) -> None:
    """Approve a candidate for release. Once enough stewards approved, the node uploads it."""
    settings, store = _open(config)
    candidate = store.decide(job, _steward(settings, steward), "approve", reason[:2000])
    have, need = len(candidate.approvals), candidate.approvals_required or 1
    tail = (
        "the node agent uploads it now"
        if have >= need
        else f"{need - have} more approval(s) needed"
    )
    typer.echo(f"candidate {job}: approved by {steward} ({have} of {need}); {tail}")


@app.command("reject")
@reports_errors
def reject(
    job: int = typer.Argument(..., help="The candidate's job id."),
    config: Path = ConfigOption,
    steward: str = StewardOption,
    reason: str = typer.Option(..., help="Why (kept at the node and told the coordinator)."),
) -> None:
    """Reject a candidate: nothing of it is uploaded; the coordinator keeps only the record."""
    settings, store = _open(config)
    if not reason.strip():
        raise InvalidRequest("a rejection needs a --reason")
    store.decide(job, _steward(settings, steward), "reject", reason[:2000])
    typer.echo(f"candidate {job}: rejected by {steward}; nothing of it will be uploaded")
