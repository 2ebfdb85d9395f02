"""Authentication, users and organisations."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, status
from sqlalchemy.orm import Session

from api import clock
from api.deps import (
    AddressDep,
    AdminUser,
    CurrentUser,
    IdPath,
    LoginPolicyDep,
    PageDep,
    SessionDep,
    SessionIdDep,
    SettingsDep,
    TokensDep,
)
from api.models import User, UserSession
from api.openapi import errors
from api.services import accounts, network
from api.tokens import LocalTokens
from tessera.limits import NUL_FREE, SECRET_LENGTH
from tessera.rest import (
    LoggedOut,
    NewOrganisation,
    NewUser,
    OrganisationOut,
    OrganisationPage,
    PasswordChange,
    PasswordChanged,
    RefreshRequest,
    Role,
    Token,
    UserOut,
    UserPage,
)

router = APIRouter()


class LoginForm:
    """The OAuth2 password grant's form (as `OAuth2PasswordRequestForm`), its fields bounded
    and free of NUL bytes."""

    def __init__(
        self,
        username: Annotated[str, Form(min_length=1, max_length=255, pattern=NUL_FREE)],
        password: Annotated[str, Form(min_length=1, max_length=SECRET_LENGTH, pattern=NUL_FREE)],
        grant_type: Annotated[str | None, Form(pattern="^password$")] = None,
        scope: Annotated[str, Form(max_length=1000, pattern=NUL_FREE)] = "",
        client_id: Annotated[str | None, Form(max_length=255, pattern=NUL_FREE)] = None,
        client_secret: Annotated[str | None, Form(max_length=255, pattern=NUL_FREE)] = None,
    ) -> None:
        self.username, self.password = username, password
        self.grant_type, self.scopes = grant_type, scope.split()
        self.client_id, self.client_secret = client_id, client_secret


def _token_answer(
    user: User, session: UserSession, refresh_token: str, tokens: LocalTokens, db: Session
) -> dict[str, Any]:
    left = (session.expires_at - clock.now(db)).total_seconds()
    return {
        "access_token": tokens.issue(user.id, session.id),
        "token_type": "bearer",
        "expires_in": tokens.ttl_s,
        "refresh_token": refresh_token,
        "refresh_expires_in": max(0, int(left)),
    }


@router.post(
    "/auth/token", tags=["auth"], response_model=Token, responses=errors(401, 403, 422, 429)
)
def issue_token(
    form: Annotated[LoginForm, Depends()],
    db: SessionDep,
    settings: SettingsDep,
    tokens: TokensDep,
    policy: LoginPolicyDep,
    address: AddressDep,
) -> dict[str, Any]:
    """Exchange a username and password (form fields) for a short-lived access token and a
    refresh token. Repeated failures lock the username (and the client address) out for a
    while: 429 with `Retry-After`."""
    user = accounts.authenticate(db, form.username, form.password, address, policy)
    session, refresh_token = accounts.start_session(db, user, settings.refresh_token_ttl_s)
    answer = _token_answer(user, session, refresh_token, tokens, db)
    db.commit()
    return answer


@router.post("/auth/refresh", tags=["auth"], response_model=Token, responses=errors(401, 422))
def refresh_token(body: RefreshRequest, db: SessionDep, tokens: TokensDep) -> dict[str, Any]:
    """Exchange a refresh token for a new access token and the next refresh token (each
    refresh token works once; using one twice ends its session)."""
    user, session, fresh = accounts.refresh(db, body.refresh_token)
    return _token_answer(user, session, fresh, tokens, db)


@router.post(
    "/auth/logout", tags=["auth"], response_model=LoggedOut, responses=errors(401, 403, 422)
)
def logout(user: CurrentUser, session_id: SessionIdDep, db: SessionDep) -> dict[str, Any]:
    """End this login: its access token and its refresh tokens stop working at once."""
    accounts.logout(db, user, session_id)
    db.commit()
    return {"status": "logged_out"}


@router.post(
    "/users/me/password",
    tags=["users"],
    response_model=PasswordChanged,
    responses=errors(401, 403, 422, 429),
)
def change_password(
    body: PasswordChange,
    user: CurrentUser,
    session_id: SessionIdDep,
    db: SessionDep,
    policy: LoginPolicyDep,
    address: AddressDep,
) -> dict[str, Any]:
    """Change your password (the current one proves it is you); your other sessions end."""
    revoked = accounts.change_password(
        db, user, session_id, body.old_password, body.new_password, address, policy
    )
    db.commit()
    return {"sessions_revoked": revoked}


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
    "/users/{user_id}/disable",
    tags=["users"],
    response_model=UserOut,
    responses=errors(401, 403, 404, 409, 422),
)
def disable_user(user_id: IdPath, admin: AdminUser, db: SessionDep) -> dict[str, Any]:
    """Disable a user (admin): their tokens stop working at once and they cannot log in."""
    user = accounts.set_disabled(db, admin, user_id, disabled=True)
    db.commit()
    return accounts.user_view(user)


@router.post(
    "/users/{user_id}/enable",
    tags=["users"],
    response_model=UserOut,
    responses=errors(401, 403, 404, 422),
)
def enable_user(user_id: IdPath, admin: AdminUser, db: SessionDep) -> dict[str, Any]:
    """Enable a disabled user again (admin); they log in afresh."""
    user = accounts.set_disabled(db, admin, user_id, disabled=False)
    db.commit()
    return accounts.user_view(user)


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
