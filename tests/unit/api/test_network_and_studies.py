"""Studies (who sees what), the network (node keys, dataset registration), the audit chain."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import delete, update

from api import audit
from api.models import AuditEvent
from api.pagination import PageRequest
from api.services import metrics, network, queries, studies, synthesis
from smpc.tls import new_authority
from tessera.errors import Conflict, Forbidden, NotFound, Unauthorized
from tessera.fingerprints import fingerprint
from tessera.schemas import DatasetSchema, NodeHello, SynthesisSpec

# ---- visibility -------------------------------------------------------------------------


def test_a_non_member_does_not_see_the_study_or_its_queries(make, db, net) -> None:
    outsider = make.user("oscar")
    query = make.submit(net)

    with pytest.raises(NotFound, match=f"no study {net.study.id}"):
        studies.visible_study(db, net.study.id, outsider)
    with pytest.raises(NotFound, match=f"no query {query.id}"):
        queries.visible_query(db, query.id, outsider)
    assert studies.list_studies(db, outsider, PageRequest()) == ([], None)


def test_a_member_sees_the_study_and_its_queries(make, db, net) -> None:
    query = make.submit(net)

    assert studies.visible_study(db, net.study.id, net.researcher) is net.study
    assert queries.visible_query(db, query.id, net.researcher) is query
    assert studies.list_studies(db, net.researcher, PageRequest()) == ([net.study], None)


def test_an_admin_sees_every_study(make, db, net) -> None:
    admin = make.user("ada", "admin")
    other = make.study("t", net.nodes, members=[])

    assert studies.visible_study(db, other.id, admin) is other
    assert studies.list_studies(db, admin, PageRequest()) == ([net.study, other], None)
    with pytest.raises(NotFound):
        studies.visible_study(db, other.id, net.researcher)


def test_a_missing_study_and_a_hidden_one_read_the_same(make, db, net) -> None:
    outsider = make.user("oscar")

    with pytest.raises(NotFound) as hidden:
        studies.visible_study(db, net.study.id, outsider)
    with pytest.raises(NotFound) as missing:
        studies.visible_study(db, 999, outsider)
    assert hidden.value.details.keys() == missing.value.details.keys() == {"study_id"}


def test_a_non_member_does_not_see_a_synthesis_request(make, db, settings) -> None:
    sam = "ed25519:82Kfgyj9sP6AzunyERvWyt/BiU8K/XxhwDF31RaAzEc="
    allows = {"synthesis": {"generators": ["cart"], "stewards": {"sam": sam}}}
    syn = make.network(policies=[allows, allows, allows])
    record = synthesis.request(
        db, syn.study, syn.researcher, SynthesisSpec(dataset="cohort", rows=10), settings
    )

    with pytest.raises(NotFound, match=f"no synthesis request {record.id}"):
        synthesis.visible_request(db, record.id, make.user("oscar"))
    assert synthesis.visible_request(db, record.id, syn.researcher) is record


# ---- dataset registration ---------------------------------------------------------------


def test_a_changed_schema_replaces_the_old_one_and_is_audited_once(make, db) -> None:
    node = make.node("h1")
    changed = DatasetSchema.model_validate(
        {"columns": [*make.schema["columns"], {"name": "bmi", "type": "float"}]}
    )

    dataset = network.register_dataset(db, node, "cohort", changed)

    assert dataset.schema["columns"][-1] == {"name": "bmi", "type": "float", "description": ""}
    registered = make.events("dataset.registered")
    assert len(registered) == 2  # the first registration, then this change
    assert registered[-1].details["columns"] == ["age", "sex", "weight", "icu", "bmi"]


def test_an_unchanged_schema_is_not_audited_again(make, db) -> None:
    node = make.node("h1")
    before = make.events()

    network.register_dataset(db, node, "cohort", DatasetSchema.model_validate(make.schema))

    assert make.events() == before


# ---- node keys and last seen ------------------------------------------------------------


def test_a_node_is_seen_at_the_clocks_time_at_most_every_five_seconds(make, db, clock) -> None:
    org = make.organisation("hospital")
    node, key = network.create_node(db, "h1", org, "user:admin")
    first = clock.now()

    assert network.authenticate_node(db, key) is node
    assert node.last_seen_at == first
    clock.advance(5)
    network.authenticate_node(db, key)
    assert node.last_seen_at == first
    later = clock.advance(0.5)
    network.authenticate_node(db, key)
    assert node.last_seen_at == later
    assert "tessera_nodes_seen_last_minute 1" in metrics.prometheus_text(db)
    clock.advance(61)
    assert "tessera_nodes_seen_last_minute 0" in metrics.prometheus_text(db)


def test_a_wrong_key_is_unauthorized(make, db) -> None:
    org = make.organisation("hospital")
    _, key = network.create_node(db, "h1", org, "user:admin")

    with pytest.raises(Unauthorized, match="invalid node API key"):
        network.authenticate_node(db, key[:-1] + ("A" if key[-1] != "A" else "B"))


# ---- node identities -----------------------------------------------------------------------


def test_a_nodes_key_is_registered_once_with_its_one_time_enrolment_token(make, db, clock) -> None:
    org = make.organisation("hospital")
    node, _ = network.create_node(db, "h1", org, "user:admin")
    token = network.issue_enrolment(db, node, ttl_s=3600)
    first = new_authority("Tessera node h1")[1]

    def hello(cert: str, with_token: str | None) -> None:
        message = NodeHello(
            agent_version="t", identity_certificate=cert, enrolment_token=with_token
        )
        network.hello(db, node, message)

    with pytest.raises(Forbidden, match="carries no enrolment token"):
        hello(first, None)  # the API key alone does not register a key
    with pytest.raises(Forbidden, match="not the one issued for it"):
        hello(first, token[:-1] + ("A" if token[-1] != "A" else "B"))
    hello(first, token)
    assert node.identity_fingerprint == fingerprint(first)
    assert node.enrolment_token_hash is None  # used: once
    hello(first, None)  # the registered key needs no token again
    hello(first, token)  # ... and a spent one changes nothing
    with pytest.raises(Conflict, match="reset-identity"):
        hello(new_authority("Tessera node h1")[1], token)

    network.reset_identity(db, node.id, "user:admin")
    fresh = network.issue_enrolment(db, node, ttl_s=3600)
    second = new_authority("Tessera node h1")[1]
    with pytest.raises(Forbidden, match="not the one issued for it"):
        hello(second, token)  # the first token is spent
    clock.advance(3601)
    with pytest.raises(Forbidden, match="has expired"):
        hello(second, fresh)
    network.hello(db, node, NodeHello(agent_version="t"))  # a hello without a key: as before
    refused = [e.action for e in make.events()].count("node.identity_refused")
    assert refused == 4


# ---- the audit chain --------------------------------------------------------------------


def test_the_audit_chain_verifies_after_the_operations(make, db, net, clock) -> None:
    query = make.submit(net)
    clock.advance(31)
    queries.expire(db, query.id)

    answer = audit.verify(db)

    assert _outcome(answer) == (True, len(make.events()), None)
    assert answer["signed"] == len(make.events()) and answer["legacy_unsigned"] == 0
    assert answer["head"]["seq"] == make.events()[-1].id
    assert make.events()[-1].at == clock.now()


def test_an_edited_event_breaks_the_chain_from_there(make, db, net) -> None:
    make.submit(net)
    submitted = make.events("query.submitted")[0]
    db.execute(
        update(AuditEvent)
        .where(AuditEvent.id == submitted.id)
        .values(details={**submitted.details, "nodes": ["h1", "h2"]})
    )
    db.expire_all()

    assert _outcome(audit.verify(db)) == (False, submitted.id - 1, submitted.id)


def test_a_deleted_event_breaks_the_chain_at_the_next(make, db, net) -> None:
    events = make.events()
    gone = events[3]
    db.execute(delete(AuditEvent).where(AuditEvent.id == gone.id))
    db.expire_all()

    assert _outcome(audit.verify(db)) == (False, 3, events[4].id)


def _outcome(answer: dict[str, Any]) -> tuple[bool, int, int | None]:
    return answer["ok"], answer["entries"], answer["first_bad_id"]
