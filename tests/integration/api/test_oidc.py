"""OIDC login over a real coordinator process (SQLite and PostgreSQL) and a local identity
provider serving its discovery document and JWKS: a provider token works with the role and the
study memberships its claims give (and claims stay authoritative at every use), the Python
client and the CLI use a provider token as they are given it, and the provider's key rotation
is followed after one refetch of its keys."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tessera.client import TesseraClient
from tessera.errors import Unauthorized

from .conftest import Backend, Coordinator, start_coordinator


@pytest.fixture(scope="module")
def coordinator(backend: Backend, module_oidc_provider: Any) -> Iterator[Coordinator]:
    settings = module_oidc_provider.settings(oidc_jwks_min_refetch_s=0)
    settings["oidc_role_map"] = json.dumps(settings["oidc_role_map"])  # as an env variable
    made = start_coordinator(backend.root, backend.new_database(), **settings)
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
def provider(module_oidc_provider: Any) -> Any:
    return module_oidc_provider


def admin(coordinator: Coordinator) -> TesseraClient:
    client = TesseraClient(coordinator.url)
    client.login("admin", coordinator.admin_password)
    return client


def me(coordinator: Coordinator, token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.get(f"{coordinator.url}/api/v1/users/me", headers=headers, timeout=30)


def new_study(coordinator: Coordinator) -> str:
    name = f"oidc-{secrets.token_hex(4)}"
    with admin(coordinator) as client:
        client.create_study(name)
    return name


def studies(coordinator: Coordinator, token: str) -> list[str]:
    with TesseraClient(coordinator.url, token=token) as client:
        return sorted(s["name"] for s in client.studies())


def test_a_provider_token_gives_its_role_and_its_studies(
    coordinator: Coordinator, provider: Any
) -> None:
    first, second, other = new_study(coordinator), new_study(coordinator), new_study(coordinator)
    token = provider.token("kc-rita", preferred_username="rita.kc", tessera_studies=[first, second])
    answer = me(coordinator, token)
    assert answer.status_code == 200, answer.text
    assert answer.json()["username"] == "rita.kc"
    assert answer.json()["role"] == "researcher"
    assert studies(coordinator, token) == sorted([first, second])
    assert other not in studies(coordinator, token)
    with admin(coordinator) as client:
        users = {u["username"]: u for u in client.users()}
        assert users["rita.kc"]["role"] == "researcher"
        assert users["rita.kc"]["provider"] == provider.issuer
        assert users["admin"]["provider"] == "local"
        events = client.audit("user.provisioned")
        assert any(e["subject"] == "user:rita.kc" for e in events)


def test_claims_stay_authoritative_at_every_use(coordinator: Coordinator, provider: Any) -> None:
    """Role and memberships follow the provider: granted, changed, taken away."""
    study = new_study(coordinator)
    token = provider.token("kc-ada", tessera_studies=[study])
    assert me(coordinator, token).json()["role"] == "researcher"
    assert studies(coordinator, token) == [study]

    promoted = provider.token("kc-ada", realm_access={"roles": ["tessera-admin", "offline"]})
    assert me(coordinator, promoted).json()["role"] == "admin"
    with TesseraClient(coordinator.url, token=promoted) as client:
        assert "kc-ada" in {u["username"] for u in client.users()}  # an admin's route

    demoted = provider.token("kc-ada", tessera_studies=[])
    assert me(coordinator, demoted).json()["role"] == "researcher"
    assert studies(coordinator, demoted) == []
    with TesseraClient(coordinator.url, token=demoted) as client, pytest.raises(Exception) as info:
        client.users()
    assert getattr(info.value, "http_status", None) == 403
    with admin(coordinator) as client:
        actions = [e["action"] for e in client.audit() if e["subject"] == "user:kc-ada"]
    assert "user.role_changed" in actions and "user.studies_synced" in actions


def test_the_same_user_whatever_their_username_becomes(
    coordinator: Coordinator, provider: Any
) -> None:
    """A user is their (issuer, sub): a renamed provider user keeps their account."""
    first = me(coordinator, provider.token("kc-bob", preferred_username="bob.old")).json()
    renamed = me(coordinator, provider.token("kc-bob", preferred_username="bob.new")).json()
    assert renamed["id"] == first["id"] and renamed["username"] == "bob.new"


def test_the_cli_and_the_client_use_a_provider_token(
    coordinator: Coordinator, provider: Any, tessera_cli: Any
) -> None:
    study = new_study(coordinator)
    token = provider.token("kc-cli", tessera_studies=[study])
    with TesseraClient(coordinator.url, token=token) as client:
        assert client.me()["username"] == "kc-cli"
    env = {"TESSERA_TOKEN": token, "TESSERA_COORDINATOR_URL": coordinator.url}
    done = tessera_cli("query", "budget", "--study", study, "--json", env=env)
    assert done.returncode == 0, done.stderr
    budget = json.loads(done.stdout)
    assert budget["datasets"] == [] and isinstance(budget["study_id"], int)
    url = {"TESSERA_COORDINATOR_URL": coordinator.url}
    done = tessera_cli("query", "budget", "--study", study, "--token", token, "--json", env=url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == budget
    done = tessera_cli("synth", "releases", "--study", study, "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    # neither a token nor a username: one line, exit 2
    done = tessera_cli("query", "budget", "--study", study, env=url)
    assert done.returncode == 2 and "--token" in done.stderr
    # an expired provider token is not renewed: one line, exit 2
    stale = provider.token("kc-cli", exp=1, iat=0)
    done = tessera_cli("query", "budget", "--study", study, env={**env, "TESSERA_TOKEN": stale})
    assert done.returncode == 2
    assert "expired" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    with TesseraClient(coordinator.url, token=stale) as client, pytest.raises(Unauthorized):
        client.me()


def test_parallel_first_uses_make_one_user(coordinator: Coordinator, provider: Any) -> None:
    """Eight requests with a new user's first tokens at once: all served, one user made."""
    from concurrent.futures import ThreadPoolExecutor

    tokens = [provider.token("kc-crowd", jti=str(n)) for n in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda t: me(coordinator, t), tokens))
    assert [a.status_code for a in answers] == [200] * 8, [
        a.text[:300] for a in answers if a.status_code != 200
    ]
    assert len({a.json()["id"] for a in answers}) == 1
    with admin(coordinator) as client:
        made = [e for e in client.audit("user.provisioned") if e["subject"] == "user:kc-crowd"]
        logins = [e for e in client.audit("login") if e["subject"] == "user:kc-crowd"]
    assert len(made) == 1
    assert len(logins) == 8  # each token's first use


def test_the_provider_rotates_its_keys(coordinator: Coordinator, provider: Any) -> None:
    """A token under a new kid works after one refetch; a token of a withdrawn key does not."""
    old = provider.token("kc-rot")
    assert me(coordinator, old).status_code == 200
    fetches = provider.jwks_fetches
    provider.rotate(keep_old=False)
    new = provider.token("kc-rot")
    answer = me(coordinator, new)
    assert answer.status_code == 200, answer.text
    assert provider.jwks_fetches == fetches + 1
    withdrawn = me(coordinator, old)
    assert withdrawn.status_code == 401
    assert withdrawn.json()["error"]["code"] == "unauthorized"
    # during a rollover both keys are published: both work
    provider.rotate(keep_old=True)
    assert me(coordinator, provider.token("kc-rot")).status_code == 200
    assert me(coordinator, new).status_code == 200
