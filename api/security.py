"""Credentials: argon2 password hashes, refresh tokens, node API keys.

Passwords: argon2id with explicit parameters (OWASP's 19 MiB, two passes, one lane), so a
hash costs a known amount of memory; and at most `password_hash_concurrency` hashes are
computed at once in a process (on that many dedicated threads), so N parallel logins hold at
most that many times 19 MiB, however large N. A hash made with older parameters still
verifies and is made again at the next successful login (`needs_rehash`).

Node API keys and refresh tokens are 32 random bytes, so a single SHA-256 is the right hash for
them (argon2's cost protects low-entropy passwords, not random tokens); they are stored hashed
and compared in constant time. A key reads `tn_<key id>.<secret>`: the id finds the row, the
secret proves it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ARGON2_MEMORY_KIB = 19 * 1024
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1
_hasher = PasswordHasher(
    time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_KIB, parallelism=ARGON2_PARALLELISM
)
T = TypeVar("T")
KEY_PREFIX = "tn_"
REFRESH_PREFIX = "tr_"


class HashGate:
    """Password hashes run on `limit` dedicated threads, so at most `limit` run at once and
    only those threads' allocator arenas ever hold argon2's buffers (a hash on each request
    thread would leave a 19 MiB buffer cached in every thread's arena); the callers wait."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="argon2")
        self._lock = threading.Lock()
        self.active = 0
        self.peak = 0  # the most hashes ever computed at once (tests read it)

    def run(self, work: Callable[..., T], *args: Any) -> T:
        return self._pool.submit(self._counted, work, *args).result()

    def _counted(self, work: Callable[..., T], *args: Any) -> T:
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            return work(*args)
        finally:
            with self._lock:
                self.active -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False)


_gate = HashGate(4)


def set_hash_concurrency(limit: int) -> None:
    """Size the process's gate (the coordinator does at start, from its settings)."""
    global _gate
    if limit != _gate.limit:
        old, _gate = _gate, HashGate(limit)
        old.close()


def hash_gate() -> HashGate:
    return _gate


def hash_password(password: str) -> str:
    return _gate.run(_hasher.hash, password)


@functools.cache
def dummy_hash() -> str:
    """A hash to verify against when the user does not exist (same time as a wrong password)."""
    return hash_password(secrets.token_urlsafe(16))


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def verify_password(password_hash: str, password: str) -> bool:
    return _gate.run(_verify, password_hash, password)


def needs_rehash(password_hash: str) -> bool:
    """Whether a (verified) hash was made with other parameters than today's."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


def new_refresh_token() -> tuple[str, str]:
    """(token to hand out once, hash to store)."""
    token = REFRESH_PREFIX + secrets.token_urlsafe(32)
    return token, digest(token)


def new_api_key() -> tuple[str, str, str]:
    """(key id, full key to show once, hash to store)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, f"{KEY_PREFIX}{key_id}.{secret}", digest(secret)


def split_api_key(key: str) -> tuple[str, str] | None:
    if not key.startswith(KEY_PREFIX) or "." not in key:
        return None
    key_id, _, secret = key[len(KEY_PREFIX) :].partition(".")
    return key_id, secret


def api_key_matches(stored_hash: str, secret: str) -> bool:
    return hmac.compare_digest(stored_hash, digest(secret))


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
