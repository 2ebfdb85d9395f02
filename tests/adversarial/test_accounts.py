"""Attacks on the coordinator's accounts, each refused: a token signed with the key the source
used to hold, a token without `exp`, `alg: none`, a replayed refresh token, a logged-out or
disabled user's token (on another replica too), password guessing, an oversized body sent
before any authentication, and a node's release report trying to run script."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient

import api.settings
from api import CoordinatorSettings, create_app
from api.middleware import SecurityHeaders
from api.signing import CoordinatorKey
from api.tokens import KEY_FILE

OLD_CONSTANT = "tessera-local-development-only"  # in api/settings.py until issue 12
ADMIN_PASSWORD = "the administrator's passphrase"


@dataclass
class Coordinator:
    http: TestClient
    data_dir: Path

    def login(self, username: str = "admin", password: str = ADMIN_PASSWORD) -> dict[str, Any]:
        answer = self.http.post(
            "/api/v1/auth/token", data={"username": username, "password": password}
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def get(self, path: str, token: str) -> Any:
        return self.http.get(f"/api/v1{path}", headers={"Authorization": f"Bearer {token}"})

    def post(self, path: str, token: str, **kw: Any) -> Any:
        return self.http.post(f"/api/v1{path}", headers={"Authorization": f"Bearer {token}"}, **kw)


def settings_for(root: Path, **extra: Any) -> CoordinatorSettings:
    return CoordinatorSettings(
        database_url=f"sqlite:///{root / 'coordinator.db'}",
        bootstrap_admin_username="admin",
        bootstrap_admin_password=ADMIN_PASSWORD,
        **extra,
    )


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    with TestClient(create_app(settings_for(tmp_path))) as http:
        yield Coordinator(http, tmp_path)


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_a_token_signed_with_the_old_source_constant_is_refused(
    coordinator: Coordinator,
) -> None:
    now = datetime.now(UTC)
    legacy = jwt.encode({"sub": "1", "typ": "user", "iat": now}, OLD_CONSTANT, algorithm="HS256")
    live = jwt.decode(coordinator.login()["access_token"], options={"verify_signature": False})
    dressed = jwt.encode(live, OLD_CONSTANT, algorithm="HS256")  # every claim, the old key
    for token in (legacy, dressed):
        for path in ("/users/me", "/users", "/audit"):
            answer = coordinator.get(path, token)
            assert answer.status_code == 401, (path, answer.text)
            assert answer.json()["error"]["code"] == "unauthorized"
    assert OLD_CONSTANT not in Path(api.settings.__file__).read_text()


def test_tokens_without_exp_or_signature_are_refused(coordinator: Coordinator) -> None:
    key = (coordinator.data_dir / KEY_FILE).read_text().strip()  # even holding the real key
    live = jwt.decode(coordinator.login()["access_token"], options={"verify_signature": False})
    forever = {k: v for k, v in live.items() if k != "exp"}
    assert (
        coordinator.get("/users/me", jwt.encode(forever, key, algorithm="HS256")).status_code == 401
    )
    unsigned = jwt.encode(live, None, algorithm="none")
    assert coordinator.get("/users/me", unsigned).status_code == 401
    assert coordinator.get("/users/me", jwt.encode(live, key, algorithm="HS256")).status_code == 200


def test_a_replayed_refresh_token_ends_the_session_for_the_thief_too(
    coordinator: Coordinator,
) -> None:
    stolen = coordinator.login()
    owner = coordinator.http.post(
        "/api/v1/auth/refresh", json={"refresh_token": stolen["refresh_token"]}
    ).json()
    thief = coordinator.http.post(
        "/api/v1/auth/refresh", json={"refresh_token": stolen["refresh_token"]}
    )
    assert thief.status_code == 401
    assert coordinator.get("/users/me", owner["access_token"]).status_code == 401
    again = coordinator.http.post(
        "/api/v1/auth/refresh", json={"refresh_token": owner["refresh_token"]}
    )
    assert again.status_code == 401


def test_logout_and_disabling_are_at_once_on_every_replica(tmp_path: Path) -> None:
    with (
        TestClient(create_app(settings_for(tmp_path))) as first,
        TestClient(create_app(settings_for(tmp_path))) as second,
    ):
        one, two = Coordinator(first, tmp_path), Coordinator(second, tmp_path)
        admin = one.login()["access_token"]
        assert two.get("/users/me", admin).status_code == 200, "the replicas share the key"
        bob = one.post(
            "/users", admin, json={"username": "bob", "password": "bob's passphrase"}
        ).json()
        bob_token = one.login("bob", "bob's passphrase")["access_token"]
        assert two.get("/users/me", bob_token).status_code == 200
        assert one.post(f"/users/{bob['id']}/disable", admin).status_code == 200
        assert two.get("/users/me", bob_token).status_code == 401
        assert one.post("/auth/logout", admin).status_code == 200
        assert two.get("/users/me", admin).status_code == 401


def test_guessing_a_password_stops_after_five_tries(coordinator: Coordinator) -> None:
    answers = [
        coordinator.http.post(
            "/api/v1/auth/token", data={"username": "admin", "password": f"guess {n}"}
        )
        for n in range(8)
    ]
    assert [a.status_code for a in answers] == [401] * 5 + [429] * 3
    assert int(answers[-1].headers["retry-after"]) > 0
    right = coordinator.http.post(
        "/api/v1/auth/token", data={"username": "admin", "password": ADMIN_PASSWORD}
    )
    assert right.status_code == 429, "no password is checked during a lockout"


def test_an_oversized_body_is_refused_before_authentication(coordinator: Coordinator) -> None:
    for path in ("/api/v1/studies/1/queries", "/api/v1/auth/token", "/api/v1/users"):
        answer = coordinator.http.post(
            path, content=b"{" + b" " * (17 * 10**6), headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 413, path
        assert answer.json()["error"]["code"] == "too_large"


def test_a_release_report_cannot_run_script_and_production_pins_https(tmp_path: Path) -> None:
    headers = SecurityHeaders(None, production=False).headers(  # type: ignore[arg-type]
        "/api/v1/releases/1/report", [(b"content-type", b"text/html; charset=utf-8")]
    )
    policy = dict(headers)[b"content-security-policy"].decode()
    assert "sandbox" in policy and "script-src" not in policy and "default-src 'none'" in policy
    key_file = tmp_path / "signing_key.pem"
    CoordinatorKey.load_or_create(key_file)  # as an operator provisions it
    production = settings_for(
        tmp_path, environment="production", jwt_secret="p" * 40, signing_key_file=key_file
    ).model_copy(update={"bootstrap_admin_password": None})
    with TestClient(create_app(production)) as http:
        answer = http.get("/api/v1/healthz")
    assert answer.headers["strict-transport-security"].startswith("max-age=")
