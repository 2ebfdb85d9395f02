"""The node's own append-only, hash-chained audit log (`work_dir/audit.jsonl`).

One JSON line per decision (task received, refused, accepted, result opened, failed). Each
line's hash covers the previous hash and the line's fields, so an edit or a deleted line is
detected by `verify`. Lines hold no data values, summaries or secrets.
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def _digest(prev: str, fields: dict[str, Any]) -> str:
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev + body).encode()).hexdigest()


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._last = self._tail_hash()

    def _tail_hash(self) -> str:
        if not self.path.exists():
            return GENESIS
        last = GENESIS
        with self.path.open() as f:
            for line in f:
                if line.strip():
                    last = json.loads(line)["hash"]
        return last

    def record(self, action: str, **fields: Any) -> None:
        with self._lock:
            entry = {"at": datetime.now(UTC).isoformat(), "action": action, **fields}
            entry = json.loads(json.dumps(entry, default=str))
            digest = _digest(self._last, entry)
            line = json.dumps({**entry, "prev_hash": self._last, "hash": digest})
            with self.path.open("a") as f:
                f.write(line + "\n")
            self._last = digest


def verify(path: Path) -> dict[str, Any]:
    prev, count = GENESIS, 0
    if not path.exists():
        return {"ok": True, "entries": 0, "first_bad_line": None}
    with path.open() as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                stored_prev, stored = entry.pop("prev_hash"), entry.pop("hash")
            except (ValueError, KeyError):
                return {"ok": False, "entries": count, "first_bad_line": number}
            if stored_prev != prev or stored != _digest(prev, entry):
                return {"ok": False, "entries": count, "first_bad_line": number}
            prev, count = stored, count + 1
    return {"ok": True, "entries": count, "first_bad_line": None}
