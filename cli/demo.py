"""`tessera demo`: the whole system on this machine, with real MPC between three hospitals."""

from __future__ import annotations

import typer

from cli.errors import reports_errors


@reports_errors
def demo(
    keep: bool = typer.Option(False, "--keep", help="Keep the temporary folder (logs, data)."),
) -> None:
    """Start a coordinator and three node agents, run pooled queries, compare with plaintext.

    Exits 0 only if every pooled result matches the plaintext answer on the demo data, and
    every differentially private one lies within 10 noise scales of the exact value.
    """
    from demo.scenario import run_demo

    if not run_demo(keep=keep, say=typer.echo):
        raise typer.Exit(1)
