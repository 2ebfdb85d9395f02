"""`tessera`: the single command-line entry point.

Sub-command modules import the outer layers (api, node_agent, smpc) inside their commands, so
`tessera --help` stays fast and a missing optional dependency only affects its own command.
"""

from __future__ import annotations

import typer

from cli import admin, audit, coordinator, demo, node, query, simulate, steward
from cli import synth as synth_cli

app = typer.Typer(
    name="tessera",
    help="Pooled statistics across hospitals by secure multi-party computation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("demo")(demo.demo)
app.command("simulate")(simulate.simulate)
app.add_typer(coordinator.app, name="coordinator")
app.add_typer(node.app, name="node")
app.add_typer(admin.app, name="admin")
app.add_typer(audit.app, name="audit")
app.add_typer(query.app, name="query")
app.add_typer(synth_cli.app, name="synth")
app.add_typer(steward.app, name="steward")


if __name__ == "__main__":
    app()
