"""Data stewards' keys and their signed decisions on a synthetic release.

A steward is a person with an Ed25519 key pair (`tessera steward keygen`). The node's policy
lists each steward's public half by name (`[policy.synthesis.stewards]`, `ada =
"ed25519:<base64>"`), the node publishes that list to the coordinator at every hello, and a
decision counts only as a signature by a listed key over one canonical statement:

    {"type": "tessera.steward-decision.v1", "node", "job_id", "steward", "key", "decision",
     "at", "reason", "data_sha256", "card_sha256", "report_sha256"}

(canonical JSON: keys sorted, no spaces, ASCII). `data_sha256` is the SHA-256 of the exact
Parquet bytes to be uploaded, `report_sha256` of the HTML report the steward read, and
`card_sha256` of the release card without its approvals (`card_sha256` below). The node checks
each signature before counting it and re-hashes what it uploads; the coordinator checks the
same against the keys the node published. One key counts once, under whatever names.

This module is pure: the key files are written and read by the CLI.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tessera.fingerprints import of_key

PREFIX = "ed25519:"
STATEMENT_TYPE = "tessera.steward-decision.v1"


class KeyInvalid(ValueError):
    """A public key's text form, or a signature's, does not parse."""


def public_key_text(key: Ed25519PublicKey) -> str:
    """The one-line text form of a public key: `ed25519:` and the 32 raw bytes in base64."""
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return PREFIX + base64.b64encode(raw).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A public key from its text form; `KeyInvalid` saying why not."""
    if not isinstance(text, str) or not text.startswith(PREFIX):
        raise KeyInvalid(f"a steward's public key is {PREFIX}<base64>, not {str(text)[:40]!r}")
    try:
        raw = base64.b64decode(text[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise KeyInvalid("a steward's public key is not valid base64") from None
    if len(raw) != 32:
        raise KeyInvalid(f"an Ed25519 public key has 32 bytes, not {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def normal_key(text: str) -> str:
    """The canonical text form of a public key (so that one key is one string)."""
    return public_key_text(parse_public_key(text))


def fingerprint(text: str) -> str:
    """A stable name of a public key for people to compare out of band, in the one form of
    every key's fingerprint (`tessera.fingerprints.of_key`)."""
    return of_key(parse_public_key(text))


def canonical_json(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def card_sha256(card: Mapping[str, Any]) -> str:
    """The hash a steward signs of a release card: canonical JSON of the card as the
    coordinator will read it (JSON types), without its `approvals`.

    Callers pass a card in its JSON form (`json.loads(model.model_dump_json())` of a
    `tessera.schemas.ReleaseContent`), so that node and coordinator hash the same bytes."""
    return hashlib.sha256(
        canonical_json({k: v for k, v in card.items() if k != "approvals"})
    ).hexdigest()


def timestamp(at: datetime) -> str:
    """A decision's time as signed: UTC, ISO 8601, microseconds."""
    if at.tzinfo is None:
        raise KeyInvalid("a decision's time must carry its time zone")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def statement(
    *,
    node: str,
    job_id: int,
    steward: str,
    key: str,
    decision: str,
    at: datetime,
    reason: str,
    data_sha256: str,
    card_sha256: str,
    report_sha256: str,
) -> bytes:
    """The exact bytes a steward signs for one decision on one candidate."""
    return canonical_json(
        {
            "type": STATEMENT_TYPE,
            "node": node,
            "job_id": int(job_id),
            "steward": steward,
            "key": normal_key(key),
            "decision": decision,
            "at": timestamp(at),
            "reason": reason,
            "data_sha256": data_sha256,
            "card_sha256": card_sha256,
            "report_sha256": report_sha256,
        }
    )


def sign(private: Ed25519PrivateKey, message: bytes) -> str:
    return base64.b64encode(private.sign(message)).decode()


def verify(key: str, signature: str, message: bytes) -> bool:
    """Whether `signature` (base64) is `key`'s over `message`; False for any malformed part."""
    try:
        raw = base64.b64decode(signature, validate=True)
        parse_public_key(key).verify(raw, message)
    except (InvalidSignature, KeyInvalid, binascii.Error, ValueError):
        return False
    return True


def signature_refusal(
    steward: str,
    key: str,
    signature: str,
    *,
    node: str,
    stewards: Mapping[str, str],
    statement: Callable[[], bytes],
    not_listed_key: Callable[[str], str],
) -> str | None:
    """Why a steward's signed decision does not count, or None: the steward must be listed in
    `stewards` (name -> public key) with the key the decision names, and the signature be
    that key's over `statement()` (built inside the check, so a field that does not parse is
    a refusal). `not_listed_key(listed)` says what the named key is not. The one rule of every
    steward decision: on a release (`decision_refusal`) and on a held query
    (`node_agent.query_approval`)."""
    listed = stewards.get(steward)
    if listed is None:
        return f"{steward!r} is not a steward of node {node}"
    try:
        if normal_key(key) != normal_key(listed):
            return f"{steward!r} signed with key {fingerprint(key)}, not {not_listed_key(listed)}"
        message = statement()
    except KeyInvalid as exc:
        return f"{steward!r}'s decision does not parse: {exc}"
    if not verify(listed, signature, message):
        return f"{steward!r}'s signature does not verify with their key"
    return None


def decision_refusal(
    decision: Any,
    *,
    node: str,
    job_id: int,
    stewards: Mapping[str, str],
    hashes: Mapping[str, str] | None = None,
) -> str | None:
    """Why one signed decision (a `tessera.schemas.StewardDecision`) does not count, or None.

    It counts when its steward is listed in `stewards` (name -> public key) with the key it
    names, and its signature is that key's over the statement of its fields for this node and
    job. With `hashes` (`data_sha256`, `card_sha256`, `report_sha256` of what is uploaded now),
    it must also have signed exactly those. The one statement of the rule: the node applies it
    to its own policy, the coordinator to the keys the node published."""
    refusal = signature_refusal(
        decision.steward,
        decision.key,
        decision.signature,
        node=node,
        stewards=stewards,
        statement=lambda: statement(
            node=node,
            job_id=job_id,
            steward=decision.steward,
            key=decision.key,
            decision=decision.decision,
            at=decision.at,
            reason=decision.reason,
            data_sha256=decision.data_sha256,
            card_sha256=decision.card_sha256,
            report_sha256=decision.report_sha256,
        ),
        not_listed_key=lambda listed: f"the key node {node} lists for them ({fingerprint(listed)})",
    )
    if refusal is not None:
        return refusal
    for field, value in (hashes or {}).items():
        if getattr(decision, field) != value:
            what = field.removesuffix("_sha256")
            return (
                f"{decision.steward!r} signed other {what} than this candidate's "
                f"({what} changed after their decision)"
            )
    return None


def distinct_keys(decisions: Iterable[Any]) -> list[Any]:
    """The decisions that count once each: the first of every key (one key counts once,
    whatever names it signs under)."""
    seen: set[str] = set()
    out = []
    for d in decisions:
        k = normal_key(d.key)
        if k not in seen:
            seen.add(k)
            out.append(d)
    return out


def signed_decision(
    private: Ed25519PrivateKey,
    *,
    node: str,
    job_id: int,
    steward: str,
    decision: str,
    hashes: Mapping[str, str],
    reason: str = "",
    at: datetime | None = None,
) -> Any:
    """A `tessera.schemas.StewardDecision` signed with `private` over `hashes`
    (`data_sha256`, `card_sha256`, `report_sha256` of the candidate as the steward saw it)."""
    from tessera.schemas import StewardDecision

    key = public_key_text(private.public_key())
    at = at or datetime.now(UTC)
    signed = {k: hashes[k] for k in ("data_sha256", "card_sha256", "report_sha256")}
    message = statement(
        node=node,
        job_id=job_id,
        steward=steward,
        key=key,
        decision=decision,
        at=at,
        reason=reason,
        **signed,
    )
    return StewardDecision(
        steward=steward,
        decision=decision,
        at=at,
        reason=reason,
        key=key,
        **signed,
        signature=sign(private, message),
    )


# ---- query approvals (a node's policy `approval = "manual"`) -------------------------------

QUERY_STATEMENT_TYPE = "tessera.query-decision.v1"


def query_shape(query: Any) -> dict[str, Any]:
    """What a steward approves of a query when they approve its shape: the statistic, the
    dataset, the statistic's own columns (in their roles' order), the grouping columns and the
    columns filtered on, never a constant (`where` values, `q`, `bins`, `min_count`, `dp`).
    `query` is a compiled query (`smpc.query.QueryBase`)."""
    return {
        "statistic": query.statistic,
        "dataset": query.dataset,
        "columns": list(query.statistic_columns()),
        "group_by": list(query.group_by),
        "where": sorted({c.column for c in query.where}),
    }


def digest(value: Any) -> str:
    """SHA-256 of a value's canonical JSON."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def query_statement(
    *,
    node: str,
    task_id: int,
    query_sha256: str,
    shape_sha256: str,
    steward: str,
    key: str,
    decision: str,
    remember: bool,
    at: datetime,
    reason: str,
) -> bytes:
    """The exact bytes a steward signs to approve or reject one held query (and, with
    `remember`, every later query of the same shape at this node)."""
    return canonical_json(
        {
            "type": QUERY_STATEMENT_TYPE,
            "node": node,
            "task_id": int(task_id),
            "query_sha256": query_sha256,
            "shape_sha256": shape_sha256,
            "steward": steward,
            "key": normal_key(key),
            "decision": decision,
            "remember": bool(remember),
            "at": timestamp(at),
            "reason": reason,
        }
    )
