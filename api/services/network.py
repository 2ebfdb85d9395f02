"""Organisations, nodes (enrolment, API keys, hello) and the dataset schemas nodes register."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import audit, clock
from api.models import Dataset, Node, Organisation
from api.pagination import PageRequest
from api.security import api_key_matches, new_api_key, split_api_key
from tessera.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthorized
from tessera.fingerprints import fingerprint
from tessera.schemas import DatasetSchema, NodeHello, NodePolicySummary

SEEN_RESOLUTION = timedelta(seconds=5)


def create_organisation(db: Session, name: str, actor: str) -> Organisation:
    if db.scalars(select(Organisation).where(Organisation.name == name)).first():
        raise Conflict(f"organisation {name!r} exists already", {"name": name})
    org = Organisation(name=name)
    db.add(org)
    db.flush()
    audit.record(db, actor, "organisation.created", f"organisation:{name}")
    return org


def list_organisations(db: Session, page: PageRequest) -> tuple[list[Organisation], str | None]:
    rows = db.scalars(page.apply(select(Organisation), Organisation.id)).all()
    return page.page(rows, lambda o: o.id)


def organisation_view(org: Organisation) -> dict[str, Any]:
    return {"id": org.id, "name": org.name, "created_at": org.created_at}


def create_node(db: Session, name: str, organisation_id: int, actor: str) -> tuple[Node, str]:
    """Enrol a node; returns it and its API key (shown once, stored hashed)."""
    if db.get(Organisation, organisation_id) is None:
        raise NotFound(f"no organisation {organisation_id}", {"organisation_id": organisation_id})
    if db.scalars(select(Node).where(Node.name == name)).first():
        raise Conflict(f"node {name!r} exists already", {"name": name})
    key_id, key, key_hash = new_api_key()
    node = Node(
        name=name, organisation_id=organisation_id, api_key_id=key_id, api_key_hash=key_hash
    )
    db.add(node)
    db.flush()
    audit.record(db, actor, "node.created", f"node:{name}", organisation_id=organisation_id)
    return node, key


ENROLMENT_PREFIX = "te_"


def issue_enrolment(db: Session, node: Node, ttl_s: float) -> str:
    """A new one-time token that registers the node's long-term key at its first hello (shown
    once, stored hashed; any earlier one stops working)."""
    token = ENROLMENT_PREFIX + secrets.token_urlsafe(32)
    node.enrolment_token_hash = _token_hash(token)
    node.enrolment_expires_at = clock.now(db) + timedelta(seconds=ttl_s)
    return token


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _enrolment_refusal(db: Session, node: Node, token: str | None) -> str | None:
    """Why `token` does not register this node's key now; None if it does."""
    if node.enrolment_token_hash is None:
        return (
            "no enrolment token is outstanding for it (an administrator issues one with "
            f"POST /nodes/{node.id}/reset-identity)"
        )
    if token is None:
        return "its hello carries no enrolment token (set enrolment_token in node.toml)"
    if not hmac.compare_digest(node.enrolment_token_hash, _token_hash(token)):
        return "the enrolment token is not the one issued for it"
    expires = node.enrolment_expires_at
    if expires is not None and clock.now(db) > expires:
        return "its enrolment token has expired (an administrator issues a new one)"
    return None


def rotate_key(db: Session, node_id: int, actor: str) -> tuple[Node, str]:
    node = db.get(Node, node_id)
    if node is None:
        raise NotFound(f"no node {node_id}", {"node_id": node_id})
    node.api_key_id, key, node.api_key_hash = new_api_key()
    audit.record(db, actor, "node.key_rotated", f"node:{node.name}")
    return node, key


def authenticate_node(db: Session, key: str) -> Node:
    parts = split_api_key(key)
    node = None
    if parts is not None:
        node = db.scalars(select(Node).where(Node.api_key_id == parts[0])).first()
    if node is None or parts is None or not api_key_matches(node.api_key_hash, parts[1]):
        raise Unauthorized("invalid node API key")
    now = clock.now(db)
    if node.last_seen_at is None or now - node.last_seen_at > SEEN_RESOLUTION:
        node.last_seen_at = now  # not on every request: a write each long-poll is needless
    return node


def list_nodes(
    db: Session, page: PageRequest, organisation_id: int | None = None
) -> tuple[list[Node], str | None]:
    """A page of nodes (of one organisation, if given) and the next page's cursor."""
    stmt = select(Node)
    if organisation_id is not None:
        stmt = stmt.where(Node.organisation_id == organisation_id)
    return page.page(db.scalars(page.apply(stmt, Node.id)).all(), lambda n: n.id)


def node_view(node: Node) -> dict[str, Any]:
    return {
        "id": node.id,
        "name": node.name,
        "organisation_id": node.organisation_id,
        "agent_version": node.agent_version,
        "policy": node.policy,
        "identity_fingerprint": node.identity_fingerprint,
        "last_seen_at": node.last_seen_at,
        "created_at": node.created_at,
    }


def published_policy(node: Node) -> NodePolicySummary:
    """The policy summary the node published at its last hello (an empty one before it, or if
    what is stored no longer reads as one; the node still decides, this only predicts its
    refusals)."""
    try:
        return NodePolicySummary.model_validate(node.policy or {})
    except ValidationError:
        return NodePolicySummary()


def _identity(certificate: str) -> str:
    """The fingerprint of a node's long-term certificate; 422 unless it is a CA certificate
    with an elliptic-curve key (what `tessera node init` makes)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        cert = x509.load_pem_x509_certificate(certificate.encode())
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (ValueError, x509.ExtensionNotFound):
        raise InvalidRequest(
            "identity_certificate is not a node's CA certificate (PEM)",
            {"errors": [{"loc": ["body", "identity_certificate"], "msg": "invalid"}]},
        ) from None
    if not ca or not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
        raise InvalidRequest(
            "identity_certificate is not a node's CA certificate (PEM)",
            {"errors": [{"loc": ["body", "identity_certificate"], "msg": "invalid"}]},
        )
    return fingerprint(certificate)


def hello(db: Session, node: Node, message: NodeHello) -> Node:
    """A node agent starting. Its identity is registered at the first hello that carries one
    with the node's one-time enrolment token (403 without it); a later hello with another
    identity is refused (409) until an administrator resets it and issues a new token: the
    API key alone can neither register nor swap the key the coordinator shows. A hello that
    changes nothing (a retry after a lost reply, or a reconnect) records nothing: the audit log's
    `node.hello` entries are the versions and policies the node published, each once in a row."""
    identity: dict[str, Any] = {}
    if message.identity_certificate is not None:
        fp = _identity(message.identity_certificate)
        if node.identity_fingerprint is None:
            refusal = _enrolment_refusal(db, node, message.enrolment_token)
            if refusal is not None:
                audit.record(
                    db, f"node:{node.name}", "node.identity_refused", f"node:{node.name}", key=fp
                )
                db.commit()  # the refusal stays on record
                raise Forbidden(
                    f"node {node.name} cannot register its key {fp}: {refusal}",
                    {"presented": fp},
                )
            node.identity_certificate = message.identity_certificate
            node.identity_fingerprint = fp
            node.enrolment_token_hash = node.enrolment_expires_at = None  # used: once
            identity = {"identity_registered": fp}
        elif node.identity_fingerprint != fp:
            raise Conflict(
                f"node {node.name} is registered with identity {node.identity_fingerprint}, "
                f"not {fp}; if its key was replaced on purpose, an administrator resets it "
                f"(POST /nodes/{node.id}/reset-identity) and every peer hospital trusts the "
                "new fingerprint",
                {"registered": node.identity_fingerprint, "presented": fp},
            )
    policy = message.policy.model_dump()
    if not identity and (node.agent_version, node.policy) == (message.agent_version, policy):
        return node  # the same hello again (a retry, a reconnect): nothing new to record
    node.agent_version = message.agent_version
    node.policy = policy
    audit.record(
        db,
        f"node:{node.name}",
        "node.hello",
        f"node:{node.name}",
        agent_version=message.agent_version,
        policy=node.policy,
        **identity,
    )
    return node


def reset_identity(db: Session, node_id: int, actor: str) -> Node:
    """Forget a node's registered identity; its next hello with the new enrolment token
    (`issue_enrolment`) registers the one it shows."""
    node = db.get(Node, node_id)
    if node is None:
        raise NotFound(f"no node {node_id}", {"node_id": node_id})
    previous = node.identity_fingerprint
    node.identity_certificate = node.identity_fingerprint = None
    audit.record(db, actor, "node.identity_reset", f"node:{node.name}", previous=previous)
    return node


def register_dataset(db: Session, node: Node, name: str, schema: DatasetSchema) -> Dataset:
    """Register or replace a node's declared schema for a dataset (columns, never rows)."""
    dataset = db.scalars(
        select(Dataset).where(Dataset.node_id == node.id, Dataset.name == name)
    ).first()
    body = schema.model_dump(mode="json", exclude_none=True)
    if dataset is None:
        dataset = Dataset(node_id=node.id, name=name, schema=body)
        db.add(dataset)
    elif dataset.schema == body:
        return dataset
    else:
        dataset.schema = body
    db.flush()
    audit.record(
        db,
        f"node:{node.name}",
        "dataset.registered",
        f"dataset:{name}",
        columns=[c.name for c in schema.columns],
    )
    return dataset
