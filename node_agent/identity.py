"""The node's long-term identity, and the peers its hospital trusts.

`tessera node init` makes the node's identity once: a P-256 key and a self-signed CA
certificate naming the node, under `work_dir/identity/` (the key file mode 0600). The key never
leaves the node agent's process: it signs each protocol run's TLS certificate
(`smpc.tls.issue_run_identity`), the node's audit entries, and nothing else. Its *fingerprint*
(SHA-256 of the public key, `sha256:` and 64 hex digits) is what hospitals compare out of band.

`TrustedPeers` (`work_dir/identity/trusted_peers.json`, written by `tessera node trust`) is the
hospital's own list of the nodes it computes with, by name and fingerprint. A run is refused
unless every other party's identity is on it (`node_agent.agent`), whatever the coordinator
relays: the coordinator cannot substitute or add a party.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tessera.errors import ConfigInvalid, InvalidRequest
from tessera.fingerprints import PATTERN as FINGERPRINT
from tessera.fingerprints import fingerprint, normalise

KEY_FILE = "node_key.pem"
CERT_FILE = "node_cert.pem"
TRUST_FILE = "trusted_peers.json"
VALID_YEARS = 10


def identity_dir(work_dir: Path) -> Path:
    return work_dir / "identity"


@dataclass(frozen=True)
class NodeIdentity:
    """The node's long-term key (in memory) and its self-signed CA certificate."""

    name: str
    key_pem: str
    certificate_pem: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate_pem)

    @classmethod
    def create(cls, work_dir: Path, name: str) -> NodeIdentity:
        """Make the identity; refuse if one exists (a new key is a new node to its peers)."""
        from smpc.tls import new_authority

        folder = identity_dir(work_dir)
        if (folder / KEY_FILE).exists():
            raise ConfigInvalid(
                f"node {name} already has an identity in {folder} (its peers trust that key; "
                "to replace it, move the folder away and have every peer trust the new one)"
            )
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_pem, cert_pem = new_authority(f"Tessera node {name}", days=365 * VALID_YEARS)
        _write_private(folder / KEY_FILE, key_pem)
        (folder / CERT_FILE).write_text(cert_pem)
        return cls(name, key_pem, cert_pem)

    @classmethod
    def load(cls, work_dir: Path, name: str) -> NodeIdentity:
        folder = identity_dir(work_dir)
        try:
            key_pem = (folder / KEY_FILE).read_text()
            cert_pem = (folder / CERT_FILE).read_text()
        except FileNotFoundError:
            raise ConfigInvalid(
                f"node {name} has no identity in {folder}: run `tessera node init --config "
                "FILE` once, then have its peers trust the fingerprint it prints"
            ) from None
        mode = (folder / KEY_FILE).stat().st_mode & 0o077
        if mode:
            raise ConfigInvalid(
                f"{folder / KEY_FILE} is readable by others (mode {oct(mode)}): chmod 600 it"
            )
        identity = cls(name, key_pem, cert_pem)
        identity.private_key()  # a damaged file fails here, with the path
        return identity

    @classmethod
    def exists(cls, work_dir: Path) -> bool:
        return (identity_dir(work_dir) / KEY_FILE).exists()

    def private_key(self) -> Any:
        from cryptography.hazmat.primitives import serialization

        try:
            return serialization.load_pem_private_key(self.key_pem.encode(), password=None)
        except ValueError as exc:
            raise ConfigInvalid(f"node {self.name}'s identity key cannot be read: {exc}") from None

    def sign(self, data: bytes) -> bytes:
        """ECDSA P-256 / SHA-256 signature (DER) by the node's long-term key."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        signature: bytes = self.private_key().sign(data, ec.ECDSA(hashes.SHA256()))
        return signature


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


class TrustedPeers:
    """The hospital's list of peer nodes (name → fingerprint), read afresh at every run, so a
    `tessera node trust` takes effect at the next query without a restart."""

    def __init__(self, work_dir: Path) -> None:
        self.path = identity_dir(work_dir) / TRUST_FILE

    def read(self) -> dict[str, str]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise ConfigInvalid(f"{self.path} is not valid JSON: {exc}") from None
        peers = raw.get("peers", {}) if isinstance(raw, dict) else None
        if not isinstance(peers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and FINGERPRINT.match(v)
            for k, v in peers.items()
        ):
            raise ConfigInvalid(f"{self.path} must hold {{'peers': {{name: 'sha256:...'}}}}")
        return dict(peers)

    def trust(self, name: str, fp: str) -> dict[str, str]:
        """Add (or replace) one peer; written atomically."""
        if not name or len(name) > 64:
            raise InvalidRequest("a peer's node name has 1 to 64 characters")
        peers = self.read()
        peers[name] = normalise(fp)
        self._write(peers)
        return peers

    def distrust(self, name: str) -> dict[str, str]:
        peers = self.read()
        if name not in peers:
            raise InvalidRequest(f"{name!r} is not a trusted peer (trusted: {', '.join(peers)})")
        del peers[name]
        self._write(peers)
        return peers

    def _write(self, peers: dict[str, str]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        body = json.dumps({"peers": dict(sorted(peers.items()))}, indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".trusted-")
        with os.fdopen(fd, "w") as f:
            f.write(body)
        os.replace(tmp, self.path)
