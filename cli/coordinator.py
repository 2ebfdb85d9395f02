"""`tessera coordinator serve`: run the coordinator's REST API."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.errors import reports_errors

app = typer.Typer(help="Run the coordinator.", no_args_is_help=True)


@app.command("serve")
@reports_errors
def serve(
    config: Path | None = typer.Option(None, "--config", help="TOML settings file."),
    host: str | None = typer.Option(None, help="Listen address (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Listen port (default 8000)."),
) -> None:
    """Serve the REST API (settings: --config FILE and TESSERA_* environment variables).

    Migrations are applied on start; the log has one line per event, never a secret.
    """
    import uvicorn

    from api import create_app
    from api.logs import configure_logging
    from api.migrate import check_and_upgrade
    from api.settings import CoordinatorSettings

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = CoordinatorSettings.load(config, **overrides)
    configure_logging(settings.log_format)
    check_and_upgrade(settings.database_url)  # a bad URL is one line, not a traceback
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
    )
