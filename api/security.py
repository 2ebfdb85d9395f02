"""Credentials: argon2 password hashes, JWT access tokens, node API keys.

Node API keys are 32 random bytes, so a single SHA-256 is the right hash for them (argon2's
cost protects low-entropy passwords, not random tokens); they are stored hashed and compared in
constant time. A key reads `tn_<key id>.<secret>`: the id finds the row, the secret proves it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from tessera.errors import Unauthorized

_hasher = PasswordHasher()
KEY_PREFIX = "tn_"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


@functools.cache
def dummy_hash() -> str:
    """A hash to verify against when the user does not exist (same time as a wrong password)."""
    return _hasher.hash(secrets.token_urlsafe(16))


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def issue_token(user_id: int, secret: str, ttl_s: int) -> str:
    now = datetime.now(UTC)
    claims = {"sub": str(user_id), "iat": now, "exp": now + timedelta(seconds=ttl_s), "typ": "user"}
    return jwt.encode(claims, secret, algorithm="HS256")


def read_token(token: str, secret: str) -> int:
    try:
        claims: dict[str, Any] = jwt.decode(token, secret, algorithms=["HS256"])
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the access token has expired; log in again") from None
    except jwt.InvalidTokenError:
        raise Unauthorized("invalid access token") from None
    if claims.get("typ") != "user":
        raise Unauthorized("invalid access token")
    return int(claims["sub"])


def new_api_key() -> tuple[str, str, str]:
    """(key id, full key to show once, hash to store)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, f"{KEY_PREFIX}{key_id}.{secret}", _digest(secret)


def split_api_key(key: str) -> tuple[str, str] | None:
    if not key.startswith(KEY_PREFIX) or "." not in key:
        return None
    key_id, _, secret = key[len(KEY_PREFIX) :].partition(".")
    return key_id, secret


def api_key_matches(stored_hash: str, secret: str) -> bool:
    return hmac.compare_digest(stored_hash, _digest(secret))


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
