"""`tessera admin ...`: administration directly on the coordinator's database.

For bootstrapping and for operators on the coordinator host; everything here is also available
through the REST API to an admin user. Same service functions, same audit records.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from cli.errors import reports_errors

app = typer.Typer(help="Administer the coordinator's database directly.", no_args_is_help=True)
ConfigOption = typer.Option(None, "--config", help="Coordinator TOML settings file.")
ACTOR = "cli:admin"


@contextmanager
def _db(config: Path | None) -> Iterator[Any]:
    from api.db import Database
    from api.migrate import check_and_upgrade
    from api.settings import CoordinatorSettings
    from api.signing import CoordinatorKey

    settings = CoordinatorSettings.load(config)
    url = settings.database_url
    check_and_upgrade(url)
    database = Database(url, signer=CoordinatorKey.for_settings(settings.signing_key_file, url))
    try:
        with database.session() as db:
            yield db
    finally:
        database.dispose()


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


@app.command("create-user")
@reports_errors
def create_user(
    username: str,
    role: str = typer.Option("researcher", help="admin, researcher or steward."),
    organisation_id: int | None = typer.Option(None, help="The user's organisation."),
    password_stdin: bool = typer.Option(
        False,
        "--password-stdin",
        help="Read the password from standard input instead of prompting.",
    ),
    config: Path | None = ConfigOption,
) -> None:
    """Create a user (the password is prompted for, or read from stdin)."""
    from api.services import accounts
    from tessera.errors import InvalidRequest

    if role not in ("admin", "researcher", "steward"):
        raise InvalidRequest(f"unknown role {role!r}: use admin, researcher or steward")
    password = _password(password_stdin)
    with _db(config) as db:
        user = accounts.create_user(db, username, password, role, organisation_id, actor=ACTOR)  # type: ignore[arg-type]
        typer.echo(f"created user {user.username} ({user.role}), id {user.id}")


@app.command("create-organisation")
@reports_errors
def create_organisation(name: str, config: Path | None = ConfigOption) -> None:
    """Create an organisation (a hospital)."""
    from api.services import network

    with _db(config) as db:
        org = network.create_organisation(db, name, ACTOR)
        typer.echo(f"created organisation {org.name}, id {org.id}")


@app.command("create-node")
@reports_errors
def create_node(name: str, organisation_id: int, config: Path | None = ConfigOption) -> None:
    """Enrol a node; prints its one-time enrolment token and its API key once (both go in the
    node's configuration: the token registers the node's key at its first start)."""
    from api.services import network
    from api.settings import CoordinatorSettings

    ttl_s = CoordinatorSettings.load(config).enrolment_ttl_s
    with _db(config) as db:
        node, key = network.create_node(db, name, organisation_id, ACTOR)
        token = network.issue_enrolment(db, node, ttl_s)
        typer.echo(f"created node {node.name}, id {node.id}")
        typer.echo(f"enrolment token (shown once, one use, {ttl_s / 86400:g} days): {token}")
        typer.echo(f"API key (shown once): {key}")


@app.command("create-study")
@reports_errors
def create_study(
    name: str,
    organisation_id: list[int] = typer.Option([], help="Participating organisation (repeat)."),
    dataset: list[str] = typer.Option([], help="Dataset name (repeat)."),
    member: list[str] = typer.Option([], help="Member username (repeat)."),
    description: str = "",
    config: Path | None = ConfigOption,
) -> None:
    """Create a study with its organisations, datasets and members."""
    from api.services import studies

    with _db(config) as db:
        study = studies.create_study(
            db, name, description, organisation_id, dataset, list(member), ACTOR
        )
        typer.echo(json.dumps(studies.study_view(db, study), default=str, indent=2))


@app.command("disable-user")
@reports_errors
def disable_user(username: str, config: Path | None = ConfigOption) -> None:
    """Disable a user: their sessions end at once and they cannot log in."""
    from api.services import accounts

    with _db(config) as db:
        user = accounts.set_disabled(db, None, accounts.find_user(db, username).id, True)
        db.commit()
        typer.echo(f"disabled user {user.username}")


@app.command("enable-user")
@reports_errors
def enable_user(username: str, config: Path | None = ConfigOption) -> None:
    """Enable a disabled user again."""
    from api.services import accounts

    with _db(config) as db:
        user = accounts.set_disabled(db, None, accounts.find_user(db, username).id, False)
        db.commit()
        typer.echo(f"enabled user {user.username}")
