"""Users: creation, password login, login sessions and their refresh tokens, password
change, disabling, the bootstrap administrator.

A login opens a session (`UserSession`): its access tokens name it, and its refresh tokens
(opaque, stored as SHA-256, one use each) renew them until the session's end
(`refresh_token_ttl_s` after the login). A refresh token used twice means it was stolen (or a
client misbehaved): the whole session is revoked. Logout revokes the session; a password change
revokes every other session of the user; disabling a user revokes all of them, and each request
reads the session and the user, so every replica refuses their tokens at once.

Every outcome is audited (usernames, session ids' first characters, never a password or a
token).
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from api import audit, clock
from api.db import is_sqlite, write_lock
from api.models import Organisation, RefreshToken, User, UserSession
from api.pagination import PageRequest
from api.security import (
    digest,
    dummy_hash,
    hash_password,
    needs_rehash,
    new_refresh_token,
    verify_password,
)
from api.services import logins
from api.services.logins import LoginPolicy
from tessera.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthorized

Role = Literal["admin", "researcher", "steward"]
MIN_PASSWORD = 8
MAX_PASSWORD = 256
WRONG_LOGIN = "wrong username or password"


def get_user(db: Session, user_id: int) -> User | None:
    return db.get(User, user_id)


def find_user(db: Session, ref: int | str) -> User:
    user = (
        db.get(User, ref)
        if isinstance(ref, int)
        else db.scalars(select(User).where(User.username == ref)).first()
    )
    if user is None:
        raise NotFound(f"no user {ref!r}", {"user": ref})
    return user


def create_user(
    db: Session,
    username: str,
    password: str,
    role: Role,
    organisation_id: int | None = None,
    actor: str = "system",
) -> User:
    _check_password(password)
    if db.scalars(select(User).where(User.username == username)).first() is not None:
        raise Conflict(f"user {username!r} exists already", {"username": username})
    if organisation_id is not None and db.get(Organisation, organisation_id) is None:
        raise NotFound(f"no organisation {organisation_id}", {"organisation_id": organisation_id})
    user = User(
        username=username,
        password_hash=hash_password(password),
        role=role,
        organisation_id=organisation_id,
    )
    db.add(user)
    db.flush()
    audit.record(db, actor, "user.created", f"user:{username}", role=role)
    return user


def _check_password(password: str, field: str = "password") -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidRequest(
            f"passwords need {MIN_PASSWORD} to {MAX_PASSWORD} characters", {"field": field}
        )


def authenticate(
    db: Session,
    username: str,
    password: str,
    address: str | None = None,
    policy: LoginPolicy | None = None,
) -> User:
    """The user, or `Unauthorized` (a wrong password and an unknown username alike),
    `RateLimited` while the username or the address is locked out, `Forbidden` for a
    disabled account (said only to whoever knows its password). Commits: the attempt is
    counted before the password is hashed. Audited (the username, never the password)."""
    policy = policy or LoginPolicy()
    logins.reserve(db, username, address, policy)
    user = db.scalars(select(User).where(User.username == username)).first()
    if user is None:
        verify_password(dummy_hash(), password)
    if user is None or not verify_password(user.password_hash, password):
        audit.record(db, "anonymous", "login.failed", f"user:{username[:64]}", address=address)
        db.commit()
        raise Unauthorized(WRONG_LOGIN)
    logins.succeeded(db, username, address, policy)
    if user.disabled_at is not None:
        audit.record(db, f"user:{username}", "login.refused", f"user:{username}", reason="disabled")
        db.commit()
        raise Forbidden("this account is disabled; ask an administrator")
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    audit.record(db, f"user:{username}", "login", f"user:{username}", address=address)
    return user


def start_session(db: Session, user: User, ttl_s: int) -> tuple[UserSession, str]:
    """A new login session of the user and its first refresh token (to hand out once)."""
    now = clock.now(db)
    session = UserSession(
        id=secrets.token_hex(16),
        user_id=user.id,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
    )
    db.add(session)
    db.flush()  # the session's row before its refresh token's
    token, hashed = new_refresh_token()
    db.add(RefreshToken(session_id=session.id, token_hash=hashed, created_at=now))
    db.flush()
    return session, token


def refresh(db: Session, token: str) -> tuple[User, UserSession, str]:
    """Exchange a refresh token for the next one (same session); `Unauthorized` if it is
    unknown, used before (the session is then revoked), or its session is over. Commits."""
    if is_sqlite(db):
        write_lock(db)
    row = db.scalars(
        select(RefreshToken).where(RefreshToken.token_hash == digest(token)).with_for_update()
    ).first()
    if row is None:
        raise Unauthorized("invalid refresh token; log in again")
    session = db.get(UserSession, row.session_id)
    assert session is not None
    user = db.get(User, session.user_id)
    assert user is not None
    now = clock.now(db)
    if row.used_at is not None:
        if session.revoked_at is None:
            _revoke(session, now, "refresh_reused")
            audit.record(
                db,
                "system",
                "session.refresh_reused",
                f"user:{user.username}",
                session=_sid(session),
            )
        db.commit()
        raise Unauthorized(
            "this refresh token was used before: the session is revoked; log in again"
        )
    if user.disabled_at is not None:
        raise Unauthorized("this account is disabled")
    if session.revoked_at is not None:
        raise Unauthorized("this session has ended; log in again")
    if session.expires_at <= now:
        raise Unauthorized("this session has expired; log in again")
    row.used_at = now
    fresh, hashed = new_refresh_token()
    db.add(RefreshToken(session_id=session.id, token_hash=hashed, created_at=now))
    audit.record(
        db,
        f"user:{user.username}",
        "session.refreshed",
        f"user:{user.username}",
        session=_sid(session),
    )
    db.commit()
    return user, session, fresh


def session_user(db: Session, session_id: str, user_id: int) -> User:
    """The user of a live session, or `Unauthorized` (ended session, disabled user)."""
    session = db.get(UserSession, session_id)
    if session is None or session.user_id != user_id or session.revoked_at is not None:
        raise Unauthorized("this session has ended (logged out or revoked); log in again")
    user = db.get(User, user_id)
    if user is None:
        raise Unauthorized("the user of this token no longer exists")
    if user.disabled_at is not None:
        raise Unauthorized("this account is disabled")
    return user


def logout(db: Session, user: User, session_id: str) -> None:
    """End the session: its access and refresh tokens stop working."""
    session = db.get(UserSession, session_id)
    if session is not None and session.user_id == user.id and session.revoked_at is None:
        _revoke(session, clock.now(db), "logout")
    audit.record(
        db, f"user:{user.username}", "logout", f"user:{user.username}", session=session_id[:8]
    )


def change_password(
    db: Session,
    user: User,
    session_id: str,
    old: str,
    new: str,
    address: str | None = None,
    policy: LoginPolicy | None = None,
) -> int:
    """Set a new password (the current one proves it is the user); every other session of the
    user is revoked. Returns how many. A wrong current password counts as a failed login."""
    policy = policy or LoginPolicy()
    _check_password(new, "new_password")
    if new == old:
        raise InvalidRequest("the new password is the current one", {"field": "new_password"})
    username = user.username
    db.commit()  # the throttle commits on its own
    logins.reserve(db, username, address, policy)
    fresh = db.get(User, user.id)
    assert fresh is not None
    if not verify_password(fresh.password_hash, old):
        audit.record(db, f"user:{username}", "password.change_failed", f"user:{username}")
        db.commit()
        raise Forbidden("the current password is wrong", {"field": "old_password"})
    logins.succeeded(db, username, address, policy)
    fresh.password_hash = hash_password(new)
    revoked = revoke_sessions(db, fresh, "password_changed", keep=session_id)
    audit.record(
        db, f"user:{username}", "password.changed", f"user:{username}", sessions_revoked=revoked
    )
    return revoked


def set_disabled(db: Session, admin: User | None, user_id: int, disabled: bool) -> User:
    """Disable a user (every session revoked, no login) or enable them again."""
    user = find_user(db, user_id)
    actor = f"user:{admin.username}" if admin is not None else "cli:admin"
    if disabled:
        if admin is not None and admin.id == user.id:
            raise Conflict("an administrator cannot disable their own account", {"user": user_id})
        if user.disabled_at is None:
            user.disabled_at = clock.now(db)
        revoked = revoke_sessions(db, user, "disabled")
        audit.record(db, actor, "user.disabled", f"user:{user.username}", sessions_revoked=revoked)
    else:
        user.disabled_at = None
        audit.record(db, actor, "user.enabled", f"user:{user.username}")
    db.flush()
    return user


def revoke_sessions(db: Session, user: User, reason: str, keep: str | None = None) -> int:
    """Revoke every live session of the user (but `keep`); how many."""
    live = db.scalars(
        select(UserSession).where(
            UserSession.user_id == user.id,
            UserSession.revoked_at.is_(None),
            UserSession.id != (keep or ""),
        )
    ).all()
    now = clock.now(db)
    for session in live:
        _revoke(session, now, reason)
    db.flush()
    return len(live)


def forget_ended_sessions(db: Session, keep_s: float = 86400.0) -> int:
    """Delete the sessions (and their refresh tokens) that ended more than `keep_s` ago;
    returns how many. Their audit events stay."""
    cutoff = clock.now(db) - timedelta(seconds=keep_s)
    ended = select(UserSession.id).where(
        (UserSession.expires_at < cutoff) | (UserSession.revoked_at < cutoff)
    )
    db.execute(
        delete(RefreshToken)
        .where(RefreshToken.session_id.in_(ended))
        .execution_options(synchronize_session=False)
    )
    result = db.execute(
        delete(UserSession)
        .where(UserSession.id.in_(ended))
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _revoke(session: UserSession, now: datetime, reason: str) -> None:
    session.revoked_at = now
    session.revoked_reason = reason


def _sid(session: UserSession) -> str:
    """Enough of a session id to follow it in the audit log (not enough to be one)."""
    return session.id[:8]


def ensure_admin(db: Session, username: str, password: str) -> None:
    """Create the bootstrap administrator if no user of that name exists."""
    if db.scalars(select(User).where(User.username == username)).first() is None:
        create_user(db, username, password, "admin", actor="system:bootstrap")


def user_view(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role,
        "organisation_id": user.organisation_id,
        "created_at": user.created_at,
        "disabled": user.disabled_at is not None,
        "provider": user.auth_provider,
    }


def list_users(
    db: Session, page: PageRequest, role: Role | None = None
) -> tuple[list[User], str | None]:
    """A page of users (of one role, if given) and the next page's cursor."""
    stmt = select(User) if role is None else select(User).where(User.role == role)
    return page.page(db.scalars(page.apply(stmt, User.id)).all(), lambda u: u.id)
