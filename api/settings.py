"""The coordinator's settings: environment variables `TESSERA_*` or a TOML file.

Precedence, lowest first: defaults, the TOML file, environment variables, explicit overrides
(command-line options). In `production` the development JWT secret, a short one, and a
placeholder bootstrap administrator password are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from tessera.errors import ConfigInvalid
from tessera.settings import ENV_PREFIX, read_toml

DEV_JWT_SECRET = "tessera-local-development-only"
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
    jwt_secret: SecretStr = SecretStr(DEV_JWT_SECRET)
    token_ttl_s: int = Field(3600, gt=0)
    bootstrap_admin_username: str | None = None
    bootstrap_admin_password: SecretStr | None = None
    accept_timeout_s: float = Field(30.0, gt=0)
    query_timeout_s: float = Field(120.0, gt=0)
    long_poll_max_s: float = Field(30.0, ge=0)
    sweep_interval_s: float = Field(0.5, gt=0)
    # a synthesis job must reach its stewards' review (or end) this long after its request
    synthesis_timeout_s: float = Field(3600.0, gt=0)
    # the largest synthetic dataset (Parquet) and report a node may upload, each
    release_max_bytes: int = Field(512 * 2**20, gt=0, le=2**30)
    # how long a POST's Idempotency-Key is remembered (a retry later than this creates anew)
    idempotency_ttl_s: float = Field(86400.0, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_format: Literal["text", "json"] = "text"
    # the Ed25519 key that signs audit events and tasks (api.signing); made beside the SQLite
    # file if not given; required in production (every replica signs with the same key)
    signing_key_file: Path | None = None

    @model_validator(mode="after")
    def _coherent_and_no_default_secrets_in_production(self) -> CoordinatorSettings:
        if self.query_timeout_s < self.accept_timeout_s:
            raise ValueError("query_timeout_s cannot be shorter than accept_timeout_s")
        password = self.bootstrap_admin_password
        secret = password.get_secret_value() if password is not None else None
        if secret is not None and len(secret) < 8:
            raise ValueError("the bootstrap admin password needs at least 8 characters")
        if self.environment == "production":
            if self.jwt_secret.get_secret_value() == DEV_JWT_SECRET:
                raise ValueError("set TESSERA_JWT_SECRET: the default is for local use only")
            if len(self.jwt_secret.get_secret_value()) < 32:
                raise ValueError("TESSERA_JWT_SECRET must be at least 32 characters")
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
