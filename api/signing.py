"""The coordinator's signing key (Ed25519): it signs every audit event's chain hash and every
task it sends, so that nodes and auditors holding only its public key (pinned by fingerprint)
can tell the coordinator's word from anyone else's.

The key comes from `signing_key_file` (PEM, PKCS#8), or is created on first start, mode 0600,
beside the SQLite database file (the working directory for other databases). Production
requires `signing_key_file` explicitly: every replica must sign with the same key. An in-memory
database (tests) gets a key that lives as long as the process, like the database.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from tessera.errors import ConfigInvalid
from tessera.signing import (
    audit_message,
    b64,
    public_key_fingerprint,
    statement_message,
    synthesis_message,
)

KEY_FILE = "coordinator_signing_key.pem"

log = logging.getLogger("tessera.coordinator")


class CoordinatorKey:
    """The private key in memory; `sign` answers base64 signatures."""

    def __init__(self, private_key: Any, path: Path | None = None) -> None:
        from cryptography.hazmat.primitives import serialization

        self._key = private_key
        self.path = path
        self.public_pem = (
            private_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        self.fingerprint = public_key_fingerprint(self.public_pem)

    @classmethod
    def generate(cls) -> CoordinatorKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: str, path: Path | None = None) -> CoordinatorKey:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        where = f"{path}" if path else "the signing key"
        try:
            key = serialization.load_pem_private_key(pem.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigInvalid(f"{where} is not a PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigInvalid(f"{where} is not an Ed25519 key")
        return cls(key, path)

    @classmethod
    def load(cls, path: Path) -> CoordinatorKey:
        try:
            mode = path.stat().st_mode & 0o007  # a group (a Kubernetes secret's fsGroup) may
            pem = path.read_text()
        except OSError as exc:
            raise ConfigInvalid(f"signing key {path} cannot be read: {exc.strerror}") from None
        if mode:
            raise ConfigInvalid(
                f"signing key {path} is readable by others ({oct(mode)}): chmod it 600"
            )
        return cls.from_pem(pem, path)

    @classmethod
    def load_or_create(cls, path: Path) -> CoordinatorKey:
        """The key at `path`, or a new one written there (atomically: of two processes starting
        at once, one creates it and both use it)."""
        if path.exists():
            return cls.load(path)
        from cryptography.hazmat.primitives import serialization

        made = cls.generate()
        pem = made._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".signing-")
            with os.fdopen(fd, "w") as f:  # mkstemp makes it 0600
                f.write(pem)
            try:
                os.link(tmp, path)  # fails if another process made it first
            except FileExistsError:
                return cls.load(path)
            finally:
                os.unlink(tmp)
        except OSError as exc:
            raise ConfigInvalid(f"cannot create the signing key {path}: {exc.strerror}") from None
        log.info(
            "created the coordinator's signing key %s (fingerprint %s): back it up; nodes pin it",
            path,
            made.fingerprint,
            extra={"event": "signing_key.created", "fields": {"fingerprint": made.fingerprint}},
        )
        return cls(made._key, path)

    @classmethod
    def for_settings(cls, key_file: Path | None, database_url: str) -> CoordinatorKey:
        """The configured key, or the default one for this database (see the module)."""
        if key_file is not None:
            return cls.load(key_file)
        path = default_key_path(database_url)
        if path is None:
            return cls.generate()
        return cls.load_or_create(path)

    def sign(self, message: bytes) -> str:
        return b64(self._key.sign(message))

    def sign_audit(self, chain_hash: str) -> str:
        return self.sign(audit_message(chain_hash))

    def sign_statement(self, statement: dict[str, Any]) -> str:
        return self.sign(statement_message(statement))

    def sign_synthesis(self, statement: dict[str, Any]) -> str:
        return self.sign(synthesis_message(statement))


def default_key_path(database_url: str) -> Path | None:
    """Beside a SQLite database file; in the working directory for other databases; None for
    an in-memory database."""
    from api.db import is_in_memory

    if is_in_memory(database_url):
        return None
    if database_url.startswith("sqlite"):
        file = database_url.split("?")[0].split("://", 1)[1].removeprefix("/")
        return Path(file).resolve().parent / KEY_FILE
    return Path.cwd() / KEY_FILE
