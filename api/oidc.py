"""OIDC login: bearer tokens that an identity provider (Keycloak, or any standard OpenID
Connect provider) signed, verified against the provider's published keys (JWKS).

A token is this verifier's when its (unverified) `iss` is the configured issuer; it is then
accepted only if all of these hold, else 401:

- its `alg` is one of `oidc_algorithms` (RS256, ES256; never HS*, never `none`, so a token
  "signed" with the provider's public key as an HMAC secret is refused), and the key of its
  `kid` in the provider's JWKS is of that algorithm's kind and verifies its signature;
- `iss` is the issuer and `aud` holds `oidc_audience`; `exp`, `iat` and `sub` are present,
  and `exp`, `nbf`, `iat` hold within `oidc_leeway_s`.

The JWKS is fetched with a bounded timeout, kept `oidc_jwks_ttl_s`, and fetched again at once
when a token names a `kid` it does not hold (the provider rotated its keys), but never more
often than every `oidc_jwks_min_refetch_s` and by one thread at a time: a flood of tokens with
made-up `kid`s costs the provider at most one fetch per interval. Keys older than their TTL
are never used: while the provider cannot be reached after that, tokens are refused (fast:
one attempt per interval), rather than trusting keys it may have withdrawn.

The user is the one whose (issuer, `sub`) the token names, made on its first use (an external
user: no password, no local login); never a user found by name, so a provider's user cannot
take over a local account of the same name: a token whose username is another account's is
refused. Claims are authoritative for OIDC users: at every token use their role is set from
`oidc_role_claim` through `oidc_role_map` (the highest role granted; none granted: 403), and,
when `oidc_study_claim` is set, their study memberships become exactly the studies the claim
names. A disabled user stays refused whatever the provider says. Provisioning, each change of
role or membership, refusals of known users, and each token's first use are audited (never a
token).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import httpx
import jwt
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import audit
from api.models import Study, StudyMember, User
from api.settings import CoordinatorSettings
from tessera.errors import Forbidden, Unauthorized

log = logging.getLogger("tessera.coordinator.oidc")

ROLE_RANK = {"researcher": 0, "steward": 1, "admin": 2}
KEY_TYPES = {"RS": "RSA", "ES": "EC"}
USERNAME = re.compile(r"[A-Za-z0-9_.@-]{2,64}")  # as a local username (tessera.rest.NewUser)
SEEN_TOKENS = 10_000  # tokens whose first use was audited (per process)
NO_PASSWORD = "!external"  # not an argon2 hash: no password ever verifies against it


def claim(claims: dict[str, Any], path: str) -> Any:
    """The value at a dotted path (`realm_access.roles`), or None."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str):
        return value.split()  # a space-separated string (as `scope` is)
    return [value]


class Jwks:
    """The provider's signing keys: fetched on demand, cached, refetched on an unknown kid."""

    def __init__(
        self,
        settings: CoordinatorSettings,
        http: httpx.Client | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        assert settings.oidc_issuer is not None
        self.issuer = settings.oidc_issuer.rstrip("/")
        self.jwks_url = settings.oidc_jwks_url
        self.ttl_s = settings.oidc_jwks_ttl_s
        self.min_refetch_s = settings.oidc_jwks_min_refetch_s
        self.production = settings.environment == "production"
        self._http = http or httpx.Client(
            timeout=settings.oidc_http_timeout_s, follow_redirects=False
        )
        self._now = monotonic
        self._lock = threading.Lock()
        self._keys: dict[str, dict[str, Any]] = {}
        self._fetched_at: float | None = None  # the last successful fetch
        self._tried_at: float | None = None  # the last attempt
        self.fetches = 0  # how many times the JWKS was fetched (tests read it)

    def close(self) -> None:
        self._http.close()

    def key(self, kid: str) -> dict[str, Any]:
        """The JWK of `kid`, fetching the JWKS if it is stale or lacks the kid."""
        with self._lock:  # one fetch at a time; the others wait and use its answer
            now = self._now()
            due = self._tried_at is None or now - self._tried_at >= self.min_refetch_s
            if (not self._fresh(now) or kid not in self._keys) and due:
                self._fetch(now)
            if not self._fresh(now):
                raise Unauthorized(
                    "cannot verify the token: the identity provider's keys are unavailable"
                )
            found = self._keys.get(kid)
        if found is None:
            raise Unauthorized("the token's signing key is not one of the identity provider's")
        return found

    def _fresh(self, now: float) -> bool:
        return self._fetched_at is not None and now - self._fetched_at < self.ttl_s

    def _fetch(self, now: float) -> None:
        """Fetch the JWKS; on failure keep the keys held (until their TTL ends) and log."""
        self._tried_at = now
        try:
            url = self.jwks_url or self._discover()
            answer = self._get(url)
            keys = answer.get("keys") if isinstance(answer, dict) else None
            if not isinstance(keys, list):
                raise ValueError("the JWKS has no 'keys' list")
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("cannot fetch the identity provider's keys: %s", exc)
            return
        self._keys = {
            str(k["kid"]): k for k in keys if isinstance(k, dict) and isinstance(k.get("kid"), str)
        }
        self._fetched_at = now
        self.fetches += 1

    def _discover(self) -> str:
        document = self._get(f"{self.issuer}/.well-known/openid-configuration")
        if not isinstance(document, dict):
            raise ValueError("the discovery document is not a JSON object")
        if str(document.get("issuer", "")).rstrip("/") != self.issuer:
            raise ValueError("the discovery document names another issuer")
        url = document.get("jwks_uri")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise ValueError("the discovery document has no jwks_uri")
        if self.production and not url.startswith("https://"):
            raise ValueError("the jwks_uri is not https://")
        self.jwks_url = url
        return url

    def _get(self, url: str) -> Any:
        response = self._http.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        return response.json()


class OidcVerifier:
    """A `TokenVerifier` (api/tokens.py) for an OIDC provider's access or ID tokens."""

    def __init__(self, settings: CoordinatorSettings, jwks: Jwks | None = None) -> None:
        assert settings.oidc_issuer is not None and settings.oidc_audience is not None
        self.issuer = settings.oidc_issuer
        self.settings = settings
        self.jwks = jwks or Jwks(settings)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._seen_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OidcVerifier(issuer={self.issuer!r})"

    def close(self) -> None:
        self.jwks.close()

    def recognises(self, token: str) -> bool:
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            return False
        return claims.get("iss") == self.issuer

    def claims(self, token: str) -> dict[str, Any]:
        """The verified claims, or `Unauthorized` (never saying more than why)."""
        settings = self.settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthorized("invalid access token") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in settings.oidc_algorithms:
            raise Unauthorized(
                f"tokens signed with {str(alg)[:16]!r} are not accepted "
                f"(only {', '.join(settings.oidc_algorithms)})"
            )
        if not isinstance(kid, str):
            raise Unauthorized("the token names no signing key (kid)")
        jwk = self.jwks.key(kid)
        if jwk.get("kty") != KEY_TYPES[alg[:2]] or jwk.get("alg", alg) != alg:
            raise Unauthorized("the token's algorithm does not match its signing key")
        try:
            key = jwt.PyJWK(jwk, algorithm=alg).key
            verified: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=settings.oidc_audience,
                issuer=self.issuer,
                leeway=settings.oidc_leeway_s,
                options={"require": ["iss", "sub", "aud", "exp", "iat"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired; get a new one from your provider") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("the token is not meant for this coordinator (aud)") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("the token is not valid yet (nbf/iat)") from None
        except (jwt.InvalidTokenError, jwt.PyJWKError, ValueError, TypeError):
            raise Unauthorized("invalid access token") from None
        if not isinstance(verified.get("sub"), str) or not verified["sub"]:
            raise Unauthorized("invalid access token")
        return verified

    def user(self, db: Session, token: str) -> User:
        claims = self.claims(token)
        try:
            user = self._sync(db, claims)
        except IntegrityError:  # another request provisioned the same user a moment ago
            db.rollback()
            user = self._sync(db, claims)
        self._audit_first_use(db, user, claims, token)
        return user

    # ---- claims -> user ----------------------------------------------------------------

    def _username(self, claims: dict[str, Any]) -> str:
        """The username claim (else `sub`), held to local usernames' alphabet: no look-alike
        of another account's name (Unicode homoglyphs, spaces) can be made."""
        value = claim(claims, self.settings.oidc_username_claim) or claims["sub"]
        if not isinstance(value, str) or not USERNAME.fullmatch(value):
            raise Unauthorized(
                "the token's username must be 2 to 64 characters of A-Z a-z 0-9 _ . @ -"
            )
        return value

    def _role(self, claims: dict[str, Any]) -> str | None:
        granted = _as_list(claim(claims, self.settings.oidc_role_claim))
        known = self.settings.oidc_role_map
        mapped = [known[r] for r in granted if isinstance(r, str) and r in known]
        return max(mapped, key=ROLE_RANK.__getitem__) if mapped else None

    def _sync(self, db: Session, claims: dict[str, Any]) -> User:
        subject = str(claims["sub"])
        if len(subject) > 255:
            raise Unauthorized("the token's subject is too long")
        username = self._username(claims)
        role = self._role(claims)
        user = db.scalars(
            select(User).where(User.auth_provider == self.issuer, User.subject == subject)
        ).first()
        # usernames that differ only in case name the same person to a reader of the audit log
        namesakes = db.scalars(
            select(User).where(func.lower(User.username) == username.lower())
        ).all()
        if user is None:  # made by a concurrent request between the two reads?
            user = next(
                (u for u in namesakes if (u.auth_provider, u.subject) == (self.issuer, subject)),
                None,
            )
        if any(u is not user for u in namesakes):
            audit.record(
                db,
                "system:oidc",
                "oidc.refused",
                f"user:{username}",
                reason="username_taken",
                issuer=self.issuer,
                sub=subject[:64],
            )
            db.commit()
            raise Unauthorized(
                f"the username {username!r} belongs to another account; ask an administrator"
            )
        if user is not None and user.disabled_at is not None:
            audit.record(
                db,
                f"user:{user.username}",
                "login.refused",
                f"user:{user.username}",
                reason="disabled",
                provider="oidc",
            )
            db.commit()
            raise Unauthorized("this account is disabled")
        if role is None:
            raise Forbidden(
                "your identity provider grants you no Tessera role "
                f"(claim {self.settings.oidc_role_claim!r}); ask its administrator"
            )
        if user is None:
            user = User(
                username=username,
                password_hash=NO_PASSWORD,
                role=role,
                auth_provider=self.issuer,
                subject=subject,
            )
            db.add(user)
            db.flush()
            audit.record(
                db,
                "system:oidc",
                "user.provisioned",
                f"user:{username}",
                role=role,
                issuer=self.issuer,
            )
        else:
            if user.username != username:
                audit.record(
                    db, "system:oidc", "user.renamed", f"user:{username}", before=user.username
                )
                user.username = username
            if user.role != role:
                audit.record(
                    db,
                    "system:oidc",
                    "user.role_changed",
                    f"user:{username}",
                    before=user.role,
                    after=role,
                )
                user.role = role
        if self.settings.oidc_study_claim is not None:
            self._sync_studies(db, user, claim(claims, self.settings.oidc_study_claim))
        db.flush()
        return user

    def _sync_studies(self, db: Session, user: User, value: Any) -> None:
        """The user's memberships become exactly the studies the claim names (by name, or by
        id for a number); names of studies that do not exist are ignored."""
        names = {str(v) for v in _as_list(value) if isinstance(v, str | int)}
        ids = {int(v) for v in _as_list(value) if isinstance(v, int) and not isinstance(v, bool)}
        wanted: set[int] = set()
        if names:
            wanted |= set(db.scalars(select(Study.id).where(Study.name.in_(names))).all())
        if ids:
            wanted |= set(db.scalars(select(Study.id).where(Study.id.in_(ids))).all())
        rows = db.scalars(select(StudyMember).where(StudyMember.user_id == user.id)).all()
        held = {row.study_id for row in rows}
        added, removed = sorted(wanted - held), sorted(held - wanted)
        for row in rows:
            if row.study_id in removed:
                db.delete(row)
        for study_id in added:
            db.add(StudyMember(study_id=study_id, user_id=user.id))
        if added or removed:
            audit.record(
                db,
                "system:oidc",
                "user.studies_synced",
                f"user:{user.username}",
                added=added,
                removed=removed,
            )

    def _audit_first_use(self, db: Session, user: User, claims: dict[str, Any], token: str) -> None:
        """One `login` event per token per process (the token's hash is never written)."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self._seen_lock:
            if digest in self._seen:
                return
            self._seen[digest] = None
            while len(self._seen) > SEEN_TOKENS:
                self._seen.popitem(last=False)
        audit.record(
            db,
            f"user:{user.username}",
            "login",
            f"user:{user.username}",
            provider="oidc",
            role=user.role,
        )
        db.commit()
