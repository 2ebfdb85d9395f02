"""OIDC settings and the JWKS cache, with a fake provider transport and an injected clock:
discovery, the TTL, one refetch on an unknown kid (never more often than the least interval,
one fetch at a time), the bounded timeout, and the settings refused."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from api.oidc import Jwks, claim
from api.settings import CoordinatorSettings
from tessera.errors import ConfigInvalid, Unauthorized

ISSUER = "https://id.example.org/realms/tessera"


class FakeProvider:
    """Answers discovery and JWKS requests; counts JWKS fetches; can be slowed or broken."""

    def __init__(self) -> None:
        self.kids = ["k1"]
        self.fetches = 0
        self.delay = 0.0
        self.broken = False
        self.issuer = ISSUER

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.broken:
            return httpx.Response(503)
        if request.url.path.endswith("/.well-known/openid-configuration"):
            return httpx.Response(200, json={"issuer": self.issuer, "jwks_uri": f"{ISSUER}/certs"})
        if request.url.path.endswith("/certs"):
            self.fetches += 1
            time.sleep(self.delay)
            return httpx.Response(200, json={"keys": [{"kid": k, "kty": "RSA"} for k in self.kids]})
        return httpx.Response(404)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def settings(**extra: Any) -> CoordinatorSettings:
    return CoordinatorSettings(oidc_issuer=ISSUER, oidc_audience="tessera", **extra)


def jwks(provider: FakeProvider, clock: Clock, **extra: Any) -> Jwks:
    http = httpx.Client(transport=httpx.MockTransport(provider.handle))
    return Jwks(settings(**extra), http=http, monotonic=clock)


def test_claims_are_found_by_dotted_path() -> None:
    claims = {"realm_access": {"roles": ["a"]}, "roles": "x", "n": {"m": None}}
    assert claim(claims, "realm_access.roles") == ["a"]
    assert claim(claims, "roles") == "x"
    assert claim(claims, "realm_access.missing") is None
    assert claim(claims, "roles.deeper") is None


def test_keys_are_discovered_cached_and_refreshed_after_their_ttl() -> None:
    provider, clock = FakeProvider(), Clock()
    keys = jwks(provider, clock, oidc_jwks_ttl_s=300, oidc_jwks_min_refetch_s=10)
    assert keys.key("k1")["kid"] == "k1"
    assert keys.jwks_url == f"{ISSUER}/certs"
    for _ in range(5):
        keys.key("k1")
    assert provider.fetches == 1
    clock.t += 301
    keys.key("k1")
    assert provider.fetches == 2


def test_an_unknown_kid_refetches_at_most_once_per_interval() -> None:
    provider, clock = FakeProvider(), Clock()
    keys = jwks(provider, clock, oidc_jwks_min_refetch_s=10)
    keys.key("k1")
    provider.kids = ["k2"]  # the provider rotated
    clock.t += 11
    assert keys.key("k2")["kid"] == "k2"
    assert provider.fetches == 2
    for n in range(10):
        with pytest.raises(Unauthorized):
            keys.key(f"made-up-{n}")
    assert provider.fetches == 2  # within the interval: no fetch
    clock.t += 11
    with pytest.raises(Unauthorized):
        keys.key("made-up-again")
    assert provider.fetches == 3


def test_one_fetch_at_a_time() -> None:
    provider, clock = FakeProvider(), Clock()
    provider.delay = 0.2
    keys = jwks(provider, clock)
    threads = [threading.Thread(target=keys.key, args=("k1",)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert provider.fetches == 1


def test_an_unreachable_provider_refuses_the_token_and_is_not_hammered() -> None:
    provider, clock = FakeProvider(), Clock()
    keys = jwks(provider, clock, oidc_jwks_ttl_s=60, oidc_jwks_min_refetch_s=10)
    keys.key("k1")
    provider.broken = True
    clock.t += 61
    with pytest.raises(Unauthorized, match="unavailable"):
        keys.key("k1")
    provider.broken = False
    fetches = provider.fetches
    with pytest.raises(Unauthorized):
        keys.key("k1")  # within the interval after the failed attempt: refused, no fetch
    assert provider.fetches == fetches
    clock.t += 11
    assert keys.key("k1")["kid"] == "k1"
    assert provider.fetches == fetches + 1


def test_a_failed_refetch_keeps_the_fresh_keys() -> None:
    provider, clock = FakeProvider(), Clock()
    keys = jwks(provider, clock, oidc_jwks_ttl_s=60, oidc_jwks_min_refetch_s=0)
    keys.key("k1")
    provider.broken = True
    with pytest.raises(Unauthorized, match="not one of"):
        keys.key("k2")
    assert keys.key("k1")["kid"] == "k1"


def test_a_discovery_document_of_another_issuer_is_refused() -> None:
    provider, clock = FakeProvider(), Clock()
    provider.issuer = "https://evil.example.org/realms/tessera"
    with pytest.raises(Unauthorized):
        jwks(provider, clock).key("k1")
    assert provider.fetches == 0


def test_the_fetch_timeout_is_bounded() -> None:
    keys = Jwks(settings(oidc_http_timeout_s=2.5))
    try:
        timeout = keys._http.timeout
        assert (timeout.connect, timeout.read) == (2.5, 2.5)
    finally:
        keys.close()


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"oidc_issuer": ISSUER}, "oidc_audience"),
        ({"oidc_issuer": "id.example.org", "oidc_audience": "t"}, "https://"),
        (
            {
                "oidc_issuer": "http://id.example.org/realms/t",
                "oidc_audience": "t",
                "environment": "production",
                "jwt_secret": "x" * 40,
            },
            "production",
        ),
        (
            {
                "oidc_issuer": ISSUER,
                "oidc_audience": "t",
                "oidc_jwks_url": "http://id.example.org/certs",
                "environment": "production",
                "jwt_secret": "x" * 40,
            },
            "production",
        ),
        ({"oidc_issuer": ISSUER, "oidc_audience": "t", "oidc_algorithms": ["HS256"]}, "RS256"),
        ({"oidc_issuer": ISSUER, "oidc_audience": "t", "oidc_algorithms": ["none"]}, "RS256"),
        ({"oidc_issuer": ISSUER, "oidc_audience": "t", "oidc_algorithms": []}, "algorithms"),
        ({"oidc_issuer": ISSUER, "oidc_audience": "t", "oidc_role_map": {"x": "root"}}, "role"),
    ],
)
def test_settings_refused(values: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigInvalid, match=problem):
        CoordinatorSettings.load(**values)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_OIDC_ISSUER", ISSUER)
    monkeypatch.setenv("TESSERA_OIDC_AUDIENCE", "tessera")
    monkeypatch.setenv("TESSERA_OIDC_ROLE_CLAIM", "realm_access.roles")
    monkeypatch.setenv("TESSERA_OIDC_ROLE_MAP", '{"tessera-admin": "admin"}')
    monkeypatch.setenv("TESSERA_OIDC_ALGORITHMS", '["RS256"]')
    loaded = CoordinatorSettings.load()
    assert loaded.oidc_role_map == {"tessera-admin": "admin"}
    assert loaded.oidc_algorithms == ["RS256"]
    assert loaded.oidc_role_claim == "realm_access.roles"
