"""The node's own append-only, hash-chained audit log (`work_dir/audit.jsonl`).

One JSON line per decision: a task received, refused, accepted, its result opened, or failed.
Each line carries `at`, `action`, `outcome`, the task and query ids, the statistic and dataset,
`prev_hash` and `hash` = SHA-256 of the previous hash and the line's other fields (canonical
JSON), and `sig`: the node's long-term key's signature of that hash (`node_agent.identity`).
Editing, reordering or deleting a line breaks the chain at that line; `verify` finds it, and,
given the node's certificate, checks every signature, so a rewrite needs the node's key.

Whoever holds the key (the node's operator) could still rewrite and re-sign the log, or cut
lines off its end. The coordinator keeps the signed head (`entries`, last hash, its `sig`)
that the node sends with every poll, and `tessera audit verify` checks that the log still has
that hash at that position. The node in turn records the coordinator's signed chain head when
it changes (`coordinator.head` entries), which catches a rewritten coordinator chain.

Entries written before the node had a key carry no `sig`; they may only open the log, and the
agent seals them under a signed `audit.signing_started` entry when it next starts. Lines hold
no data values, summaries or secrets.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tessera.errors import ConfigInvalid
from tessera.signing import b64, node_audit_message, unb64

if TYPE_CHECKING:
    from node_agent.identity import NodeIdentity

GENESIS = "0" * 64
CHAIN_FIELDS = ("prev_hash", "hash", "sig")  # not covered by the hash


def _digest(prev: str, fields: dict[str, Any]) -> str:
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev + body).encode()).hexdigest()


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    last_hash: str
    first_bad_line: int | None = None
    problem: str | None = None
    signed: int = 0  # entries whose signature was checked (0 without a certificate)
    legacy_unsigned: int = 0  # entries from before the node had a key
    last_sig: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_entries(path: Path) -> list[dict[str, Any]]:
    """Every line of the log as written (tolerates no torn line: verify first)."""
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def verify(path: Path, certificate_pem: str | None = None) -> Verification:
    """Walk the chain from the start; the first line that does not chain, or (given the node's
    certificate) whose signature is not the node key's, is reported."""
    from tessera.signing import verify_ecdsa as verify_signature

    prev, count, signed, legacy = GENESIS, 0, 0, 0
    sig: str | None = None
    if not path.exists():
        return Verification(True, 0, GENESIS)

    def bad(number: int, problem: str) -> Verification:
        return Verification(False, count, prev, number, problem, signed, legacy, sig)

    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                stored_prev, stored = entry.pop("prev_hash"), entry.pop("hash")
                entry_sig = entry.pop("sig", None)
            except (ValueError, KeyError, AttributeError, TypeError):
                return bad(number, "not a complete audit entry")
            if stored_prev != prev:
                return bad(number, "prev_hash does not match the line before")
            if stored != _digest(prev, entry):
                return bad(number, "hash does not match its content")
            if entry_sig is None:
                if signed or (certificate_pem is None and sig is not None):
                    return bad(number, "unsigned, after signing began")
                legacy += 1
            elif certificate_pem is not None:
                raw = unb64(entry_sig) if isinstance(entry_sig, str) else None
                if raw is None or not verify_signature(
                    certificate_pem, node_audit_message(stored), raw
                ):
                    return bad(number, "signature is not the node key's")
                signed += 1
            prev, count, sig = stored, count + 1, entry_sig
    if certificate_pem is not None and count and sig is None:
        return bad(count, "the log ends with unsigned entries (start the agent once to seal them)")
    return Verification(True, count, prev, None, None, signed, legacy, sig)


class AuditLog:
    """Appends chained entries; thread-safe within one agent (one agent per `work_dir`)."""

    def __init__(self, path: Path, identity: NodeIdentity | None = None) -> None:
        self.path = path
        self.identity = identity
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        check = verify(path)
        if not check.ok:
            raise ConfigInvalid(
                f"audit log {path} fails verification at line {check.first_bad_line} "
                f"({check.problem}); keep it as evidence, move it aside, and start again",
                {"path": str(path), "line": check.first_bad_line},
            )
        self._last = check.last_hash
        self._last_sig = check.last_sig
        self.entries = check.entries
        if identity is not None and self.entries and self._last_sig is None:
            self.record("audit.signing_started", "signed", legacy_entries=self.entries)

    @property
    def last_hash(self) -> str:
        return self._last

    def head(self) -> tuple[int, str, str] | None:
        """`(entries, last hash, its signature)`, what the node sends the coordinator; None
        while the log is empty or its last entry unsigned."""
        with self._lock:
            if not self.entries or self._last_sig is None:
                return None
            return self.entries, self._last, self._last_sig

    def record(self, action: str, outcome: str, **fields: Any) -> str:
        """Append one entry; returns its hash."""
        clash = set(CHAIN_FIELDS) & set(fields)
        if clash:
            raise ValueError(f"audit fields {sorted(clash)} are the chain's own")
        with self._lock:
            entry: dict[str, Any] = {
                "at": datetime.now(UTC).isoformat(),
                "action": action,
                "outcome": outcome,
                **{k: v for k, v in fields.items() if v is not None},
            }
            entry = json.loads(json.dumps(entry, default=str))
            digest = _digest(self._last, entry)
            chained: dict[str, Any] = {**entry, "prev_hash": self._last, "hash": digest}
            sig = None
            if self.identity is not None:
                sig = b64(self.identity.sign(node_audit_message(digest)))
                chained["sig"] = sig
            line = json.dumps(chained)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
            self._last, self._last_sig = digest, sig
            self.entries += 1
            return digest
