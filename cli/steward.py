"""`tessera steward keygen|list|show|approve|reject|queries|approve-query|reject-query`: a
hospital's data stewards decide on the synthetic datasets their node has trained, and (with
`approval = "manual"`) on the query shapes it has not seen, on the node's own host, each with
their own key.

`keygen` makes a steward's Ed25519 key pair: the private key in a file only its owner may read
(PEM, encrypted with a passphrase from `TESSERA_STEWARD_PASSPHRASE` or a prompt unless
`--no-passphrase`), never inside the node's work_dir; it prints the public key
(`ed25519:<base64>`) and its fingerprint, for the node's policy (`[policy.synthesis.stewards]`).

The other commands read the node's configuration (`--config node.toml`) and its candidate
store in work_dir; nothing is sent from here. `approve` and `reject` sign a statement of the
candidate's data, card and report hashes, the job and the node (`tessera.stewards`) with
`--key FILE` (or `TESSERA_STEWARD_KEY`); the steward is whoever the policy lists with that
key (`--as NAME`, optional, must agree). The running node agent verifies the signature within a
second, records it in the node's audit log, and uploads a candidate once `approvals_required`
distinct stewards' keys approved it. Read the report (`show` prints its path) before approving.
`queries` lists the queries the node holds for a steward; `approve-query ID [--remember]` and
`reject-query ID --reason` sign a decision on one (`node_agent.query_approval`).
Every failure is one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cli.errors import reports_errors
from tessera.errors import Conflict, InvalidRequest, PolicyDenied

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from node_agent.candidates import Candidate, CandidateStore
    from node_agent.config import NodeSettings
    from node_agent.query_approval import QueryQueue

app = typer.Typer(
    help="Make a steward's key; review, approve or reject (signed) the synthetic datasets this "
    "node trained (local).",
    no_args_is_help=True,
)
ConfigOption = typer.Option(
    ..., "--config", "-c", help="The node's TOML configuration file (as for `tessera node run`)."
)
StewardOption = typer.Option(
    None,
    "--as",
    envvar="TESSERA_STEWARD",
    help="Your steward name (optional: the policy's name for your key; if given, must agree).",
)
KeyOption = typer.Option(
    ...,
    "--key",
    "-k",
    envvar="TESSERA_STEWARD_KEY",
    help="Your private key file (from `tessera steward keygen`).",
)
PASSPHRASE_ENV = "TESSERA_STEWARD_PASSPHRASE"
JsonOption = typer.Option(False, "--json", help="Print JSON instead of text.")


def _open(config: Path) -> tuple[NodeSettings, CandidateStore]:
    from node_agent.candidates import CandidateStore
    from node_agent.config import NodeSettings

    settings = NodeSettings.load(config)
    path = settings.candidates_path
    if not path.exists():
        raise InvalidRequest(f"no candidates at this node yet ({path} does not exist)")
    return settings, CandidateStore(path)


def _steward(settings: NodeSettings, public: str, name: str | None) -> str:
    """The policy's name for this public key (and `name`, if given, must be it)."""
    from tessera.stewards import fingerprint

    rules = settings.policy.synthesis
    if rules is None:
        raise PolicyDenied("this node's policy allows no synthesis ([policy.synthesis])")
    listed = [n for n, k in rules.stewards.items() if k == public]
    if not listed:
        raise PolicyDenied(
            f"this key ({fingerprint(public)}) is no steward's of node {settings.name} "
            f"(stewards: {', '.join(rules.stewards)}); the policy lists each steward's public key"
        )
    if name is not None and name != listed[0]:
        raise PolicyDenied(
            f"node {settings.name}'s policy lists this key for steward {listed[0]!r}, not {name!r}"
        )
    return listed[0]


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _passphrase(confirm: bool) -> bytes | None:
    given = os.environ.get(PASSPHRASE_ENV)
    if given is None:
        given = typer.prompt(
            "Passphrase for the steward key", hide_input=True, confirmation_prompt=confirm
        )
    return given.encode() if given else None


def load_key(path: Path, settings: NodeSettings) -> Ed25519PrivateKey:
    """A steward's private key from its file: refused inside the node's work_dir or readable by
    others; a passphrase from `TESSERA_STEWARD_PASSPHRASE` or a prompt if it is encrypted."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if _inside(path, settings.work_dir):
        raise PolicyDenied(
            f"the steward key {path} is inside the node's work_dir ({settings.work_dir}), where "
            "the node's operator can read it; keep it where only you can"
        )
    try:
        mode = path.stat().st_mode
        pem = path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"cannot read the steward key {path}: {exc.strerror}") from None
    if os.name == "posix" and mode & 0o077:
        raise PolicyDenied(
            f"the steward key {path} is readable by others (mode {mode & 0o777:o}); "
            f"chmod 600 {path}"
        )
    encrypted = b"ENCRYPTED" in pem
    try:
        key = load_pem_private_key(pem, _passphrase(False) if encrypted else None)
    except (ValueError, TypeError):
        raise InvalidRequest(f"{path} is not a steward key, or the passphrase is wrong") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidRequest(
            f"{path} is not an Ed25519 key (make one with `tessera steward keygen`)"
        )
    return key


def _node_work_dir(folder: Path) -> Path | None:
    """The node work_dir `folder` lies in, if it or a parent looks like one (an audit log and
    a synthesis folder), else None."""
    for place in (folder.resolve(), *folder.resolve().parents):
        if (place / "audit.jsonl").exists() and (place / "synthesis").is_dir():
            return place
    return None


@app.command("keygen")
@reports_errors
def keygen(
    out: Path = typer.Option(..., "--out", help="The folder for the key files (created)."),
    name: str = typer.Option("steward", "--name", help="Your steward name (the files' stem)."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="The node's configuration: refuse its work_dir."
    ),
    no_passphrase: bool = typer.Option(
        False, "--no-passphrase", help="Leave the private key unencrypted (tests, demos)."
    ),
) -> None:
    """Make your Ed25519 key pair: NAME.key (private, mode 0600) and NAME.pub; print the
    public key for the node's policy and its fingerprint."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        BestAvailableEncryption,
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    from tessera.stewards import fingerprint, public_key_text

    if not name.strip() or len(name) > 64 or "/" in name or name.startswith("."):
        raise InvalidRequest(f"--name {name!r}: 1-64 characters, no '/', not starting with '.'")
    work_dir: Path | None = None
    if config is not None:
        from node_agent.config import NodeSettings

        work_dir = NodeSettings.load(config).work_dir
    if work_dir is None or not _inside(out, work_dir):
        work_dir = _node_work_dir(out)
    if work_dir is not None and _inside(out, work_dir):
        raise PolicyDenied(
            f"{out} is inside the node's work_dir ({work_dir}), where the node's operator can "
            "read it; keep your key where only you can"
        )
    private_path, public_path = out / f"{name}.key", out / f"{name}.pub"
    for existing in (private_path, public_path):
        if existing.exists():
            raise Conflict(f"{existing} exists already; choose another --name or --out")
    passphrase = None if no_passphrase else _passphrase(True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        Encoding.PEM,
        PrivateFormat.PKCS8,
        BestAvailableEncryption(passphrase) if passphrase else NoEncryption(),
    )
    public = public_key_text(key.public_key())
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_text(public + "\n")
    typer.echo(public)
    typer.echo(f"fingerprint {fingerprint(public)}")
    typer.echo(
        f"private key {private_path} ({'encrypted' if passphrase else 'NOT encrypted'}); add to "
        f'the node\'s policy: [policy.synthesis.stewards] {name} = "{public}"',
        err=True,
    )


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
        "verdict": (card.get("verdict") or {}).get("verdict"),
        "reasons": (card.get("verdict") or {}).get("reasons", []),
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
    head = f"{'job':>5}  {'status':<16} {'verdict':<15} {'dataset':<20} {'generator':<16} "
    typer.echo(head + f"{'rows':>7}  {'fidelity':>8}  approvals  requested by")
    for c in candidates:
        s = _summary(c)
        approvals = f"{len(c.approvals)}/{c.approvals_required or '-'}"
        typer.echo(
            f"{c.job_id:>5}  {c.status:<16} {s['verdict'] or '-':<15} {c.dataset:<20} "
            f"{c.generator:<16} {_num(s['rows']):>7}  {_num(s['fidelity']):>8}  "
            f"{approvals:<9}  {c.requested_by}"
        )


@app.command("show")
@reports_errors
def show(
    job: int = typer.Argument(..., help="The candidate's job id (from `list`)."),
    config: Path = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """A candidate's card, metrics, release gates and decisions, and where its report is."""
    from tessera.stewards import fingerprint

    _, store = _open(config)
    s = _summary(store.get(job))
    if as_json:
        typer.echo(json.dumps(s, indent=2, default=str))
        return
    lines = [
        f"candidate {s['job']} (request {s['request']}, study {s['study']}): {s['status']}",
        *(
            [f"  verdict: {s['verdict'].upper()}"] + [f"    - {r}" for r in s["reasons"]]
            if s["verdict"]
            else []
        ),
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
        lines.append(
            f"  {d['steward']} ({fingerprint(d['key'])}) {d['decision']}d at {d['at']}{reason}"
        )
    if s["approvals_required"]:
        lines.append(
            f"  approvals: {sum(d['decision'] == 'approve' for d in s['decisions'])} of "
            f"{s['approvals_required']} required"
        )
    if s["error"]:
        lines.append(f"  ended: {s['error']}")
    lines.append(f"  report: {s['report'] or 'none'}")
    typer.echo("\n".join(lines))


def _sign(
    config: Path, job: int, key_path: Path, name: str | None, decision: str, reason: str
) -> tuple[str, Candidate]:
    """Sign one decision on a candidate awaiting review and record it in the store."""
    from tessera.stewards import public_key_text, signed_decision

    settings, store = _open(config)
    private = load_key(key_path, settings)
    steward = _steward(settings, public_key_text(private.public_key()), name)
    candidate = store.get(job)
    if candidate.status != "awaiting_review" or candidate.card is None:
        raise Conflict(f"candidate {job} is {candidate.status}, not awaiting_review")
    try:
        hashes = candidate.hashes()
    except OSError as exc:
        raise InvalidRequest(f"cannot read candidate {job}'s files: {exc.strerror}") from None
    if hashes["data_sha256"] != candidate.card.get("sha256"):
        raise PolicyDenied(
            f"candidate {job}'s data file does not hash to its card's sha256: it changed after "
            "training; reject it"
        )
    signed = signed_decision(
        private,
        node=settings.name,
        job_id=job,
        steward=steward,
        decision=decision,
        hashes=hashes,
        reason=reason,
    )
    return steward, store.decide(job, signed)


@app.command("approve")
@reports_errors
def approve(
    job: int = typer.Argument(..., help="The candidate's job id."),
    config: Path = ConfigOption,
    key: Path = KeyOption,
    steward: str | None = StewardOption,
    reason: str = typer.Option("", help="A note kept with the decision (optional)."),
) -> None:
    """Sign your approval of a candidate's data, card and report. Once enough stewards
    approved, the node uploads it with the signatures."""
    from tessera.stewards import distinct_keys

    name, candidate = _sign(config, job, key, steward, "approve", reason[:2000])
    have, need = len(distinct_keys(candidate.approvals)), candidate.approvals_required or 1
    tail = (
        "the node agent uploads it now"
        if have >= need
        else f"{need - have} more approval(s) needed"
    )
    typer.echo(f"candidate {job}: approved by {name} ({have} of {need}); {tail}")


@app.command("reject")
@reports_errors
def reject(
    job: int = typer.Argument(..., help="The candidate's job id."),
    config: Path = ConfigOption,
    key: Path = KeyOption,
    steward: str | None = StewardOption,
    reason: str = typer.Option(..., help="Why (kept at the node and told the coordinator)."),
) -> None:
    """Sign your rejection of a candidate: nothing of it is uploaded; the coordinator keeps
    only the record."""
    if not reason.strip():
        raise InvalidRequest("a rejection needs a --reason")
    name, _ = _sign(config, job, key, steward, "reject", reason[:2000])
    typer.echo(f"candidate {job}: rejected by {name}; nothing of it will be uploaded")


# ---- manual query approval ------------------------------------------------------------------


def _queue(config: Path) -> tuple[NodeSettings, QueryQueue]:
    from node_agent.config import NodeSettings
    from node_agent.query_approval import QueryQueue

    settings = NodeSettings.load(config)
    path = settings.query_approvals_path
    if not path.exists():
        raise InvalidRequest(f"no query has waited for a steward at this node ({path})")
    return settings, QueryQueue(path)


def _query_steward(settings: NodeSettings, public: str, name: str | None) -> str:
    from tessera.stewards import fingerprint

    stewards = settings.policy.query_stewards
    listed = [n for n, k in stewards.items() if k == public]
    if not listed:
        raise PolicyDenied(
            f"this key ({fingerprint(public)}) is no query steward's of node {settings.name} "
            f"(stewards: {', '.join(stewards) or 'none'})"
        )
    if name is not None and name != listed[0]:
        raise PolicyDenied(
            f"node {settings.name}'s policy lists this key for steward {listed[0]!r}, not {name!r}"
        )
    return listed[0]


@app.command("queries")
@reports_errors
def queries(
    config: Path = ConfigOption,
    everything: bool = typer.Option(False, "--all", help="Every held query and how it ended."),
    as_json: bool = JsonOption,
) -> None:
    """The queries waiting for a steward's approval of their shape (policy approval =
    "manual"): each one's statistic, columns, grouping and filtered columns, and the query."""
    _, queue = _queue(config)
    held = queue.list(None if everything else ("waiting",))
    views = [
        {
            "id": h.task_id,
            "query": h.query_id,
            "study": h.study_id,
            "researcher": h.researcher,
            "status": h.status,
            "shape": h.shape,
            "shape_sha256": h.shape_sha256,
            "text": h.query,
            "waiting_until": h.deadline.isoformat(),
            "reason": h.reason,
            "decisions": [
                {"steward": d.steward, "decision": d.decision, "remember": d.remember}
                for d in h.decisions
            ],
        }
        for h in held
    ]
    if as_json:
        typer.echo(json.dumps(views, indent=2, default=str))
        return
    if not views:
        typer.echo("no query waits for a steward" + ("" if everything else " (--all: every one)"))
        return
    for v in views:
        shape = v["shape"]
        typer.echo(
            f"{v['id']:>5}  {v['status']:<8} {shape['statistic']} on {shape['dataset']}: "
            f"columns {', '.join(shape['columns']) or '-'}; group_by "
            f"{', '.join(shape['group_by']) or '-'}; where on {', '.join(shape['where']) or '-'}"
            f"  (query {v['query']} by {v['researcher'] or 'an unnamed researcher'}, study "
            f"{v['study']}, until {v['waiting_until']})"
        )
        typer.echo(f"       {json.dumps(v['text'], sort_keys=True)}")


def _sign_query(
    config: Path,
    query_id: int,
    key_path: Path,
    name: str | None,
    decision: str,
    remember: bool,
    reason: str,
) -> str:
    from node_agent.query_approval import signed_query_decision
    from tessera.stewards import public_key_text

    settings, queue = _queue(config)
    private = load_key(key_path, settings)
    steward = _query_steward(settings, public_key_text(private.public_key()), name)
    held = queue.get(query_id)
    if held.status != "waiting":
        raise Conflict(f"query {query_id} is {held.status}, not waiting")
    signed = signed_query_decision(
        private,
        held,
        node=settings.name,
        steward=steward,
        decision=decision,
        remember=remember,
        reason=reason,
    )
    queue.decide(signed)
    return steward


@app.command("approve-query")
@reports_errors
def approve_query(
    query_id: int = typer.Argument(..., help="The held query's id (from `queries`)."),
    config: Path = ConfigOption,
    key: Path = KeyOption,
    steward: str | None = StewardOption,
    remember: bool = typer.Option(
        False, "--remember", help="Also approve every later query of this shape at this node."
    ),
    reason: str = typer.Option("", help="A note kept with the decision (optional)."),
) -> None:
    """Sign your approval of a held query: the node takes part in it within a second."""
    name = _sign_query(config, query_id, key, steward, "approve", remember, reason[:2000])
    tail = "; later queries of this shape go ahead without asking" if remember else ""
    typer.echo(f"query {query_id}: approved by {name}{tail}")


@app.command("reject-query")
@reports_errors
def reject_query(
    query_id: int = typer.Argument(..., help="The held query's id (from `queries`)."),
    config: Path = ConfigOption,
    key: Path = KeyOption,
    steward: str | None = StewardOption,
    reason: str = typer.Option(..., help="Why (told the coordinator with the refusal)."),
) -> None:
    """Sign your rejection of a held query: the node refuses it, with your reason."""
    if not reason.strip():
        raise InvalidRequest("a rejection needs a --reason")
    name = _sign_query(config, query_id, key, steward, "reject", False, reason[:2000])
    typer.echo(f"query {query_id}: rejected by {name}; the node refuses it")
