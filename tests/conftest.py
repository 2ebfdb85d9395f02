"""Shared fixtures: databases (SQLite and the real PostgreSQL), a running coordinator, and the
REST contract: every answer an in-process client receives from a real coordinator is checked
against the OpenAPI spec after each test (`_answers_keep_the_contract`)."""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

# One BLAS thread per process: the suite runs many processes (MPC parties, agents) on few cores,
# and spinning BLAS thread pools then starve each other.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

PG_ADMIN_URL = os.environ.get("TESSERA_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_available() -> str | None:
    """None if PostgreSQL answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A module naming `SLOW_BACKENDS` runs on those database backends in the slow tier only.

    Modules with a slow test run first (otherwise in their order): with the test workers
    (`-n`, one module to a worker), a long module collected last would run alone at the end
    while the other workers idle; started first, the short modules fill in around it."""
    for item in items:
        slow = getattr(item.module, "SLOW_BACKENDS", ()) if hasattr(item, "module") else ()
        callspec = getattr(item, "callspec", None)
        if slow and callspec is not None and callspec.params.get("database_url") in slow:
            item.add_marker(pytest.mark.slow)
    slow_modules = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow_modules)


@pytest.fixture(scope="session")
def pg_server() -> str:
    problem = _pg_available()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"PostgreSQL is required in CI but not reachable at {PG_ADMIN_URL}: {problem}"
            )
        pytest.skip(f"PostgreSQL not reachable: {problem}")
    return PG_ADMIN_URL


def fresh_pg_database(admin_url: str) -> tuple[str, str]:
    """Create an empty database; returns (its SQLAlchemy URL, its name)."""
    import psycopg

    name = f"tessera_test_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{base}/{name}", name


def drop_pg_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_pg_url(pg_server: str) -> Iterator[str]:
    """A PostgreSQL database of this test's own (dropped after it)."""
    url, name = fresh_pg_database(pg_server)
    try:
        yield url
    finally:
        drop_pg_database(pg_server, name)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Each module that uses this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'coordinator.db'}"
        return
    admin_url = request.getfixturevalue("pg_server")
    url, name = fresh_pg_database(admin_url)
    try:
        yield url
    finally:
        drop_pg_database(admin_url, name)


# ---- the command line, in this process ----------------------------------------------------


@dataclass
class Done:
    """What a command did: its exit code and what it wrote."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def tessera_cli() -> Callable[..., Done]:
    """Run `tessera ARGS...` in this process (Typer's runner): no interpreter to start, so a
    unit test of a command costs what the command costs. The subprocess form, as users run it,
    is tested in tests/e2e."""
    from typer.testing import CliRunner

    from cli.main import app

    def run(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> Done:
        result = CliRunner().invoke(app, list(args), input=stdin, env=env)
        return Done(result.exit_code, result.stdout, result.stderr)

    return run


# ---- data stewards' keys --------------------------------------------------------------------


class StewardKeys:
    """Deterministic Ed25519 keys for test stewards (a name's key is derived from the name), the
    `[policy.synthesis.stewards]` table that lists them, and their signed decisions."""

    def private(self, name: str) -> Any:
        import hashlib

        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        seed = hashlib.sha256(f"tessera test steward {name}".encode()).digest()
        return Ed25519PrivateKey.from_private_bytes(seed)

    def public(self, name: str) -> str:
        from tessera.stewards import public_key_text

        return public_key_text(self.private(name).public_key())

    def table(self, *names: str, keys: dict[str, str] | None = None) -> str:
        """TOML lines of a `[policy.synthesis.stewards]` table (`keys`: name -> key owner)."""
        owners = keys or {n: n for n in names}
        return "".join(f'"{n}" = "{self.public(owners[n])}"\n' for n in names)

    def write(self, name: str, folder: Any) -> Any:
        """The name's private key as an unencrypted PEM file (mode 0600) in `folder`."""
        from cryptography.hazmat.primitives.serialization import (
            Encoding,
            NoEncryption,
            PrivateFormat,
        )

        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.key"
        pem = self.private(name).private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        path.write_bytes(pem)
        path.chmod(0o600)
        return path

    def decision(
        self,
        name: str,
        *,
        node: str,
        job_id: int,
        hashes: dict[str, str],
        decision: str = "approve",
        reason: str = "",
        signer: str | None = None,
        at: Any = None,
    ) -> Any:
        """`name`'s decision, signed with `signer`'s key (default: their own)."""
        from tessera.stewards import signed_decision

        return signed_decision(
            self.private(signer or name),
            node=node,
            job_id=job_id,
            steward=name,
            decision=decision,
            hashes=hashes,
            reason=reason,
            at=at,
        )


@pytest.fixture(scope="session")
def stewards() -> StewardKeys:
    return StewardKeys()


# ---- the REST contract: every answer a test receives is checked against /openapi.json -------


@dataclass
class Exchange:
    method: str
    path: str
    status: int
    content_type: str
    body: bytes


ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}


class Contract:
    """The coordinator's OpenAPI spec (generated from the code, as `/openapi.json` serves it)
    and a check of one answer against it: the path and method are documented, the status is
    one the operation documents, and the body fits the schema documented for that status."""

    def __init__(self) -> None:
        from api import CoordinatorSettings, create_app

        self.spec: dict[str, Any] = create_app(CoordinatorSettings()).openapi()
        self._paths = [
            (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"), path)
            for path in self.spec["paths"]
        ]

    def operation(self, method: str, path: str) -> dict[str, Any] | None:
        for pattern, template in self._paths:
            if pattern.match(path):
                return self.spec["paths"][template].get(method.lower())
        return None

    def problem(self, exchange: Exchange) -> str | None:
        """Why an answer breaks the contract, or None."""
        import jsonschema

        where = f"{exchange.method} {exchange.path} -> {exchange.status}"
        operation = self.operation(exchange.method, exchange.path)
        if operation is None:
            if exchange.status not in (404, 405):
                return f"{where}: not a documented operation"
            operation = {"operationId": "(no route)", "responses": {str(exchange.status): ERROR}}
        documented = operation["responses"].get(str(exchange.status))
        if documented is None:
            return f"{where}: status not documented by {operation['operationId']}"
        media = exchange.content_type.split(";")[0].strip()
        content = documented.get("content", {})
        if media not in content:
            return f"{where}: content type {media!r} not documented ({sorted(content)})"
        if media != "application/json":
            return None
        schema = {**content[media]["schema"], "components": self.spec["components"]}
        try:
            jsonschema.validate(json.loads(exchange.body), schema)
        except jsonschema.ValidationError as exc:
            path = "/".join(str(p) for p in exc.absolute_path)
            return f"{where}: body at /{path}: {exc.message[:300]}"
        return None


_contracts: list[Contract] = []


def the_contract() -> Contract:
    """The spec, generated once per session (when first needed)."""
    if not _contracts:
        _contracts.append(Contract())
    return _contracts[0]


@pytest.fixture(scope="session")
def contract() -> Contract:
    return the_contract()


_exchanges: list[Exchange] = []


@pytest.fixture(scope="session", autouse=True)
def _record_api_answers() -> Iterator[None]:
    """Record every answer a real coordinator (on 127.0.0.1) gives an in-process client."""
    import httpx

    original = httpx.Client.send

    def send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        response = original(self, request, **kwargs)
        url = request.url
        if url.host == "127.0.0.1" and url.path.startswith("/api/v1/"):
            response.read()
            _exchanges.append(
                Exchange(
                    request.method,
                    url.path,
                    response.status_code,
                    response.headers.get("content-type", ""),
                    response.content,
                )
            )
        return response

    httpx.Client.send = send  # type: ignore[method-assign]
    try:
        yield
    finally:
        httpx.Client.send = original  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _answers_keep_the_contract() -> Iterator[None]:
    """Every answer the test received from a coordinator fits the OpenAPI spec."""
    start = len(_exchanges)
    yield
    received = _exchanges[start:]
    if not received:
        return
    contract = the_contract()
    problems = [p for e in received if (p := contract.problem(e)) is not None]
    assert not problems, "answers that break /openapi.json:\n" + "\n".join(problems[:10])


# ---- a local OpenID Connect provider (tests of OIDC login) ----------------------------------


class OidcProvider:
    """A tiny identity provider on 127.0.0.1: it serves its discovery document and its JWKS
    (RSA keys made here) as Keycloak does under `/realms/<realm>`, and mints tokens.

    `jwks_fetches` counts the JWKS requests; `rotate()` makes a new key (new `kid`) and
    publishes it alone, as a provider does when it rotates its keys."""

    AUDIENCE = "tessera"

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                realm = "/realms/test"
                if self.path == f"{realm}/.well-known/openid-configuration":
                    body: Any = {
                        "issuer": provider.issuer,
                        "jwks_uri": f"{provider.issuer}/protocol/openid-connect/certs",
                        "id_token_signing_alg_values_supported": ["RS256"],
                    }
                elif self.path == f"{realm}/protocol/openid-connect/certs":
                    provider.jwks_fetches += 1
                    body = provider.jwks()
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}/realms/test"
        self.jwks_fetches = 0
        self.keys: dict[str, Any] = {}  # kid -> private key
        self.published: list[str] = []
        self.kid = self.rotate(keep_old=False)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @staticmethod
    def new_key() -> Any:
        from cryptography.hazmat.primitives.asymmetric import rsa

        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def rotate(self, keep_old: bool = False) -> str:
        """A new signing key: its kid, published (with the old ones if `keep_old`)."""
        kid = f"key-{secrets.token_hex(4)}"
        self.keys[kid] = self.new_key()
        self.published = [*self.published, kid] if keep_old else [kid]
        self.kid = kid
        return kid

    def jwks(self) -> dict[str, Any]:
        from jwt.algorithms import RSAAlgorithm

        keys = []
        for kid in self.published:
            jwk = json.loads(RSAAlgorithm.to_jwk(self.keys[kid].public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}

    def public_pem(self, kid: str | None = None) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return bytes(
            self.keys[kid or self.kid]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def claims(self, subject: str, **extra: Any) -> dict[str, Any]:
        """Claims as Keycloak writes them (realm roles under `realm_access.roles`)."""
        import time

        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.AUDIENCE,
            "sub": subject,
            "iat": now,
            "exp": now + 300,
            "preferred_username": subject,
            "realm_access": {"roles": ["tessera-researcher"]},
        }
        return {k: v for k, v in {**base, **extra}.items() if v is not None}

    def token(
        self, subject: str = "s-0001", *, kid: str | None = None, key: Any = None, **extra: Any
    ) -> str:
        """A token the provider signs (or `key`, an attacker's, under the provider's kid)."""
        import jwt

        kid = kid or self.kid
        return jwt.encode(
            self.claims(subject, **extra), key or self.keys[kid], "RS256", headers={"kid": kid}
        )

    def settings(self, **extra: Any) -> dict[str, Any]:
        """Coordinator settings for this provider (Keycloak's claim layout)."""
        return {
            "oidc_issuer": self.issuer,
            "oidc_audience": self.AUDIENCE,
            "oidc_role_claim": "realm_access.roles",
            "oidc_role_map": {"tessera-admin": "admin", "tessera-researcher": "researcher"},
            "oidc_study_claim": "tessera_studies",
            "oidc_jwks_min_refetch_s": 0,
            **extra,
        }


@pytest.fixture
def oidc_provider() -> Iterator[OidcProvider]:
    provider = OidcProvider()
    try:
        yield provider
    finally:
        provider.close()


@pytest.fixture(scope="module")
def module_oidc_provider() -> Iterator[OidcProvider]:
    """One provider for a module's tests (a coordinator started once per module trusts it)."""
    provider = OidcProvider()
    try:
        yield provider
    finally:
        provider.close()
