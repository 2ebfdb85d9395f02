"""Attacks on OIDC login, each refused with 401 and the JSON error body: a token of another
issuer, for another audience, expired, without `exp`, signed by another key, naming a `kid`
the provider never published (after one refetch of its keys, and no more however many such
tokens come), `alg: none`, HS256 "signed" with the provider's public key (algorithm
confusion), ES256 under an RSA key, a provider user whose `sub` or username is a local
account's (no takeover), a disabled user with a fresh provider token, and a provider user's
password login."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from api import CoordinatorSettings, create_app

ADMIN_PASSWORD = "the administrator's passphrase"


@dataclass
class Coordinator:
    http: TestClient
    provider: Any

    def get(self, path: str, token: str) -> Any:
        return self.http.get(f"/api/v1{path}", headers={"Authorization": f"Bearer {token}"})

    def post(self, path: str, token: str, **kw: Any) -> Any:
        return self.http.post(f"/api/v1{path}", headers={"Authorization": f"Bearer {token}"}, **kw)

    def admin_token(self) -> str:
        answer = self.http.post(
            "/api/v1/auth/token", data={"username": "admin", "password": ADMIN_PASSWORD}
        )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["access_token"])

    def users(self) -> list[str]:
        page = self.get("/users", self.admin_token()).json()
        return [u["username"] for u in page["items"]]


def start(root: Path, provider: Any, **extra: Any) -> TestClient:
    settings = CoordinatorSettings(
        database_url=f"sqlite:///{root / 'coordinator.db'}",
        bootstrap_admin_username="admin",
        bootstrap_admin_password=ADMIN_PASSWORD,
        **provider.settings(**extra),
    )
    return TestClient(create_app(settings))


@pytest.fixture
def coordinator(tmp_path: Path, oidc_provider: Any) -> Iterator[Coordinator]:
    with start(tmp_path, oidc_provider) as http:
        yield Coordinator(http, oidc_provider)


def refused(answer: Any, status: int = 401) -> str:
    """The refusal's message, after checking its status and its JSON error body."""
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == ("unauthorized" if status == 401 else "forbidden")
    return str(error["message"])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """A JWT signed by hand with HMAC-SHA256 (PyJWT refuses to use a PEM key as an HMAC key)."""
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(secret, head.encode(), hashlib.sha256).digest()
    return head + "." + b64(signature)


def test_the_genuine_token_works(coordinator: Coordinator) -> None:
    """The baseline every attack below differs from by one thing."""
    answer = coordinator.get("/users/me", coordinator.provider.token("s-genuine"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["username"] == "s-genuine"


def test_another_issuer_is_refused(coordinator: Coordinator) -> None:
    provider = coordinator.provider
    for issuer in ("http://127.0.0.1:1/realms/test", provider.issuer + "/", "tessera-coordinator"):
        refused(coordinator.get("/users/me", provider.token("s-iss", iss=issuer)))
    assert "s-iss" not in coordinator.users()


def test_another_audience_is_refused(coordinator: Coordinator) -> None:
    provider = coordinator.provider
    for audience in ("account", ["account", "other-client"]):
        message = refused(coordinator.get("/users/me", provider.token("s-aud", aud=audience)))
        assert "aud" in message
    refused(coordinator.get("/users/me", provider.token("s-aud", aud=None)))  # no aud at all


def test_an_expired_token_is_refused(coordinator: Coordinator) -> None:
    now = int(time.time())
    token = coordinator.provider.token("s-old", iat=now - 7200, exp=now - 3600)
    assert "expired" in refused(coordinator.get("/users/me", token))
    # a token valid only later, and one with no expiry at all
    later = coordinator.provider.token("s-old", nbf=now + 3600)
    refused(coordinator.get("/users/me", later))
    forever = coordinator.provider.token("s-old", exp=None)
    refused(coordinator.get("/users/me", forever))


def test_a_signature_by_another_key_is_refused(coordinator: Coordinator) -> None:
    provider = coordinator.provider
    attacker = provider.new_key()
    token = provider.token("s-forged", key=attacker, realm_access={"roles": ["tessera-admin"]})
    refused(coordinator.get("/users/me", token))
    assert "s-forged" not in coordinator.users()


def test_an_unknown_kid_is_refused_after_one_refetch(coordinator: Coordinator) -> None:
    provider = coordinator.provider
    assert coordinator.get("/users/me", provider.token("s-warm")).status_code == 200
    fetches = provider.jwks_fetches
    attacker = provider.new_key()
    token = provider.token("s-kid", kid="attacker-key", key=attacker)
    assert "signing key" in refused(coordinator.get("/users/me", token))
    assert provider.jwks_fetches == fetches + 1  # it asked the provider once, then refused


def test_unknown_kids_cause_no_fetch_storm(tmp_path: Path, oidc_provider: Any) -> None:
    """With the default least interval between fetches, a flood of made-up kids costs the
    provider at most one fetch."""
    with start(tmp_path, oidc_provider, oidc_jwks_min_refetch_s=60) as http:
        coordinator = Coordinator(http, oidc_provider)
        assert coordinator.get("/users/me", oidc_provider.token("s-warm")).status_code == 200
        fetches = oidc_provider.jwks_fetches
        attacker = oidc_provider.new_key()
        for n in range(20):
            token = oidc_provider.token("s-storm", kid=f"made-up-{n}", key=attacker)
            refused(coordinator.get("/users/me", token))
        assert oidc_provider.jwks_fetches == fetches


def test_alg_none_is_refused(coordinator: Coordinator) -> None:
    provider = coordinator.provider
    claims = provider.claims("s-none", realm_access={"roles": ["tessera-admin"]})
    for alg in ("none", "None", "NONE"):
        head = b64(json.dumps({"alg": alg, "typ": "JWT", "kid": provider.kid}).encode())
        token = head + "." + b64(json.dumps(claims).encode()) + "."
        refused(coordinator.get("/users/me", token))
    assert "s-none" not in coordinator.users()


def test_hs256_signed_with_the_public_key_is_refused(coordinator: Coordinator) -> None:
    """Algorithm confusion: the provider's public key (PEM, or its JWK's modulus) used as an
    HMAC secret must not verify."""
    provider = coordinator.provider
    claims = provider.claims("s-confused", realm_access={"roles": ["tessera-admin"]})
    jwk = provider.jwks()["keys"][0]
    for alg in ("HS256", "HS384", "HS512"):
        for secret in (provider.public_pem(), jwk["n"].encode(), json.dumps(jwk).encode()):
            token = forged({"alg": alg, "typ": "JWT", "kid": provider.kid}, claims, secret)
            refused(coordinator.get("/users/me", token))
    assert "s-confused" not in coordinator.users()


def test_es256_under_an_rsa_key_is_refused(coordinator: Coordinator) -> None:
    provider = coordinator.provider
    attacker = ec.generate_private_key(ec.SECP256R1())
    claims = provider.claims("s-es", realm_access={"roles": ["tessera-admin"]})
    token = jwt.encode(claims, attacker, "ES256", headers={"kid": provider.kid})
    refused(coordinator.get("/users/me", token))


def test_a_provider_user_cannot_take_over_a_local_account(coordinator: Coordinator) -> None:
    """The bootstrap administrator is local; provider users named `admin` (by `sub`, by their
    username claim, or both) are refused, and the local account is unchanged."""
    provider = coordinator.provider
    admin_role = {"realm_access": {"roles": ["tessera-admin"]}}
    attempts = [
        provider.token("admin", **admin_role),  # sub and preferred_username both "admin"
        provider.token("s-other", preferred_username="admin", **admin_role),
        provider.token("admin", preferred_username=None, **admin_role),
        provider.token("s-upper", preferred_username="ADMIN", **admin_role),
    ]
    for token in attempts:
        assert "another account" in refused(coordinator.get("/users/me", token))
    look_alikes = ["\u0430dmin", "admin ", "ad\u200bmin", "x" * 65]  # Cyrillic a, space, ZWSP
    for name in look_alikes:
        token = provider.token("s-alike", preferred_username=name, **admin_role)
        assert "username must be" in refused(coordinator.get("/users/me", token))
    me = coordinator.get("/users/me", coordinator.admin_token()).json()
    assert me["username"] == "admin" and me["id"] == 1
    assert coordinator.users().count("admin") == 1
    events = coordinator.get("/audit", coordinator.admin_token()).json()["items"]
    refusals = [e for e in events if e["action"] == "oidc.refused"]
    assert len(refusals) == 4
    assert all(e["details"]["reason"] == "username_taken" for e in refusals)


def test_a_disabled_provider_user_stays_refused(coordinator: Coordinator) -> None:
    provider = coordinator.provider
    me = coordinator.get("/users/me", provider.token("s-gone"))
    assert me.status_code == 200, me.text
    admin = coordinator.admin_token()
    answer = coordinator.post(f"/users/{me.json()['id']}/disable", admin)
    assert answer.status_code == 200, answer.text
    fresh = provider.token("s-gone", realm_access={"roles": ["tessera-admin"]})
    assert "disabled" in refused(coordinator.get("/users/me", fresh))


def test_a_provider_user_has_no_password_here(coordinator: Coordinator) -> None:
    provider = coordinator.provider
    token = provider.token("s-nopass")
    assert coordinator.get("/users/me", token).status_code == 200
    for password in ("!external", "", "s-nopass-password"):
        answer = coordinator.http.post(
            "/api/v1/auth/token", data={"username": "s-nopass", "password": password}
        )
        assert answer.status_code in (401, 422), answer.text
    change = coordinator.post(
        "/users/me/password", token, json={"old_password": "x" * 8, "new_password": "y" * 12}
    )
    assert "identity provider" in refused(change, 403)
    assert "identity provider" in refused(coordinator.post("/auth/logout", token), 403)


def test_a_token_granting_no_tessera_role_is_forbidden(coordinator: Coordinator) -> None:
    token = coordinator.provider.token("s-norole", realm_access={"roles": ["offline_access"]})
    assert "no Tessera role" in refused(coordinator.get("/users/me", token), 403)
    assert "s-norole" not in coordinator.users()


def test_no_token_reaches_the_audit_log_or_the_log(
    coordinator: Coordinator, caplog: pytest.LogCaptureFixture
) -> None:
    provider = coordinator.provider
    token = provider.token("s-audited")
    assert coordinator.get("/users/me", token).status_code == 200
    refused(coordinator.get("/users/me", provider.token("s-audited", aud="other")))
    events = coordinator.get("/audit", coordinator.admin_token()).json()["items"]
    text = json.dumps(events)
    assert "user.provisioned" in text and '"provider": "oidc"' in text
    signature = token.rsplit(".", 1)[1]
    assert signature not in text and token.split(".")[1] not in text
    assert signature not in caplog.text
