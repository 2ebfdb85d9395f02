"""Which coordinator key the node believes: pinned by fingerprint in the node's configuration
(`coordinator_key`), or trusted on first use and kept in `work_dir/identity/coordinator_key.pem`.

With that key the node checks every task's signed statement (who asked, for what) and every
coordinator audit chain head it records. A key that changes later is refused at once
(`ConfigInvalid`): a coordinator whose key changed must be re-pinned by the node's operator,
after checking with the coordinator's operator, by setting `coordinator_key` (or removing the
kept file).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from node_agent.identity import identity_dir
from tessera.errors import ConfigInvalid
from tessera.fingerprints import grouped
from tessera.signing import public_key_fingerprint

KEY_FILE = "coordinator_key.pem"


def pinned_path(work_dir: Path) -> Path:
    return identity_dir(work_dir) / KEY_FILE


def kept(work_dir: Path) -> str | None:
    """The coordinator key the node kept (PEM), if any."""
    try:
        return pinned_path(work_dir).read_text()
    except FileNotFoundError:
        return None


def pin(work_dir: Path, offered_pem: str, configured: str | None) -> str:
    """The key to believe, given the one the coordinator offers now: it must match the
    configured fingerprint, or else the kept key (kept now if there is none)."""
    try:
        offered = public_key_fingerprint(offered_pem)
    except (ValueError, TypeError):
        raise ConfigInvalid("the coordinator's signing key is not a PEM public key") from None
    path = pinned_path(work_dir)
    if configured is not None:
        if offered != configured:
            raise ConfigInvalid(
                f"the coordinator signs with key {grouped(offered)}, not the configured "
                f"coordinator_key {grouped(configured)}: refusing to work for it",
                {"offered": offered, "configured": configured},
            )
        _keep(path, offered_pem)
        return offered_pem
    known = kept(work_dir)
    if known is None:
        _keep(path, offered_pem)
        return offered_pem
    was = public_key_fingerprint(known)
    if was != offered:
        raise ConfigInvalid(
            f"the coordinator's signing key changed: it was {grouped(was)} ({path}), it is now "
            f"{grouped(offered)}; refusing to work for it. If its operator confirms the new "
            "key, set coordinator_key to it (or remove that file)",
            {"kept": was, "offered": offered, "path": str(path)},
        )
    return known


def _keep(path: Path, pem: str) -> None:
    if path.exists() and path.read_text() == pem:
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".coordinator-key-")
    with os.fdopen(fd, "w") as f:
        f.write(pem)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
