"""`tessera node ...`: run, check and audit a hospital's node agent."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tessera.cli.errors import reports_errors

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


@app.command("audit-verify")
@reports_errors
def audit_verify(config: Path = ConfigOption) -> None:
    """Check the node's audit hash chain (work_dir/audit.jsonl); exit 1 if it is broken."""
    from node_agent.audit_log import verify
    from node_agent.config import NodeSettings

    settings = NodeSettings.load(config)
    report = verify(settings.audit_path)
    typer.echo(json.dumps({"path": str(settings.audit_path), **report.to_dict()}))
    if not report.ok:
        raise typer.Exit(1)
