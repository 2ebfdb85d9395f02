"""The node's own append-only, hash-chained audit log (`work_dir/audit.jsonl`).

One JSON line per decision: a task received, refused, accepted, its result opened, or failed.
Each line carries `at`, `action`, `outcome`, the task and query ids, the statistic and dataset,
`prev_hash` and `hash` = SHA-256 of the previous hash and the line's other fields (canonical
JSON). Editing, reordering or deleting a line breaks the chain at that line; `verify` finds it.
(Cutting lines off the end leaves a valid, shorter chain: compare `entries` and the last hash
with a copy kept elsewhere to detect that.) Lines hold no data values, summaries or secrets.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tessera.errors import ConfigInvalid

GENESIS = "0" * 64


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify(path: Path) -> Verification:
    """Walk the chain from the start; the first line that does not chain is reported."""
    prev, count = GENESIS, 0
    if not path.exists():
        return Verification(True, 0, GENESIS)
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                stored_prev, stored = entry.pop("prev_hash"), entry.pop("hash")
            except (ValueError, KeyError, AttributeError, TypeError):
                return Verification(False, count, prev, number, "not a complete audit entry")
            if stored_prev != prev:
                return Verification(
                    False, count, prev, number, "prev_hash does not match the line before"
                )
            if stored != _digest(prev, entry):
                return Verification(False, count, prev, number, "hash does not match its content")
            prev, count = stored, count + 1
    return Verification(True, count, prev)


class AuditLog:
    """Appends chained entries; thread-safe within one agent (one agent per `work_dir`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
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
        self.entries = check.entries

    @property
    def last_hash(self) -> str:
        return self._last

    def record(self, action: str, outcome: str, **fields: Any) -> str:
        """Append one entry; returns its hash."""
        with self._lock:
            entry: dict[str, Any] = {
                "at": datetime.now(UTC).isoformat(),
                "action": action,
                "outcome": outcome,
                **{k: v for k, v in fields.items() if v is not None},
            }
            entry = json.loads(json.dumps(entry, default=str))
            digest = _digest(self._last, entry)
            line = json.dumps({**entry, "prev_hash": self._last, "hash": digest})
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
            self._last = digest
            self.entries += 1
            return digest
