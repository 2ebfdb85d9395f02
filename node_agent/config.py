"""The node's configuration: a TOML file (`tessera node run --config node.toml`), with
`TESSERA_*` environment variables overriding top-level keys (e.g. `TESSERA_API_KEY`)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from tessera.errors import ConfigInvalid
from tessera.schemas import ColumnSpec, DatasetSchema, Name, NodePolicySummary


class DatasetConfig(BaseModel):
    """One named dataset: where its rows are, and its declared schema."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    source: Literal["csv", "parquet", "sql"]
    path: Path | None = None
    url: SecretStr | None = None  # may hold database credentials
    table: str | None = None
    columns: list[ColumnSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _location(self) -> DatasetConfig:
        if self.source in ("csv", "parquet") and self.path is None:
            raise ValueError(f"dataset {self.name!r}: a {self.source} source needs 'path'")
        if self.source == "sql" and (self.url is None or not self.table):
            raise ValueError(f"dataset {self.name!r}: an sql source needs 'url' and 'table'")
        DatasetSchema(columns=self.columns)
        return self

    @property
    def schema_(self) -> DatasetSchema:
        return DatasetSchema(columns=self.columns)


class PolicyConfig(BaseModel):
    """The hospital's rules. Authoritative: the node refuses what they forbid."""

    model_config = ConfigDict(extra="forbid")

    min_count: int = Field(5, ge=0)
    allowed_statistics: list[str] | None = None
    allowed_datasets: list[str] | None = None

    def summary(self) -> NodePolicySummary:
        return NodePolicySummary(
            min_count=self.min_count, allowed_statistics=self.allowed_statistics
        )


class NodeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    coordinator_url: str
    api_key: SecretStr
    mpc_host: str = "127.0.0.1"
    mpc_ports: str = "21000-21099"
    work_dir: Path = Path(".")
    poll_wait_s: float = Field(25.0, gt=0, le=120)
    log_format: Literal["text", "json"] = "text"
    policy: PolicyConfig = PolicyConfig()
    datasets: list[DatasetConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _checks(self) -> NodeSettings:
        low, high = self.port_range
        if not 1024 <= low <= high <= 65535:
            raise ValueError(f"mpc_ports {self.mpc_ports!r} must be a range like 21000-21099")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError("dataset names must be unique")
        return self

    @property
    def port_range(self) -> tuple[int, int]:
        try:
            low, _, high = self.mpc_ports.partition("-")
            return int(low), int(high or low)
        except ValueError:
            raise ValueError(
                f"mpc_ports {self.mpc_ports!r} is not a range like 21000-21099"
            ) from None

    def dataset(self, name: str) -> DatasetConfig | None:
        return next((d for d in self.datasets if d.name == name), None)

    @classmethod
    def load(cls, path: Path) -> NodeSettings:
        try:
            raw: dict[str, Any] = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigInvalid(f"configuration file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigInvalid(f"{path} is not valid TOML: {exc}") from None
        for key in ("name", "coordinator_url", "api_key", "mpc_host", "mpc_ports", "work_dir"):
            env = os.environ.get(f"TESSERA_{key.upper()}")
            if env:
                raw[key] = env
        base = path.resolve().parent
        for ds in raw.get("datasets", []) if isinstance(raw.get("datasets"), list) else []:
            if isinstance(ds, dict) and ds.get("path") and not Path(ds["path"]).is_absolute():
                ds["path"] = str(base / ds["path"])
        if raw.get("work_dir") and not Path(raw["work_dir"]).is_absolute():
            raw["work_dir"] = str(base / raw["work_dir"])
        raw.setdefault("work_dir", str(base))
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = str(first["msg"]).removeprefix("Value error, ")
            raise ConfigInvalid(
                f"{path}: {where}: {message}" if where else f"{path}: {message}",
                {"errors": len(exc.errors())},
            ) from None
