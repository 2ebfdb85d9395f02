"""Authentication, users and organisations."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, status
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, ConfigDict, Field

from api.deps import AdminUser, CurrentUser, SessionDep, SettingsDep
from api.security import issue_token
from api.services import accounts, network

router = APIRouter()


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(pattern=r"^[A-Za-z0-9_.@-]{2,64}$")
    password: str = Field(min_length=8, max_length=256)
    role: Literal["admin", "researcher", "steward"] = "researcher"
    organisation_id: int | None = None


class NewOrganisation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)


@router.post("/auth/token", tags=["auth"])
def token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], db: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    """Exchange a username and password (form fields) for a bearer token."""
    try:
        user = accounts.authenticate(db, form.username, form.password)
    finally:
        db.commit()  # the audit record of a failed login must survive the 401
    secret = settings.jwt_secret.get_secret_value()
    return {
        "access_token": issue_token(user.id, secret, settings.token_ttl_s),
        "token_type": "bearer",
        "expires_in": settings.token_ttl_s,
    }


@router.get("/users/me", tags=["users"])
def me(user: CurrentUser) -> dict[str, Any]:
    return accounts.user_view(user)


@router.post("/users", status_code=status.HTTP_201_CREATED, tags=["users"])
def create_user(body: NewUser, admin: AdminUser, db: SessionDep) -> dict[str, Any]:
    user = accounts.create_user(
        db,
        body.username,
        body.password,
        body.role,
        body.organisation_id,
        actor=f"user:{admin.username}",
    )
    db.commit()
    return accounts.user_view(user)


@router.get("/users", tags=["users"])
def list_users(_: AdminUser, db: SessionDep) -> list[dict[str, Any]]:
    return [accounts.user_view(u) for u in accounts.list_users(db)]


@router.post("/organisations", status_code=status.HTTP_201_CREATED, tags=["organisations"])
def create_organisation(body: NewOrganisation, admin: AdminUser, db: SessionDep) -> dict[str, Any]:
    org = network.create_organisation(db, body.name, actor=f"user:{admin.username}")
    db.commit()
    return network.organisation_view(org)


@router.get("/organisations", tags=["organisations"])
def list_organisations(_: CurrentUser, db: SessionDep) -> list[dict[str, Any]]:
    return [network.organisation_view(o) for o in network.list_organisations(db)]
