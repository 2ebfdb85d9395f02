"""`tessera audit verify`: check an audit hash chain (the coordinator's, or a node's)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cli.errors import reports_errors

app = typer.Typer(help="Audit trails.", no_args_is_help=True)


@app.command("verify")
@reports_errors
def verify(
    config: Path | None = typer.Option(None, "--config", help="Coordinator TOML settings file."),
    node_config: Path | None = typer.Option(
        None, "--node-config", help="Verify this node's own audit log instead."
    ),
) -> None:
    """Walk the hash chain; print the report; exit 1 if an entry was altered or removed."""
    if node_config is not None:
        from node_agent.audit_log import verify as verify_node_log
        from node_agent.config import NodeSettings

        settings = NodeSettings.load(node_config)
        report = verify_node_log(settings.audit_path).to_dict()
    else:
        from api import audit
        from cli.admin import _db

        with _db(config) as db:
            report = audit.verify(db)
    typer.echo(json.dumps(report))
    if not report["ok"]:
        raise typer.Exit(1)
