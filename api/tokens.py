"""Bearer tokens for users: the signing key, the coordinator's own access tokens, and the
`TokenVerifier` seam that another kind of token (OIDC, later) plugs into.

The signing key is never in the source. It is `jwt_secret`, or the contents of
`jwt_secret_file`, or else a random key created on the first start in the data directory
(`jwt-signing.key`, mode 0600, refused if others may read it) and read on every later start.
Replicas on one database must share it: production requires it from configuration.

An access token is a short-lived HS256 JWT: `iss`, `sub` (the user id), `sid` (the login
session), `jti`, `iat`, `exp`, `typ` = `access`; a token missing any of them is refused. It is
good only while its session is live and its user enabled: each request reads both from the
database, so a logout, a password change or a disabled user takes effect at once on every
replica.
"""

from __future__ import annotations

import os
import secrets
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import jwt
from sqlalchemy.orm import Session

from api.models import User
from api.services import accounts
from api.settings import MIN_JWT_SECRET, CoordinatorSettings
from tessera.errors import ConfigInvalid, Unauthorized

ISSUER = "tessera-coordinator"
ALGORITHM = "HS256"
KEY_FILE = "jwt-signing.key"
REQUIRED_CLAIMS = ["iss", "sub", "sid", "jti", "iat", "exp"]


class TokenVerifier(Protocol):
    """One kind of bearer token a user may present."""

    def recognises(self, token: str) -> bool:
        """Whether the token is of this kind (from its unverified header and claims)."""
        ...

    def user(self, db: Session, token: str) -> User:
        """The token's user, or `Unauthorized`."""
        ...


def signing_key(settings: CoordinatorSettings) -> str:
    """The key that signs access tokens (see the module's docstring)."""
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value()
    if settings.jwt_secret_file is not None:
        return _read_key(settings.jwt_secret_file)
    path = settings.resolved_data_dir() / KEY_FILE
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it a moment ago
        return _read_key(path)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(48) + "\n")
    return _read_key(path)


def _read_key(path: Path) -> str:
    mode = path.stat().st_mode  # FileNotFoundError goes to the caller
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigInvalid(
            f"the JWT signing key file {path} may be read by other users: chmod 600 it"
        )
    key = path.read_text().strip()
    if len(key) < MIN_JWT_SECRET:
        raise ConfigInvalid(
            f"the JWT signing key in {path} is shorter than {MIN_JWT_SECRET} characters"
        )
    return key


class LocalTokens:
    """The access tokens this coordinator signs."""

    def __init__(self, key: str, ttl_s: int) -> None:
        self._key = key
        self.ttl_s = ttl_s

    def __repr__(self) -> str:
        return f"LocalTokens(ttl_s={self.ttl_s})"  # never the key

    def issue(self, user_id: int, session_id: str) -> str:
        now = datetime.now(UTC)
        claims = {
            "iss": ISSUER,
            "sub": str(user_id),
            "sid": session_id,
            "jti": secrets.token_hex(16),
            "iat": now,
            "exp": now + timedelta(seconds=self.ttl_s),
            "typ": "access",
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def recognises(self, token: str) -> bool:
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            return False
        return header.get("alg") == ALGORITHM and claims.get("iss") == ISSUER

    def claims(self, token: str) -> dict[str, Any]:
        """The verified claims, or `Unauthorized`."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the access token has expired; refresh it or log in again") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("invalid access token") from None
        if claims.get("typ") != "access" or not str(claims["sub"]).isdigit():
            raise Unauthorized("invalid access token")
        return claims

    def user(self, db: Session, token: str) -> User:
        claims = self.claims(token)
        return accounts.session_user(db, str(claims["sid"]), int(claims["sub"]))


def verify(verifiers: list[TokenVerifier], db: Session, token: str) -> User:
    """The user of a bearer token: the first verifier that recognises it decides."""
    for verifier in verifiers:
        if verifier.recognises(token):
            return verifier.user(db, token)
    raise Unauthorized("invalid access token")
