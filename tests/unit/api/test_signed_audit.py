"""The coordinator's signing key, its signed audit chain and its signed tasks, tested directly.

The attacker here can write the database but does not hold the key: whatever they change,
however carefully they recompute the plain SHA-256 chain, `verify` names the first event that
is not the coordinator's.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from api import audit
from api.models import AuditEvent, NodeAuditHead
from api.services import queries
from api.settings import CoordinatorSettings
from api.signing import KEY_FILE, CoordinatorKey, default_key_path
from tessera.errors import ConfigInvalid
from tessera.signing import (
    audit_message,
    public_key_fingerprint,
    statement_hash,
    statement_message,
    verify_ed25519,
)


def rechain(db: Any) -> None:
    """What an attacker without the key can do: recompute every hash after a change (the
    signatures stay as they were)."""
    prev = audit.GENESIS
    for event in db.scalars(select(AuditEvent).order_by(AuditEvent.id)):
        digest = audit._digest(
            prev, event.at, event.actor, event.action, event.subject, event.details
        )
        db.execute(
            update(AuditEvent).where(AuditEvent.id == event.id).values(prev_hash=prev, hash=digest)
        )
        prev = digest
    db.expire_all()


def test_every_event_is_signed_by_the_coordinator_key(make, db, net) -> None:
    make.submit(net)
    key = audit.signer(db)
    events = make.events()
    assert events and all(
        verify_ed25519(key.public_pem, audit_message(e.hash), e.signature) for e in events
    )
    answer = audit.verify(db)
    assert answer["ok"] and answer["signed"] == len(events) and answer["legacy_unsigned"] == 0
    assert answer["key_fingerprint"] == key.fingerprint
    assert answer["head"] == {
        "seq": events[-1].id,
        "hash": events[-1].hash,
        "signature": events[-1].signature,
    }


def test_a_deleted_event_with_the_chain_recomputed_is_caught_by_its_signature(
    make, db, net
) -> None:
    make.submit(net)
    events = make.events()
    db.execute(delete(AuditEvent).where(AuditEvent.id == events[2].id))
    rechain(db)

    answer = audit.verify(db)

    assert (answer["ok"], answer["first_bad_id"]) == (False, events[3].id)
    assert answer["problem"] == "its signature is not the coordinator key's"


def test_an_edited_event_with_the_chain_recomputed_is_caught(make, db, net) -> None:
    query = make.submit(net)
    submitted = make.events("query.submitted")[0]
    db.execute(
        update(AuditEvent)
        .where(AuditEvent.id == submitted.id)
        .values(actor="user:mallory", details={**submitted.details, "researcher": "mallory"})
    )
    rechain(db)

    answer = audit.verify(db)

    assert (answer["ok"], answer["first_bad_id"]) == (False, submitted.id)
    assert "signature" in answer["problem"]
    assert query.id  # the query itself is untouched: only its record was forged


def test_stripping_the_signatures_does_not_pass_as_legacy(make, db, net) -> None:
    """Unsigned events may only open the chain, and the chain must end signed: an attacker
    cannot downgrade the whole chain to "legacy"."""
    make.submit(net)
    events = make.events()
    db.execute(update(AuditEvent).values(signature=None))
    db.expire_all()
    answer = audit.verify(db)
    assert (answer["ok"], answer["first_bad_id"]) == (False, events[-1].id)
    assert "ends with unsigned events" in answer["problem"]

    db.execute(update(AuditEvent).where(AuditEvent.id == events[0].id).values(signature="AAAA"))
    db.expire_all()
    answer = audit.verify(db)
    assert (answer["ok"], answer["first_bad_id"]) == (False, events[0].id)


def test_legacy_events_are_sealed_by_a_signed_event_and_reported(make, db, net) -> None:
    make.submit(net)
    events = make.events()
    db.execute(update(AuditEvent).values(signature=None))  # as written before revision 0011
    db.expire_all()

    seal = audit.seal_legacy(db)

    assert seal is not None and seal.action == "audit.signing_started"
    assert seal.details["legacy_events"] == len(events)
    assert seal.details["legacy_head"] == events[-1].hash
    answer = audit.verify(db)
    assert answer["ok"] and (answer["legacy_unsigned"], answer["signed"]) == (len(events), 1)
    # the sealed legacy events are now covered by the signed hash chain
    db.execute(update(AuditEvent).where(AuditEvent.id == events[1].id).values(subject="forged"))
    rechain(db)
    assert audit.verify(db)["first_bad_id"] == seal.id


def test_another_key_does_not_verify(make, db, net) -> None:
    make.submit(net)
    other = CoordinatorKey.generate()
    rows = make.events()
    answer = audit.verify_events(rows, other.public_pem, other.fingerprint)
    assert (answer["ok"], answer["first_bad_id"]) == (False, rows[0].id)


def test_submission_records_each_task_statement_and_the_offer_is_signed(
    make, db, net, clock
) -> None:
    query = make.submit(net)
    submitted = make.events("query.submitted")[0].details
    assert (submitted["researcher"], submitted["researcher_id"]) == ("rita", net.researcher.id)
    assert sorted(submitted["statements"]) == ["0", "1", "2"]
    key = audit.signer(db)
    for node in net.nodes:
        [task] = queries.offer_tasks(db, node)
        assert (task.researcher, task.researcher_id) == ("rita", net.researcher.id)
        statement = task.statement()
        assert statement["query"] == query.query and statement["study_id"] == net.study.id
        assert verify_ed25519(key.public_pem, statement_message(statement), task.signature)
        assert submitted["statements"][str(task.party_id)] == statement_hash(statement)
        # the same task with a different query is not what the coordinator signed
        altered = task.model_copy(update={"query": {**task.query, "statistic": "sum"}})
        assert not verify_ed25519(
            key.public_pem, statement_message(altered.statement()), task.signature
        )


def test_node_heads_are_kept_once_each(make, db, net) -> None:
    node = net.nodes[0]
    assert audit.record_node_head(db, node, 3, "a" * 64, "c2ln")
    assert not audit.record_node_head(db, node, 3, "a" * 64, "c2ln")
    assert audit.record_node_head(db, node, 4, "b" * 64, "c2ln")
    assert not audit.record_node_head(db, node, 3, "a" * 64, "c2ln"), "seen before"
    rows = db.scalars(select(NodeAuditHead).order_by(NodeAuditHead.id)).all()
    assert [(r.entries, r.last_hash) for r in rows] == [(3, "a" * 64), (4, "b" * 64)]


# ---- the key --------------------------------------------------------------------------------


def test_the_key_is_made_once_beside_the_sqlite_file_and_kept_private(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'data' / 'tessera.db'}"
    path = default_key_path(url)
    assert path == tmp_path / "data" / KEY_FILE

    made = CoordinatorKey.for_settings(None, url)

    assert made.path == path and path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = CoordinatorKey.for_settings(None, url)
    assert again.fingerprint == made.fingerprint == public_key_fingerprint(made.public_pem)
    assert made.fingerprint.startswith("sha256:") and len(made.fingerprint) == 71
    assert "PRIVATE" not in made.public_pem and "PRIVATE" in path.read_text()


def test_the_key_file_must_be_an_ed25519_key_not_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    CoordinatorKey.load_or_create(path)
    path.chmod(0o644)
    with pytest.raises(ConfigInvalid, match="readable by others"):
        CoordinatorKey.for_settings(path, "sqlite://")
    path.chmod(0o600)
    assert CoordinatorKey.for_settings(path, "sqlite://").path == path
    path.write_text("not a key")
    with pytest.raises(ConfigInvalid, match="not a PEM private key"):
        CoordinatorKey.load(path)
    with pytest.raises(ConfigInvalid, match="cannot be read"):
        CoordinatorKey.load(tmp_path / "missing.pem")


def test_other_databases_keep_it_in_the_working_directory(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_key_path("postgresql+psycopg://x@db/tessera") == tmp_path / KEY_FILE
    assert default_key_path("sqlite://") is None  # in memory: a key as short-lived as the data


def test_production_requires_the_key_file(monkeypatch) -> None:
    monkeypatch.setenv("TESSERA_ENVIRONMENT", "production")
    strong = {"jwt_secret": "s" * 40}
    with pytest.raises(ConfigInvalid, match="TESSERA_SIGNING_KEY_FILE"):
        CoordinatorSettings.load(**strong)
    fine = CoordinatorSettings.load(**strong, signing_key_file="/run/secrets/key.pem")
    assert fine.signing_key_file == Path("/run/secrets/key.pem")


def test_events_hold_no_key_material(make, db, net) -> None:
    make.submit(net)
    text = json.dumps([e.details for e in make.events()])
    assert "PRIVATE" not in text and "BEGIN" not in text
