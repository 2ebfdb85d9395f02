"""What the coordinator signs, and how anyone checks it: the coordinator's Ed25519 key by its
fingerprint, the signature of an audit chain head, and the signed statement of a task.

The coordinator holds the private key (`api.signing`); nodes and auditors hold only the public
key (pinned by fingerprint) and call the functions here. Every signed message starts with a
domain tag, so a signature made for one purpose is never valid for another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

AUDIT_EVENT = b"tessera-audit-event-v1\n"  # the coordinator signs an event's chain hash
NODE_AUDIT_ENTRY = b"tessera-node-audit-entry-v1\n"  # a node signs its log entry's hash
TASK_STATEMENT = b"tessera-task-statement-v1\n"  # the coordinator signs a task's statement
# ... and a synthesis job's (its own tag: a task's signature is never a job's)
SYNTHESIS_STATEMENT = b"tessera-synthesis-statement-v1\n"


def canonical(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, non-ASCII kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def utc_text(at: datetime) -> str:
    """One text per instant, whatever zone or backend it came through (naive means UTC)."""
    if at.tzinfo is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    return at.isoformat(timespec="microseconds")


def public_key_fingerprint(public_pem: str) -> str:
    """The fingerprint of a public key in PEM (`tessera.fingerprints.of_key`), as nodes pin
    it."""
    from cryptography.hazmat.primitives import serialization

    from tessera.fingerprints import of_key

    return of_key(serialization.load_pem_public_key(public_pem.encode()))


def b64(signature: bytes) -> str:
    return base64.b64encode(signature).decode("ascii")


def unb64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None


def verify_ed25519(public_pem: str, message: bytes, signature: str | None) -> bool:
    """Whether `signature` (base64) is the Ed25519 signature of `message` by this key."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    raw = unb64(signature) if signature else None
    if raw is None:
        return False
    key = serialization.load_pem_public_key(public_pem.encode())
    if not isinstance(key, Ed25519PublicKey):
        return False
    try:
        key.verify(raw, message)
    except InvalidSignature:
        return False
    return True


def verify_ecdsa(certificate_pem: str, data: bytes, signature: bytes) -> bool:
    """Whether `signature` is the ECDSA P-256/SHA-256 signature of `data` by the key of
    `certificate_pem` (a node's long-term certificate)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        public = x509.load_pem_x509_certificate(certificate_pem.encode()).public_key()
    except ValueError:
        return False
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return False
    try:
        public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def audit_message(chain_hash: str) -> bytes:
    return AUDIT_EVENT + chain_hash.encode("ascii")


def node_audit_message(entry_hash: str) -> bytes:
    return NODE_AUDIT_ENTRY + entry_hash.encode("ascii")


def task_statement(
    *,
    query_id: int,
    task_id: int,
    party_id: int,
    n_parties: int,
    study_id: int | None,
    dataset: str,
    query: dict[str, Any],
    researcher_id: int | None,
    researcher: str | None,
    submitted_at: datetime | None,
    deadline: datetime,
) -> dict[str, Any]:
    """What the coordinator vouches for when it sends a task: who asked (the researcher it
    authenticated), in which study, for which query, and the task's place in the run."""
    return {
        "query_id": query_id,
        "task_id": task_id,
        "party_id": party_id,
        "n_parties": n_parties,
        "study_id": study_id,
        "dataset": dataset,
        "query": json.loads(canonical(query)),
        "researcher_id": researcher_id,
        "researcher": researcher,
        "submitted_at": None if submitted_at is None else utc_text(submitted_at),
        "deadline": utc_text(deadline),
    }


def synthesis_statement(
    *,
    job_id: int,
    request_id: int,
    study_id: int,
    requested_by: str,
    spec: dict[str, Any],
    deadline: datetime,
    party_id: int | None,
    n_parties: int | None,
) -> dict[str, Any]:
    """What the coordinator vouches for when it offers a synthesis job: who asked, in which
    study, for what (the whole spec: generator, epsilon, rows, scope, ...), and for a pooled
    job this node's place among the parties."""
    return {
        "job_id": job_id,
        "request_id": request_id,
        "study_id": study_id,
        "requested_by": requested_by,
        "spec": json.loads(canonical(spec)),
        "deadline": utc_text(deadline),
        "party_id": party_id,
        "n_parties": n_parties,
    }


def synthesis_message(statement: dict[str, Any]) -> bytes:
    return SYNTHESIS_STATEMENT + canonical(statement).encode()


def statement_message(statement: dict[str, Any]) -> bytes:
    return TASK_STATEMENT + canonical(statement).encode()


def statement_hash(statement: dict[str, Any]) -> str:
    """SHA-256 (hex) of the signed message: what the `query.submitted` event and the node's
    `task.received` entry both record."""
    return hashlib.sha256(statement_message(statement)).hexdigest()


def parse_head(text: str | None) -> tuple[int, str, str] | None:
    """`"<seq>:<hash>:<signature>"` (an audit chain head in a header), or None if malformed."""
    if not text:
        return None
    parts = text.strip().split(":")
    if len(parts) != 3 or not parts[0].isdigit() or len(parts[1]) != 64:
        return None
    try:
        int(parts[1], 16)
    except ValueError:
        return None
    return int(parts[0]), parts[1], parts[2]


def format_head(seq: int, chain_hash: str, signature: str) -> str:
    return f"{seq}:{chain_hash}:{signature}"
