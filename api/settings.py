"""The coordinator's settings: environment variables `TESSERA_*` or a TOML file.

Precedence, lowest first: defaults, the TOML file, environment variables, explicit overrides
(command-line options).

No signing key is written in the source. The key that signs access tokens is
`TESSERA_JWT_SECRET` (at least 32 characters), or the contents of `jwt_secret_file`, or else
(outside production) a random key the coordinator creates on its first start in `data_dir`
(`jwt-signing.key`, mode 0600) and reads on every later start. In `production` the key must be
given (several replicas must share one: configuration or a shared file), and a placeholder
bootstrap administrator password is refused.

OIDC login (`oidc_*`, see api/oidc.py and docs/api.md) needs an issuer and an audience; only
RS256 and ES256 can be allowed, and in `production` the issuer and the JWKS URL must be
`https://`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from tessera.errors import ConfigInvalid
from tessera.settings import ENV_PREFIX, read_toml

POOL_SIZE = 20  # database connections kept open (`database_pool_size`)
POOL_OVERFLOW = 20  # opened beyond those when needed, closed when given back

MIN_JWT_SECRET = 32
PLACEHOLDER_PASSWORDS = frozenset(
    {"admin", "administrator", "changeme", "change-me", "changethis", "password", "tessera"}
)
MIN_PRODUCTION_PASSWORD = 12


def _describe(error: Any) -> str:
    field = ".".join(str(p) for p in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{field}: {message}" if field else message


class CoordinatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    environment: Literal["local", "production"] = "local"
    database_url: str = "sqlite:///./tessera.db"
    # SQLite: how long a request waits for another writer's lock before it is answered 503
    sqlite_busy_timeout_s: float = Field(30.0, gt=0, le=600)
    # database connections each replica keeps open, and how many more it may open at a busy
    # moment (closed again after use); on PostgreSQL count them against `max_connections`
    database_pool_size: int = Field(POOL_SIZE, ge=1, le=500)
    database_max_overflow: int = Field(POOL_OVERFLOW, ge=0, le=500)
    # the signing key of access tokens; None: `jwt_secret_file`, else one kept in `data_dir`
    jwt_secret: SecretStr | None = None
    jwt_secret_file: Path | None = None
    # where the coordinator keeps its own files; None: the SQLite file's directory, or ./
    data_dir: Path | None = None
    token_ttl_s: int = Field(900, gt=0, le=86400)  # access tokens
    refresh_token_ttl_s: int = Field(12 * 3600, gt=0)  # a login's lifetime, refreshes included
    # logins: failures before a lockout, per username and per client address; the first
    # lockout's length (doubling with each further failure, up to the max)
    login_max_failures: int = Field(5, ge=1)
    login_max_failures_per_address: int = Field(20, ge=1)
    login_lockout_s: float = Field(30.0, gt=0)
    login_lockout_max_s: float = Field(900.0, gt=0)
    login_failure_window_s: float = Field(3600.0, gt=0)  # failures older than this are forgotten
    # password hashes verified at once (each argon2 verification holds ~19 MiB)
    password_hash_concurrency: int = Field(4, ge=1, le=64)
    # the largest request body (refused before authentication and before it is read), except
    # a node's release upload (release_max_bytes per file) and its big reports (below)
    max_body_bytes: int = Field(2**20, gt=0)
    # a node's query result, dataset schema or privacy ledger (only with a valid node API key)
    node_report_max_bytes: int = Field(16 * 2**20, gt=0, le=2**30)
    bootstrap_admin_username: str | None = None
    bootstrap_admin_password: SecretStr | None = None
    accept_timeout_s: float = Field(30.0, gt=0)
    query_timeout_s: float = Field(120.0, gt=0)
    long_poll_max_s: float = Field(30.0, ge=0)
    # a waiting long-poll re-checks the database this often even without news (api/notify.py)
    long_poll_recheck_s: float = Field(2.0, gt=0, le=60)
    sweep_interval_s: float = Field(0.5, gt=0)
    # a node agent whose task long-poll's connection closed, and that has not polled again
    # this long after, fails the queries waiting for it (api/routes/nodes.py)
    node_gone_grace_s: float = Field(3.0, gt=0, le=300)
    # a synthesis job must reach its stewards' review (or end) this long after its request
    synthesis_timeout_s: float = Field(3600.0, gt=0)
    # the largest synthetic dataset (Parquet) and report a node may upload, each
    release_max_bytes: int = Field(512 * 2**20, gt=0, le=2**30)
    # how long a POST's Idempotency-Key is remembered (a retry later than this creates anew)
    idempotency_ttl_s: float = Field(86400.0, gt=0)
    # how long a node's one-time enrolment token (which registers its key) stays usable
    enrolment_ttl_s: float = Field(7 * 86400.0, gt=0)
    # work one researcher and one study may ask of the nodes (api/services/limits.py): queries
    # pending or running at once, per researcher and per study; query submissions accepted
    # per researcher in any 60 s; synthesis requests still computing per researcher; and one
    # query's estimated cost (smpc.cost): result cells and secure comparisons
    max_concurrent_queries_per_researcher: int = Field(8, ge=1)
    max_queries_per_minute: int = Field(120, ge=1)
    max_concurrent_queries_per_study: int = Field(32, ge=1)
    max_concurrent_synthesis_per_researcher: int = Field(4, ge=1)
    max_query_cells: int = Field(10_000, ge=1)
    max_query_comparisons: int = Field(250_000, ge=1)
    # the Retry-After given when a concurrency limit is reached (a query usually takes 1–3 s)
    concurrency_retry_after_s: int = Field(2, ge=1, le=3600)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_format: Literal["text", "json"] = "text"
    # the Ed25519 key that signs audit events and tasks (api.signing); made beside the SQLite
    # file if not given; required in production (every replica signs with the same key)
    signing_key_file: Path | None = None
    # OIDC login (api/oidc.py): bearer tokens an identity provider (Keycloak, ...) signed.
    # None: off. Its JWKS is `oidc_jwks_url`, else the `jwks_uri` of the issuer's discovery
    # document (`{issuer}/.well-known/openid-configuration`).
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    # claims as dotted paths into the token (Keycloak: `realm_access.roles`)
    oidc_username_claim: str = "preferred_username"
    oidc_role_claim: str = "roles"
    # provider role -> Tessera role; a token granting none of these roles is refused
    oidc_role_map: dict[str, Literal["admin", "researcher", "steward"]] = Field(
        default_factory=lambda: {"admin": "admin", "researcher": "researcher"}
    )
    # a claim listing the names (or ids) of the studies the user is a member of; None: the
    # administrators keep OIDC users' memberships, as for local users
    oidc_study_claim: str | None = None
    oidc_algorithms: list[Literal["RS256", "ES256"]] = Field(
        default_factory=lambda: ["RS256", "ES256"], min_length=1
    )
    oidc_leeway_s: float = Field(30.0, ge=0, le=300)  # clock skew allowed on exp, nbf, iat
    oidc_jwks_ttl_s: float = Field(300.0, gt=0)  # how long a fetched JWKS is used
    # the least time between two fetches of the JWKS (an unknown `kid` asks for one)
    oidc_jwks_min_refetch_s: float = Field(10.0, ge=0)
    oidc_http_timeout_s: float = Field(5.0, gt=0, le=60)

    @model_validator(mode="after")
    def _coherent_and_no_default_secrets_in_production(self) -> CoordinatorSettings:
        if self.query_timeout_s < self.accept_timeout_s:
            raise ValueError("query_timeout_s cannot be shorter than accept_timeout_s")
        password = self.bootstrap_admin_password
        secret = password.get_secret_value() if password is not None else None
        if secret is not None and len(secret) < 8:
            raise ValueError("the bootstrap admin password needs at least 8 characters")
        if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value()) < MIN_JWT_SECRET:
            raise ValueError(f"TESSERA_JWT_SECRET must be at least {MIN_JWT_SECRET} characters")
        self._check_oidc()
        if self.environment == "production":
            if self.jwt_secret is None and self.jwt_secret_file is None:
                raise ValueError(
                    "set TESSERA_JWT_SECRET (or TESSERA_JWT_SECRET_FILE, a file every replica "
                    "shares) in production"
                )
            if secret is not None and (
                secret.lower() in PLACEHOLDER_PASSWORDS
                or secret == self.bootstrap_admin_username
                or len(secret) < MIN_PRODUCTION_PASSWORD
            ):
                raise ValueError(
                    "set TESSERA_BOOTSTRAP_ADMIN_PASSWORD to a real password (at least "
                    f"{MIN_PRODUCTION_PASSWORD} characters, not a placeholder) in production"
                )
            if self.signing_key_file is None:
                raise ValueError(
                    "set TESSERA_SIGNING_KEY_FILE in production: every replica signs the audit "
                    "trail and the tasks with that one key"
                )
        return self

    def _check_oidc(self) -> None:
        if self.oidc_issuer is None:
            return
        if not self.oidc_audience:
            raise ValueError("OIDC needs oidc_audience (the client id tokens are issued for)")
        for name in ("oidc_issuer", "oidc_jwks_url"):
            url = getattr(self, name)
            if url is None:
                continue
            parts = urlsplit(url)
            if parts.scheme not in ("https", "http") or not parts.netloc:
                raise ValueError(f"{name} must be an https:// URL, not {url!r}")
            if parts.scheme == "http" and self.environment == "production":
                raise ValueError(f"{name} must be https:// in production (not {url!r})")

    def resolved_data_dir(self) -> Path:
        """`data_dir`, or the directory of a SQLite database file, or the working directory."""
        if self.data_dir is not None:
            return self.data_dir
        prefix, _, path = self.database_url.partition(":///")
        if prefix.startswith("sqlite") and path and not path.startswith(":memory:"):
            return Path(path).parent
        return Path(".")

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> CoordinatorSettings:
        """Settings from a TOML file (if given), then environment variables, then overrides;
        `ConfigInvalid` (one line naming the problem) if they do not make valid settings."""
        values = read_toml(path) if path is not None else {}
        environment = EnvSettingsSource(cls)()
        try:
            return cls.model_validate({**values, **environment, **overrides})
        except ValidationError as exc:
            problems = "; ".join(_describe(e) for e in exc.errors())
            raise ConfigInvalid(f"invalid coordinator settings: {problems}") from None

    @classmethod
    def from_toml(cls, path: Path | str) -> CoordinatorSettings:
        """Settings from a TOML file, environment variables overriding it."""
        return cls.load(Path(path))
