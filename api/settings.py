"""The coordinator's settings: environment variables `TESSERA_*` or a TOML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tessera.errors import ConfigInvalid
from tessera.settings import ENV_PREFIX, read_toml

DEV_JWT_SECRET = "tessera-local-development-only"


class CoordinatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    environment: Literal["local", "production"] = "local"
    database_url: str = "sqlite:///./tessera.db"
    jwt_secret: SecretStr = SecretStr(DEV_JWT_SECRET)
    token_ttl_s: int = 3600
    bootstrap_admin_username: str | None = None
    bootstrap_admin_password: SecretStr | None = None
    accept_timeout_s: float = 30.0
    query_timeout_s: float = 120.0
    long_poll_max_s: float = 30.0
    sweep_interval_s: float = 0.5
    host: str = "127.0.0.1"
    port: int = 8000
    log_format: Literal["text", "json"] = "text"

    @model_validator(mode="after")
    def _no_default_secrets_in_production(self) -> CoordinatorSettings:
        if self.environment == "production":
            if self.jwt_secret.get_secret_value() == DEV_JWT_SECRET:
                raise ValueError("set TESSERA_JWT_SECRET: the default is for local use only")
            if len(self.jwt_secret.get_secret_value()) < 32:
                raise ValueError("TESSERA_JWT_SECRET must be at least 32 characters")
        password = self.bootstrap_admin_password
        if password is not None and len(password.get_secret_value()) < 8:
            raise ValueError("the bootstrap admin password needs at least 8 characters")
        return self

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> CoordinatorSettings:
        """Settings from a TOML file (if given), then environment variables, then overrides."""
        values = read_toml(path) if path is not None else {}
        try:
            env = cls()
            merged = {**values, **env.model_dump(exclude_unset=True), **overrides}
            return cls.model_validate(merged)
        except ValueError as exc:
            raise ConfigInvalid(f"invalid coordinator settings: {exc}") from None
