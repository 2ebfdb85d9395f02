"""Authentication, users and organisations."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from fastapi.security import OAuth2PasswordRequestForm

from api.deps import AdminUser, CurrentUser, PageDep, SessionDep, SettingsDep
from api.openapi import errors
from api.security import issue_token as sign_token
from api.services import accounts, network
from tessera.rest import (
    NewOrganisation,
    NewUser,
    OrganisationOut,
    OrganisationPage,
    Role,
    Token,
    UserOut,
    UserPage,
)

router = APIRouter()


@router.post("/auth/token", tags=["auth"], response_model=Token, responses=errors(401, 422))
def issue_token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], db: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    """Exchange a username and password (form fields) for a bearer token."""
    try:
        user = accounts.authenticate(db, form.username, form.password)
    finally:
        db.commit()  # the audit record of a failed login must survive the 401
    secret = settings.jwt_secret.get_secret_value()
    return {
        "access_token": sign_token(user.id, secret, settings.token_ttl_s),
        "token_type": "bearer",
        "expires_in": settings.token_ttl_s,
    }


@router.get("/users/me", tags=["users"], response_model=UserOut, responses=errors(401, 403, 422))
def get_me(user: CurrentUser) -> dict[str, Any]:
    """The user of the token."""
    return accounts.user_view(user)


@router.post(
    "/users",
    status_code=status.HTTP_201_CREATED,
    tags=["users"],
    response_model=UserOut,
    responses=errors(401, 403, 404, 409, 422),
)
def create_user(body: NewUser, admin: AdminUser, db: SessionDep) -> dict[str, Any]:
    """Create a user (admin)."""
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


@router.get("/users", tags=["users"], response_model=UserPage, responses=errors(401, 403, 422))
def list_users(
    _: AdminUser,
    db: SessionDep,
    page: PageDep,
    role: Annotated[Role | None, Query(description="Only users of this role.")] = None,
) -> dict[str, Any]:
    """Every user (admin), a page at a time."""
    users, cursor = accounts.list_users(db, page, role)
    return {"items": [accounts.user_view(u) for u in users], "next_cursor": cursor}


@router.post(
    "/organisations",
    status_code=status.HTTP_201_CREATED,
    tags=["organisations"],
    response_model=OrganisationOut,
    responses=errors(401, 403, 409, 422),
)
def create_organisation(body: NewOrganisation, admin: AdminUser, db: SessionDep) -> dict[str, Any]:
    """Create an organisation (admin)."""
    org = network.create_organisation(db, body.name, actor=f"user:{admin.username}")
    db.commit()
    return network.organisation_view(org)


@router.get(
    "/organisations",
    tags=["organisations"],
    response_model=OrganisationPage,
    responses=errors(401, 403, 422),
)
def list_organisations(_: CurrentUser, db: SessionDep, page: PageDep) -> dict[str, Any]:
    """Every organisation, a page at a time."""
    orgs, cursor = network.list_organisations(db, page)
    return {"items": [network.organisation_view(o) for o in orgs], "next_cursor": cursor}
