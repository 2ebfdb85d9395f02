"""Users: creation, password login, the bootstrap administrator."""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from api import audit
from api.models import Organisation, User
from api.pagination import PageRequest
from api.security import dummy_hash, hash_password, verify_password
from tessera.errors import Conflict, InvalidRequest, NotFound, Unauthorized

Role = Literal["admin", "researcher", "steward"]


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
    if len(password) < 8:
        raise InvalidRequest("passwords need at least 8 characters", {"field": "password"})
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


def authenticate(db: Session, username: str, password: str) -> User:
    """The user, or `Unauthorized`; both outcomes are audited (the username, never the
    password). An unknown username costs the same hashing time as a wrong password."""
    user = db.scalars(select(User).where(User.username == username)).first()
    if user is None:
        verify_password(dummy_hash(), password)
    if user is None or not verify_password(user.password_hash, password):
        audit.record(db, "anonymous", "login.failed", f"user:{username[:64]}")
        raise Unauthorized("wrong username or password")
    audit.record(db, f"user:{username}", "login", f"user:{username}")
    return user


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
    }


def list_users(
    db: Session, page: PageRequest, role: Role | None = None
) -> tuple[list[User], str | None]:
    """A page of users (of one role, if given) and the next page's cursor."""
    stmt = select(User) if role is None else select(User).where(User.role == role)
    return page.page(db.scalars(page.apply(stmt, User.id)).all(), lambda u: u.id)
