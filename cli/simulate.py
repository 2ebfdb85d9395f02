"""`tessera simulate QUERY.json a.csv b.csv ...`: the real protocol on one machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from cli.errors import reports_errors
from tessera.errors import InvalidRequest


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidRequest(f"{what} file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"{what} file {path} is not valid JSON: {exc}") from None


def read_frame(path: Path) -> Any:
    """A data file as a DataFrame: CSV, or Parquet by extension."""
    import pandas as pd

    if not path.exists():
        raise InvalidRequest(f"data file not found: {path}")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except Exception as exc:  # pandas raises many kinds on a bad file
        raise InvalidRequest(f"cannot read {path}: {exc}") from None


@reports_errors
def simulate(
    query_file: Path = typer.Argument(..., help="The query, a JSON file (see docs/queries.md)."),
    data: list[Path] = typer.Argument(..., help="One CSV or Parquet file per party (3 to 16)."),
    schema_file: Path | None = typer.Option(
        None, "--schema", help="Declared dataset schema (JSON); inferred from the files if absent."
    ),
    min_count_floor: int = typer.Option(
        0, "--min-count-floor", min=0, help="Every party's policy floor for min_count."
    ),
    timeout: float = typer.Option(60.0, help="Seconds before the protocol is abandoned."),
) -> None:
    """Run a query by real MPC: one party process per data file, on loopback.

    Prints the pooled result as JSON. Exit code 2 on a bad query or file.
    """
    from smpc import simulate as run
    from tessera.schemas import DatasetSchema

    query = read_json(query_file, "query")
    if len(data) < 3:
        raise InvalidRequest(f"MPC needs at least 3 parties; got {len(data)} data file(s)")
    frames = [read_frame(p) for p in data]
    schema = None
    if schema_file is not None:
        try:
            schema = DatasetSchema.model_validate(read_json(schema_file, "schema"))
        except ValueError as exc:
            raise InvalidRequest(f"invalid schema in {schema_file}: {exc}") from None
    result = run(
        query, frames, schema, min_count_floors=[min_count_floor] * len(frames), timeout_s=timeout
    )
    typer.echo(json.dumps(result, indent=2))
