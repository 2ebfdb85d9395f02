"""`tessera node ...`: run and check a hospital's node agent."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import typer

from tessera.cli.errors import reports_errors

app = typer.Typer(help="Run a hospital's node agent.", no_args_is_help=True)
ConfigOption = typer.Option(..., "--config", help="The node's TOML configuration file.")


@app.command("run")
@reports_errors
def run(config: Path = ConfigOption) -> None:
    """Register with the coordinator and serve tasks until stopped (SIGTERM / Ctrl-C)."""
    from node_agent.agent import NodeAgent, configure_logging
    from node_agent.config import NodeSettings

    settings = NodeSettings.load(config)
    configure_logging(settings.log_format)
    agent = NodeAgent(settings)

    def stop(*_: Any) -> None:
        agent.stop()
        raise KeyboardInterrupt  # interrupts a long-poll in progress

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        agent.run()
    except KeyboardInterrupt:
        agent.shutdown()


@app.command("check")
@reports_errors
def check(config: Path = ConfigOption) -> None:
    """Load every dataset and check it against its declared schema. Nothing is sent."""
    from node_agent.agent import NodeAgent
    from node_agent.config import NodeSettings

    settings = NodeSettings.load(config)
    for name, rows in NodeAgent(settings).check_datasets().items():
        ds = settings.dataset(name)
        assert ds is not None
        typer.echo(f"{name}: {rows} rows, {len(ds.columns)} declared columns, schema ok")


@app.command("audit-verify")
@reports_errors
def audit_verify(config: Path = ConfigOption) -> None:
    """Check the node's audit hash chain; exit 1 if it was tampered with."""
    from node_agent.audit_log import verify
    from node_agent.config import NodeSettings

    settings = NodeSettings.load(config)
    report = verify(settings.work_dir / "audit.jsonl")
    typer.echo(json.dumps(report))
    if not report["ok"]:
        raise typer.Exit(1)
