"""Login throttling: failures counted per username and per client address, in the database.

Kept in the database, not in the process, so that every replica sees the same counts: an
attacker cannot multiply their attempts by the number of replicas behind a load balancer.

An attempt is counted *before* its password is hashed (`reserve`), in its own committed
transaction, and given back once it succeeded (`succeeded`). So N parallel guesses cannot all
slip past the limit while the first ones are still being hashed: the limit-th attempt starts a
lockout, and every attempt after it is refused with `RateLimited` (429, `Retry-After`) without
any hashing. Each further failure after a lockout doubles the next one, up to
`login_lockout_max_s`; failures older than `login_failure_window_s` are forgotten.

A client address gets a larger allowance than a username (a hospital's users may share one
NAT address); a success gives the address its attempt back and clears the username's count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from api import audit, clock
from api.db import is_sqlite, write_lock
from api.models import LoginThrottle
from api.settings import CoordinatorSettings
from tessera.errors import RateLimited


@dataclass(frozen=True)
class LoginPolicy:
    max_failures: int = 5
    max_failures_per_address: int = 20
    lockout_s: float = 30.0
    lockout_max_s: float = 900.0
    window_s: float = 3600.0

    @classmethod
    def of(cls, settings: CoordinatorSettings) -> LoginPolicy:
        return cls(
            settings.login_max_failures,
            settings.login_max_failures_per_address,
            settings.login_lockout_s,
            settings.login_lockout_max_s,
            settings.login_failure_window_s,
        )

    def limit(self, key: str) -> int:
        return self.max_failures_per_address if key.startswith("address:") else self.max_failures

    def lockout(self, failures: int, limit: int) -> timedelta:
        """The lockout after `failures` (>= limit) failures: doubling from `lockout_s`."""
        seconds = self.lockout_s * 2.0 ** min(failures - limit, 30)
        return timedelta(seconds=min(seconds, self.lockout_max_s))


def keys(username: str, address: str | None) -> list[str]:
    """The throttle keys of an attempt, in the one order every attempt locks them."""
    found = [f"user:{username[:64]}"]
    if address:
        found.append(f"address:{address[:64]}")
    return sorted(found)


def _row(db: Session, key: str, now: datetime) -> LoginThrottle:
    """The key's row, locked until the transaction ends (created if missing)."""
    if is_sqlite(db):
        write_lock(db)
    else:
        db.execute(
            pg_insert(LoginThrottle)
            .values(key=key, failures=0, last_failure_at=now)
            .on_conflict_do_nothing()
        )
    row = db.scalars(
        select(LoginThrottle).where(LoginThrottle.key == key).with_for_update()
    ).first()
    if row is None:
        row = LoginThrottle(key=key, failures=0, last_failure_at=now)
        db.add(row)
        db.flush()
    return row


def reserve(db: Session, username: str, address: str | None, policy: LoginPolicy) -> None:
    """Count one attempt against the username and the address, and commit; `RateLimited`
    (nothing counted) while either is locked out."""
    rows = [_row(db, key, clock.now(db)) for key in keys(username, address)]
    now = clock.now(db)  # read once the rows are ours: no earlier than any lock they hold
    for row in rows:
        if row.locked_until is None and row.last_failure_at < now - timedelta(
            seconds=policy.window_s
        ):
            row.failures = 0
    locked = [r.locked_until for r in rows if r.locked_until is not None and r.locked_until > now]
    if locked:
        db.commit()
        wait = max(locked) - now
        retry_after = max(1, math.ceil(wait.total_seconds()))
        raise RateLimited(
            f"too many failed logins; try again in {retry_after} s",
            {"retry_after_s": retry_after},
        )
    for row in rows:
        row.failures += 1
        row.last_failure_at = now
        limit = policy.limit(row.key)
        if row.failures >= limit:
            row.locked_until = now + policy.lockout(row.failures, limit)
            if row.failures == limit:
                audit.record(db, "system", "login.locked", row.key[:200], failures=row.failures)
    _forget_old(db, now, policy)
    db.commit()


def succeeded(db: Session, username: str, address: str | None, policy: LoginPolicy) -> None:
    """Give a successful attempt back: the username starts afresh, the address gets its
    attempt back (in the caller's transaction)."""
    now = clock.now(db)
    for key in keys(username, address):
        row = _row(db, key, now)
        if key.startswith("user:"):
            db.delete(row)
            continue
        row.failures = max(0, row.failures - 1)
        if row.failures < policy.limit(key):
            row.locked_until = None
    db.flush()


def _forget_old(db: Session, now: datetime, policy: LoginPolicy) -> None:
    horizon = now - timedelta(seconds=max(policy.window_s, policy.lockout_max_s))
    db.execute(
        delete(LoginThrottle)
        .where(LoginThrottle.last_failure_at < horizon)
        .where((LoginThrottle.locked_until.is_(None)) | (LoginThrottle.locked_until < now))
        .execution_options(synchronize_session=False)
    )
