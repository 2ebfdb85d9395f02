"""`tessera coordinator serve`: run the coordinator's REST API."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from tessera.cli.errors import reports_errors

app = typer.Typer(help="Run the coordinator.", no_args_is_help=True)


@app.command("serve")
@reports_errors
def serve(
    config: Path | None = typer.Option(None, "--config", help="TOML settings file."),
    host: str | None = typer.Option(None, help="Listen address (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Listen port (default 8000)."),
) -> None:
    """Serve the REST API (settings: --config FILE and TESSERA_* environment variables)."""
    import uvicorn

    from api import create_app
    from api.settings import CoordinatorSettings

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = CoordinatorSettings.load(config, **overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
    )
