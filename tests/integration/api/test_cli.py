"""`tessera admin` and `tessera coordinator` as an operator runs them (on SQLite; in process,
the subprocess form is in tests/e2e and in every coordinator these tests start)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy
from typer.testing import CliRunner

from cli.main import app


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def tessera(db: Path, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> Done:
    result = CliRunner().invoke(
        app,
        list(args),
        input=stdin,
        env={"TESSERA_DATABASE_URL": f"sqlite:///{db}", **(env or {})},
    )
    return Done(result.exit_code, result.stdout, result.stderr)


@pytest.mark.parametrize(
    "command",
    [
        ["admin"],
        ["admin", "create-user"],
        ["admin", "create-organisation"],
        ["admin", "create-node"],
        ["admin", "create-study"],
        ["admin", "disable-user"],
        ["admin", "enable-user"],
        ["coordinator"],
        ["coordinator", "serve"],
    ],
)
def test_every_command_has_help(tmp_path: Path, command: list[str]) -> None:
    done = tessera(tmp_path / "x.db", *command, "--help")
    assert done.returncode == 0 and "Usage:" in done.stdout, done.stderr


def test_an_operator_sets_up_a_study_from_the_shell(tmp_path: Path) -> None:
    db = tmp_path / "coordinator.db"
    made = tessera(
        db, "admin", "create-user", "rita", "--role", "researcher", "--password-stdin",
        stdin="rita-password\n",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    for name in ("Hospital A", "Hospital B"):
        assert tessera(db, "admin", "create-organisation", name).returncode == 0
    node = tessera(db, "admin", "create-node", "hospital-a", "1")
    assert node.returncode == 0 and "API key (shown once): tn_" in node.stdout
    study = tessera(
        db, "admin", "create-study", "pilot", "--organisation-id", "1", "--organisation-id", "2",
        "--dataset", "cohort", "--member", "rita", "--description", "first look",
    )  # fmt: skip
    assert study.returncode == 0, study.stderr
    view = json.loads(study.stdout)
    assert view["name"] == "pilot" and view["members"] == ["rita"]
    assert view["organisation_ids"] == [1, 2] and view["datasets"] == ["cohort"]

    again = tessera(db, "admin", "create-study", "pilot")
    assert again.returncode == 2 and again.stderr == "error: study 'pilot' exists already\n"
    ghost = tessera(db, "admin", "create-study", "other", "--member", "ghost")
    assert ghost.returncode == 2 and "no user 'ghost'" in ghost.stderr
    role = tessera(db, "admin", "create-user", "eve", "--role", "root", "--password-stdin")
    assert role.returncode == 2 and "unknown role 'root'" in role.stderr

    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        actions = conn.execute(sqlalchemy.text("SELECT action FROM audit_events")).scalars().all()
    engine.dispose()
    assert actions == [
        "user.created",
        "organisation.created",
        "organisation.created",
        "node.created",
        "study.created",
    ]


def test_an_operator_disables_and_enables_a_user(tmp_path: Path) -> None:
    db = tmp_path / "coordinator.db"
    made = tessera(db, "admin", "create-user", "rita", "--password-stdin", stdin="rita-password\n")
    assert made.returncode == 0, made.stderr
    off = tessera(db, "admin", "disable-user", "rita")
    assert off.returncode == 0 and off.stdout == "disabled user rita\n", off.stderr
    on = tessera(db, "admin", "enable-user", "rita")
    assert on.returncode == 0 and on.stdout == "enabled user rita\n", on.stderr
    ghost = tessera(db, "admin", "disable-user", "ghost")
    assert ghost.returncode == 2 and ghost.stderr == "error: no user 'ghost'\n"
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        actions = conn.execute(sqlalchemy.text("SELECT action FROM audit_events")).scalars().all()
        disabled = conn.execute(sqlalchemy.text("SELECT disabled_at FROM users")).scalar()
    engine.dispose()
    assert actions == ["user.created", "user.disabled", "user.enabled"] and disabled is None


def test_serve_reports_an_unusable_database_in_one_line(tmp_path: Path) -> None:
    done = tessera(
        tmp_path / "x.db",
        "coordinator",
        "serve",
        "--port",
        "1",
        env={"TESSERA_DATABASE_URL": "postgresql+psycopg://who:secret-pw@127.0.0.1:1/none"},
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: cannot use the database postgresql+psycopg://who:***@")
    assert "secret-pw" not in done.stderr


def test_serve_refuses_production_with_the_development_secret(tmp_path: Path) -> None:
    done = tessera(
        tmp_path / "x.db", "coordinator", "serve", env={"TESSERA_ENVIRONMENT": "production"}
    )
    assert done.returncode == 2 and "TESSERA_JWT_SECRET" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
