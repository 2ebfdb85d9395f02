"""`tessera node ...`: run, check and audit a hospital's node agent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from cli.errors import reports_errors

app = typer.Typer(
    help="Run a hospital's node agent (see docs/node-agent.md for the configuration file).",
    no_args_is_help=True,
)
ConfigOption = typer.Option(
    ...,
    "--config",
    "-c",
    help="The node's TOML configuration file (TESSERA_* environment variables override it).",
)


@app.command("run")
@reports_errors
def run(config: Path = ConfigOption) -> None:
    """Register with the coordinator and serve tasks until stopped (SIGTERM or Ctrl-C).

    Exits 2 with a one-line message if the configuration or a dataset is unusable.
    """
    from node_agent.agent import NodeAgent
    from node_agent.config import NodeSettings
    from node_agent.logs import configure_logging

    settings = NodeSettings.load(config)
    configure_logging(settings.log_format)
    NodeAgent(settings).run()


@app.command("check")
@reports_errors
def check(config: Path = ConfigOption) -> None:
    """Load every dataset and check it against its declared schema (local: nothing is sent)."""
    from node_agent.config import NodeSettings
    from node_agent.datasets import DatasetCache

    settings = NodeSettings.load(config)
    cache = DatasetCache()
    for ds in settings.datasets:
        frame = cache.get(ds)
        missing = int(frame.isna().sum().sum())
        typer.echo(
            f"{ds.name}: {len(frame)} rows, {len(ds.columns)} columns, {missing} missing "
            f"values; schema ok ({ds.describe()})"
        )
    policy = settings.policy
    allowed = ", ".join(policy.allowed_statistics) if policy.allowed_statistics else "all"
    typer.echo(f"policy: min_count {policy.min_count}, statistics: {allowed}")
    summary = policy.summary()
    typer.echo(f"privacy budget: {_budget_text(summary.dp_budget, summary.dp_dataset_budgets)}")
    if summary.dp_total is not None or summary.dp_dataset_totals:
        typer.echo(
            "privacy budget over all studies: "
            + _total_text(summary.dp_total, summary.dp_dataset_totals)
            + " (basic composition or zCDP; elsewhere each dataset's per-study budget)"
        )
    elif summary.dp_budget is not None or summary.dp_dataset_budgets:
        typer.echo(
            "privacy budget over all studies: each dataset's per-study budget "
            "(basic composition or zCDP)"
        )


def _amounts(budget: Any) -> str:
    """'epsilon 1, delta 0.000001', leaving out an amount that is None (not capped)."""
    from tessera.privacy import text

    return ", ".join(
        f"{name} {text(value)}"
        for name, value in (("epsilon", budget.epsilon), ("delta", budget.delta))
        if value is not None
    )


def _budget_text(default: Any, per_dataset: dict[str, Any]) -> str:
    """The policy's privacy budgets in a line: the default, then each dataset's own."""
    own = [f"{name}: {_amounts(b)} per study" for name, b in sorted(per_dataset.items())]
    if default is None:
        return "; ".join([*own, "none elsewhere"]) if own else "none (queries with dp are refused)"
    return "; ".join([f"{_amounts(default)} per study and dataset", *own])


def _total_text(default: Any, per_dataset: dict[str, Any]) -> str:
    """The caps on all studies together in a line: the default, then each dataset's own."""
    own = [f"{name}: {_amounts(t)}" for name, t in sorted(per_dataset.items())]
    if default is None:
        return "; ".join([*own, "none elsewhere"])
    return "; ".join([f"{_amounts(default)} per dataset", *own])


@app.command("budget")
@reports_errors
def budget(config: Path = ConfigOption) -> None:
    """Print the privacy ledger (work_dir/budget.sqlite3) by both of its accountants: per study
    and dataset, what basic composition (sums of epsilon and delta) and zCDP (rho) have spent of
    the allocation, and what is left as the largest epsilon one more query may have, by each
    and the better of the two (a charge fits when either is within the limit); per dataset, the
    same over all studies (its total). Local: nothing is sent."""
    from node_agent.budget import PrivacyLedger, Spent
    from node_agent.config import NodeSettings

    settings = NodeSettings.load(config)
    path = settings.ledger_path
    ledger = PrivacyLedger(path) if path.exists() else None  # reading creates no ledger
    spent: list[Spent] = ledger.entries() if ledger else []
    limits = settings.policy.summary()
    entries = [
        {
            "study_id": s.study_id,
            "dataset": s.dataset,
            "charges": s.charges,
            **_rho_view(s.composed, limits.dp_limit(s.dataset)),
        }
        for s in spent
    ]
    ledger_totals = {t.dataset: t for t in ledger.dataset_totals()} if ledger else {}
    totals = []
    for ds in settings.datasets:
        cap, was = limits.dp_total_limit(ds.name), ledger_totals.get(ds.name)
        if cap is None and was is None:
            continue
        totals.append(
            {
                "dataset": ds.name,
                "charges": was.charges if was else 0,
                **_rho_view(was.composed if was else None, cap),
            }
        )
    typer.echo(json.dumps({"path": str(path), "entries": entries, "dataset_totals": totals}))


def _rho_view(spent: Any, limit: Any) -> dict[str, Any]:
    """What is spent of a limit (a DPBudget or a filled-in DPTotal; None: no DP budget) by
    each accountant: basic composition's sums of epsilon and delta, zCDP's rho; and what is
    left as the largest epsilon of one more query (the better of the two)."""
    from tessera.privacy import Composed, largest_epsilon, left

    spent = spent or Composed()
    has_limit = limit is not None and limit.rho is not None and limit.epsilon is not None
    room = left(limit.rho, spent.rho) if has_limit else 0
    basic = float(spent.basic_left(limit.epsilon, limit.delta)) if has_limit else 0.0
    return {
        "rho_spent": float(spent.rho),
        "rho_limit": float(limit.rho) if has_limit else None,
        "rho_remaining": float(room),
        "epsilon_spent": None if spent.epsilon is None else float(spent.epsilon),
        "delta_spent": None if spent.delta is None else float(spent.delta),
        "epsilon_limit": None if limit is None else limit.epsilon,
        "delta_limit": None if limit is None else limit.delta,
        "basic_epsilon_remaining": basic,
        "zcdp_epsilon_remaining": largest_epsilon(room),
        "epsilon_remaining": max(basic, largest_epsilon(room)),
    }


@app.command("audit-verify")
@reports_errors
def audit_verify(config: Path = ConfigOption) -> None:
    """Check the node's audit hash chain (work_dir/audit.jsonl) and its signatures by the
    node's key; exit 1 if it is broken."""
    from node_agent.audit_log import verify
    from node_agent.config import NodeSettings
    from node_agent.identity import CERT_FILE, identity_dir

    settings = NodeSettings.load(config)
    cert = identity_dir(settings.work_dir) / CERT_FILE
    report = verify(settings.audit_path, cert.read_text() if cert.exists() else None)
    typer.echo(json.dumps({"path": str(settings.audit_path), **report.to_dict()}))
    if not report.ok:
        raise typer.Exit(1)


@app.command("init")
@reports_errors
def init(config: Path = ConfigOption) -> None:
    """Make this node's long-term key (once), in work_dir/identity/; print its fingerprint.

    The key never leaves the node. Read the fingerprint to each peer hospital out of band
    (phone, signed letter); each of them runs `tessera node trust` with it.
    """
    from node_agent.config import NodeSettings
    from node_agent.identity import NodeIdentity, identity_dir
    from tessera.fingerprints import grouped

    settings = NodeSettings.load(config)
    identity = NodeIdentity.create(settings.work_dir, settings.name)
    typer.echo(f"node {settings.name}: identity made in {identity_dir(settings.work_dir)}")
    typer.echo(f"fingerprint: {grouped(identity.fingerprint)}")


@app.command("fingerprint")
@reports_errors
def show_fingerprint(
    config: Path = ConfigOption,
    plain: bool = typer.Option(False, "--plain", help="Print it as one word (for scripts)."),
) -> None:
    """Print this node's fingerprint (what its peers' stewards must confirm)."""
    from node_agent.config import NodeSettings
    from node_agent.identity import NodeIdentity
    from tessera.fingerprints import grouped

    settings = NodeSettings.load(config)
    fp = NodeIdentity.load(settings.work_dir, settings.name).fingerprint
    typer.echo(fp if plain else f"node {settings.name}: {grouped(fp)}")


@app.command("trust")
@reports_errors
def trust(
    config: Path = ConfigOption,
    node: str = typer.Option(..., "--node", help="The peer node's name (as enrolled)."),
    fingerprint: str = typer.Option(
        ..., "--fingerprint", help="The peer's fingerprint, as its hospital read it to you."
    ),
) -> None:
    """Compute with a peer node: trust its key (confirmed with its hospital out of band).

    Takes effect at the next query; nothing is sent to the coordinator.
    """
    from node_agent.config import NodeSettings
    from node_agent.identity import TrustedPeers
    from tessera.errors import InvalidRequest
    from tessera.fingerprints import grouped

    settings = NodeSettings.load(config)
    if node == settings.name:
        raise InvalidRequest(f"{node} is this node: a node does not trust itself as a peer")
    peers = TrustedPeers(settings.work_dir).trust(node, fingerprint)
    typer.echo(f"node {settings.name} now computes with {node} ({grouped(peers[node])})")


@app.command("distrust")
@reports_errors
def distrust(
    config: Path = ConfigOption,
    node: str = typer.Option(..., "--node", help="The peer's node name."),
) -> None:
    """Stop computing with a peer node (from the next query on)."""
    from node_agent.config import NodeSettings
    from node_agent.identity import TrustedPeers

    settings = NodeSettings.load(config)
    TrustedPeers(settings.work_dir).distrust(node)
    typer.echo(f"node {settings.name} no longer computes with {node}")


@app.command("peers")
@reports_errors
def peers(
    config: Path = ConfigOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """The peer nodes this node computes with, and their fingerprints."""
    from node_agent.config import NodeSettings
    from node_agent.identity import TrustedPeers
    from tessera.fingerprints import grouped

    settings = NodeSettings.load(config)
    trusted = TrustedPeers(settings.work_dir).read()
    if as_json:
        typer.echo(json.dumps(trusted, indent=2))
        return
    if not trusted:
        typer.echo("no trusted peers: this node computes with nobody (`tessera node trust`)")
    for name, fp in trusted.items():
        typer.echo(f"{name}: {grouped(fp)}")
