"""Dependency aliases that keep routes short: `SessionDep`, `CurrentUser`, `AdminUser`,
`CurrentNode`, `SettingsDep`, `PageDep`; and `known_parameters`, which every route runs: a
query parameter the route does not declare is an error, not silently ignored."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.db import Database
from api.models import LOCAL_PROVIDER, Node, User
from api.notify import Notifier
from api.pagination import PageRequest, page_request
from api.security import KEY_PREFIX
from api.services import network
from api.services.logins import LoginPolicy
from api.settings import CoordinatorSettings
from api.tokens import LocalTokens, TokenVerifier, verify
from tessera.errors import Forbidden, InvalidRequest, Unauthorized
from tessera.limits import LABEL_LENGTH, MAX_ID, NUL_FREE

_bearer = HTTPBearer(auto_error=False)


def get_settings(request: Request) -> CoordinatorSettings:
    return request.app.state.settings


def get_notifier(request: Request) -> Notifier:
    return request.app.state.notifier


def get_session(request: Request) -> Iterator[Session]:
    database: Database = request.app.state.db
    with database.session() as db:
        yield db


IdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="An id (1 to 2^31 - 1).")]


def id_query(description: str) -> Any:
    """A query parameter that is an id: 1 to 2^31 - 1."""
    return Query(ge=1, le=MAX_ID, description=description)


def label_query(description: str) -> Any:
    """A query parameter that is a name (a node's, a statistic's, an action's)."""
    return Query(max_length=LABEL_LENGTH, pattern=NUL_FREE, description=description)


WaitParam = Query(
    0.0,
    ge=0,
    le=3600,
    description="Long-poll: seconds to wait for news (capped at long_poll_max_s).",
)
PageDep = Annotated[PageRequest, Depends(page_request)]
SettingsDep = Annotated[CoordinatorSettings, Depends(get_settings)]
NotifierDep = Annotated[Notifier, Depends(get_notifier)]
SessionDep = Annotated[Session, Depends(get_session)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("authentication required: send 'Authorization: Bearer <token>'")
    return credentials.credentials


def get_tokens(request: Request) -> LocalTokens:
    return request.app.state.tokens


def get_verifiers(request: Request) -> list[TokenVerifier]:
    return request.app.state.verifiers


def get_login_policy(settings: SettingsDep) -> LoginPolicy:
    return LoginPolicy.of(settings)


def client_address(request: Request) -> str | None:
    """The client's address as the server sees it (behind a proxy: run uvicorn with
    `--proxy-headers` and `--forwarded-allow-ips` so that this is the real client)."""
    return request.client.host if request.client else None


TokensDep = Annotated[LocalTokens, Depends(get_tokens)]
LoginPolicyDep = Annotated[LoginPolicy, Depends(get_login_policy)]
AddressDep = Annotated[str | None, Depends(client_address)]


def current_user(
    db: SessionDep,
    credentials: Credentials,
    verifiers: Annotated[list[TokenVerifier], Depends(get_verifiers)],
) -> User:
    """The user of the bearer token: whichever verifier recognises the token decides (the
    coordinator's own access tokens today; another issuer's can plug in beside them)."""
    token = _token(credentials)
    if token.startswith(KEY_PREFIX):
        raise Forbidden("node API keys cannot use user routes")
    user = verify(verifiers, db, token)
    db.commit()  # end the read transaction: long-polls must not hold a connection
    return user


CurrentUser = Annotated[User, Depends(current_user)]


def current_session_id(user: CurrentUser, tokens: TokensDep, credentials: Credentials) -> str:
    """The login session of the caller's own access token (`sid`). A user of an identity
    provider has no session here: the provider keeps it (and their password)."""
    if user.auth_provider != LOCAL_PROVIDER:
        raise Forbidden(
            "your login and password are your identity provider's: log out or change your "
            "password there"
        )
    return str(tokens.claims(_token(credentials))["sid"])


SessionIdDep = Annotated[str, Depends(current_session_id)]


def admin_user(user: CurrentUser) -> User:
    if user.role != "admin":
        raise Forbidden("this needs the admin role")
    return user


AdminUser = Annotated[User, Depends(admin_user)]


def current_node(db: SessionDep, credentials: Credentials) -> Node:
    token = _token(credentials)
    if not token.startswith(KEY_PREFIX):
        raise Forbidden("this route is for node agents (node API key)")
    node = network.authenticate_node(db, token)
    db.commit()  # last_seen_at; and no lock or connection is held while a long-poll waits
    return node


CurrentNode = Annotated[Node, Depends(current_node)]


_declared: dict[int, frozenset[str]] = {}


def _query_names(dependant: Any) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def known_parameters(request: Request) -> None:
    """Refuse query parameters the route does not declare (422 naming each)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    key = id(route)
    if key not in _declared:
        _declared[key] = frozenset(_query_names(dependant))
    unknown = sorted(set(request.query_params) - _declared[key])
    if unknown:
        raise InvalidRequest(
            f"unknown query parameter(s): {', '.join(unknown)}"
            + (f" (known: {', '.join(sorted(_declared[key]))})" if _declared[key] else ""),
            {"errors": [{"loc": ["query", name], "msg": "unknown parameter"} for name in unknown]},
        )
