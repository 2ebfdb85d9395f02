"""`tessera admin` and `tessera audit verify` on a coordinator database, as operators run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy


def tessera(db: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TESSERA_DATABASE_URL": f"sqlite:///{db}"}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_operator_bootstraps_a_coordinator(tmp_path: Path) -> None:
    db = tmp_path / "coordinator.db"
    made = tessera(
        db,
        "admin",
        "create-user",
        "alice",
        "--role",
        "admin",
        "--password-stdin",
        stdin="correct horse battery\n",
    )
    assert made.returncode == 0, made.stderr
    assert "created user alice (admin)" in made.stdout

    again = tessera(db, "admin", "create-user", "alice", "--password-stdin", stdin="x" * 12)
    assert again.returncode == 2 and again.stderr.strip() == "error: user 'alice' exists already"

    weak = tessera(db, "admin", "create-user", "bob", "--password-stdin", stdin="short\n")
    assert weak.returncode == 2 and "passwords need 8 to 256 characters" in weak.stderr

    org = tessera(db, "admin", "create-organisation", "Hospital A")
    assert org.returncode == 0 and "id 1" in org.stdout
    node = tessera(db, "admin", "create-node", "hospital-a", "1")
    key = node.stdout.strip().splitlines()[-1].split(": ", 1)[1]
    assert key.startswith("tn_")
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        stored = conn.execute(sqlalchemy.text("SELECT api_key_hash FROM nodes")).scalar_one()
    engine.dispose()
    assert key.split(".", 1)[1] not in stored

    verified = tessera(db, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout)
    assert (report["ok"], report["entries"], report["first_bad_id"]) == (True, 3, None)
    assert report["signed"] == 3 and report["legacy_unsigned"] == 0

    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("DELETE FROM audit_events WHERE id = 2"))
    engine.dispose()
    broken = tessera(db, "audit", "verify")
    assert broken.returncode == 1 and json.loads(broken.stdout)["ok"] is False


def test_bad_configuration_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "coordinator.toml"
    bad.write_text("database_url = [")
    done = tessera(tmp_path / "x.db", "admin", "create-organisation", "A", "--config", str(bad))
    assert done.returncode == 2 and "is not valid TOML" in done.stderr
    assert "Traceback" not in done.stderr


def test_audit_verify_catches_a_chain_recomputed_without_the_key(tmp_path: Path) -> None:
    """An attacker with the database but not the signing key deletes (or edits) an event and
    recomputes every hash with plain SHA-256: the CLI names the first event whose signature
    does not fit."""
    from api import audit
    from api.models import AuditEvent

    db = tmp_path / "coordinator.db"
    for name in ("A", "B", "C"):
        assert tessera(db, "admin", "create-organisation", f"Hospital {name}").returncode == 0
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")

    def rewrite(change: str) -> None:
        from sqlalchemy.orm import Session

        with Session(engine) as s:
            if change == "delete":
                s.execute(sqlalchemy.delete(AuditEvent).where(AuditEvent.id == 2))
            else:
                s.execute(
                    sqlalchemy.update(AuditEvent)
                    .where(AuditEvent.id == 2)
                    .values(subject="organisation:99")
                )
            prev = audit.GENESIS
            for e in s.scalars(sqlalchemy.select(AuditEvent).order_by(AuditEvent.id)):
                e.prev_hash = prev
                e.hash = prev = audit._digest(prev, e.at, e.actor, e.action, e.subject, e.details)
            s.commit()

    saved = db.read_bytes()
    for change, first_bad in (("delete", 3), ("edit", 2)):  # event 1 still verifies
        rewrite(change)
        broken = tessera(db, "audit", "verify")
        report = json.loads(broken.stdout)
        assert broken.returncode == 1, report
        assert (report["first_bad_id"], report["entries"]) == (first_bad, 1)
        assert report["problem"] == "its signature is not the coordinator key's"
        engine.dispose()
        db.write_bytes(saved)
        assert tessera(db, "audit", "verify").returncode == 0
    engine.dispose()
