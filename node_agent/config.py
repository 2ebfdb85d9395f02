"""The node's configuration: a TOML file (`tessera node run --config node.toml`).

Environment variables `TESSERA_<KEY>` override the file's top-level keys (`TESSERA_API_KEY`,
`TESSERA_COORDINATOR_URL`, ...) and `TESSERA_POLICY__<KEY>` the policy's (the policy can only
be set, not widened behind the steward's back: an override is as visible as the file). Paths
in the file (dataset `path`, relative SQLite URLs, `work_dir`, `api_key_file`) are resolved
against the file's folder. See docs/node-agent.md for the full reference.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tessera.errors import ConfigInvalid
from tessera.schemas import (
    MAX_ROWS,
    MAX_THRESHOLD,
    ColumnSpec,
    DatasetSchema,
    DisclosureRules,
    DPBudget,
    DPTotal,
    Name,
    NodePolicySummary,
    SynthesisPolicySummary,
)
from tessera.settings import ENV_PREFIX, read_toml


class DatasetConfig(BaseModel):
    """One named dataset: where its rows are, and its declared schema (the only columns read)."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    source: Literal["csv", "parquet", "sql"]
    path: Path | None = None
    url: SecretStr | None = None  # may hold database credentials: never logged
    table: str | None = None
    delimiter: str = Field(",", min_length=1, max_length=1)
    reload_after_s: float = Field(600.0, gt=0)
    columns: list[ColumnSpec] = Field(min_length=1)
    # the row count this node declares and publishes with the schema; absent: each run
    # declares the loaded dataset's actual row count to the MPC only (never published)
    rows: int | None = Field(None, ge=0, le=MAX_ROWS)

    @model_validator(mode="after")
    def _location(self) -> DatasetConfig:
        if self.source in ("csv", "parquet"):
            if self.path is None:
                raise ValueError(f"a {self.source} source needs 'path'")
            if self.url is not None or self.table is not None:
                raise ValueError(f"a {self.source} source takes 'path', not 'url' or 'table'")
        else:
            if self.url is None or not self.table:
                raise ValueError("an sql source needs 'url' (a SQLAlchemy URL) and 'table'")
            if self.path is not None:
                raise ValueError("an sql source takes 'url' and 'table', not 'path'")
        DatasetSchema(columns=self.columns)  # repeated column names
        return self

    @property
    def schema_(self) -> DatasetSchema:
        """The schema the node publishes: the columns, and `rows` if configured."""
        return DatasetSchema(columns=self.columns, rows=self.rows)

    def declared(self, frame_rows: int) -> DatasetSchema:
        """The schema handed to this node's party process: `rows` as configured, or else the
        loaded dataset's actual row count (every site's counts are checked against it inside
        MPC: `smpc.disclosure.prelude`)."""
        return DatasetSchema(
            columns=self.columns, rows=frame_rows if self.rows is None else self.rows
        )

    def describe(self) -> str:
        """Where the rows are, for logs and `tessera node check` (no credentials)."""
        if self.source == "sql":
            assert self.url is not None
            from sqlalchemy.engine import make_url

            safe = make_url(self.url.get_secret_value()).render_as_string(hide_password=True)
            return f"sql table {self.table!r} at {safe}"
        return f"{self.source} file {self.path}"


class DatasetDPConfig(BaseModel):
    """A dataset's own differential-privacy limits (`[policy.dp_budgets.NAME]`).

    `epsilon` and `delta` are what each study may spend on it, instead of the policy's
    `dp_epsilon_budget` and `dp_delta_budget` (delta 0 unless given; neither given: the
    policy's). `epsilon_total` and `delta_total` cap all studies together on it, each instead
    of the policy's `dp_epsilon_total` / `dp_delta_total` (absent: the policy's, if any)."""

    model_config = ConfigDict(extra="forbid")

    epsilon: float | None = Field(None, ge=0, allow_inf_nan=False)
    delta: float | None = Field(None, ge=0, lt=1)
    epsilon_total: float | None = Field(None, ge=0, allow_inf_nan=False)
    delta_total: float | None = Field(None, ge=0, lt=1)

    @model_validator(mode="after")
    def _delta_needs_epsilon(self) -> DatasetDPConfig:
        if self.delta is not None and self.epsilon is None:
            raise ValueError("delta needs epsilon (the budget of each study on this dataset)")
        return self

    def budget(self) -> DPBudget | None:
        """This dataset's own budget per study; None: the policy's default applies."""
        if self.epsilon is None:
            return None
        return DPBudget(epsilon=self.epsilon, delta=self.delta or 0.0)


def steward_keys(value: dict[str, str]) -> dict[str, str]:
    """A stewards table (name -> `ed25519:` public key) checked: names 1-64 characters, keys
    that parse (in their canonical form), and no key under two names (one key counts once)."""
    from tessera.stewards import KeyInvalid, normal_key

    keys: dict[str, str] = {}
    for name, text in value.items():
        if not name.strip() or len(name) > 64 or name != name.strip():
            raise ValueError(f"steward name {name!r} must be 1-64 characters, no outer spaces")
        try:
            key = normal_key(text)
        except KeyInvalid as exc:
            raise ValueError(f"steward {name!r}: {exc}") from None
        if key in keys.values():
            other = next(n for n, k in keys.items() if k == key)
            raise ValueError(
                f"stewards {other!r} and {name!r} share one public key; each steward needs "
                "their own (one key counts once)"
            )
        keys[name] = key
    return keys


class SynthesisPolicyConfig(BaseModel):
    """What this node lets a generator do (`[policy.synthesis]`; absent: it trains none).

    `stewards` is a table of the people who may approve or reject a candidate, each by name and
    Ed25519 public key (`[policy.synthesis.stewards]`, `ada = "ed25519:..."`, the line
    `tessera steward keygen` prints); a decision counts only as a signature by that key
    (`tessera steward approve JOB --key FILE`), and one key counts once.
    `approvals_required` distinct stewards must approve before anything is uploaded.
    `holdout_min` is the smallest share of rows a request may hold out for evaluation.
    `device` is where torch generators train (`auto`: CUDA when present); at most
    `max_concurrent_jobs` jobs train at once (the others wait, their deadlines running).
    `max_training_seconds` is checked when training returns: a generator that trained longer
    fails its job instead of going on to sampling. `gates` are the release gates every candidate
    must pass (the fields of `synth.gates.ReleaseGates`; absent ones keep its defaults).
    `pooled` lets this node's training rows take part in pooled syntheses: MST's noisy
    marginals measured by MPC with at least two other nodes (`synth.pooled`), charged to this
    node's privacy budget, one candidate evaluated against this node's own held-out rows and
    released only when every node's stewards approved it.
    """

    model_config = ConfigDict(extra="forbid")

    generators: list[str] = Field(min_length=1)
    dp_required: bool = False
    max_epsilon: float | None = Field(None, gt=0, allow_inf_nan=False)
    default_delta: float = Field(1e-6, gt=0, lt=1e-3)
    max_rows: int | None = Field(None, ge=1)
    max_training_seconds: float | None = Field(None, gt=0)
    stewards: dict[str, str] = Field(min_length=1)
    approvals_required: int = Field(1, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_concurrent_jobs: int = Field(1, ge=1, le=16)  # workers training at once
    holdout_min: float = Field(0.1, ge=0.05, le=0.5)
    gates: dict[str, float | bool | None] = {}
    pooled: bool = False

    @field_validator("generators")
    @classmethod
    def _known_generators(cls, value: list[str]) -> list[str]:
        from synth import generator_names

        known = generator_names()
        unknown = [g for g in value if g not in known]
        if unknown:
            raise ValueError(
                f"unknown generator(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}"
            )
        return list(dict.fromkeys(value))

    @field_validator("stewards", mode="before")
    @classmethod
    def _names_need_keys(cls, value: Any) -> Any:
        if isinstance(value, list):
            names = ", ".join(str(v) for v in value) or "none"
            raise ValueError(
                f"stewards lists names only ({names}); each steward now signs with their own "
                "key: have each run `tessera steward keygen --out DIR --name NAME` and list "
                'them as a table, [policy.synthesis.stewards] NAME = "ed25519:..." (no '
                "candidate is released by names alone)"
            )
        return value

    @field_validator("stewards")
    @classmethod
    def _steward_keys(cls, value: dict[str, str]) -> dict[str, str]:
        return steward_keys(value)

    @field_validator("gates")
    @classmethod
    def _gate_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        from synth.gates import ReleaseGates

        try:
            ReleaseGates(**value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid release gates: {exc}") from None
        return value

    @model_validator(mode="after")
    def _coherent(self) -> SynthesisPolicyConfig:
        if self.approvals_required > len(self.stewards):
            raise ValueError(
                f"approvals_required ({self.approvals_required}) exceeds the number of "
                f"stewards ({len(self.stewards)})"
            )
        from synth import dp_generators

        private = dp_generators()
        if self.dp_required and not set(self.generators) & set(private):
            raise ValueError(
                "dp_required allows only differentially private generators "
                f"({', '.join(private)}), and none is in generators"
            )
        return self

    def release_gates(self) -> Any:
        """The `synth.gates.ReleaseGates` every candidate is held to."""
        from synth.gates import ReleaseGates

        return ReleaseGates(**self.gates)  # type: ignore[arg-type]

    def summary(self) -> SynthesisPolicySummary:
        return SynthesisPolicySummary(
            generators=self.generators,
            dp_required=self.dp_required,
            max_epsilon=self.max_epsilon,
            max_rows=self.max_rows,
            approvals_required=self.approvals_required,
            pooled=self.pooled,
            stewards=dict(self.stewards),
        )


class PolicyConfig(BaseModel):
    """The hospital's rules. Authoritative: the node refuses what they forbid, whatever the
    coordinator says."""

    model_config = ConfigDict(extra="forbid")

    min_count: int = Field(5, ge=0, le=MAX_THRESHOLD)
    allowed_statistics: list[str] | None = None
    allowed_datasets: list[str] | None = None
    # Differential privacy: what each study may spend on each dataset (sums of the queries'
    # epsilon and delta). No budget: every query with `dp` is refused.
    dp_epsilon_budget: float | None = Field(None, ge=0, allow_inf_nan=False)
    dp_delta_budget: float | None = Field(None, ge=0, lt=1)
    # Optional caps on all studies together, per dataset (absent: each study's budget only).
    dp_epsilon_total: float | None = Field(None, ge=0, allow_inf_nan=False)
    dp_delta_total: float | None = Field(None, ge=0, lt=1)
    dp_budgets: dict[str, DatasetDPConfig] = {}  # a dataset's own limits, instead
    # Disclosure mode ("exact" or "dp") and rules (smpc.disclosure), for every dataset unless
    # the dataset has its own entry in `dataset_disclosure`.
    disclosure: DisclosureRules = DisclosureRules()
    dataset_disclosure: dict[str, DisclosureRules] = {}
    synthesis: SynthesisPolicyConfig | None = None  # None: this node trains no generator
    # Manual approval of query shapes (node_agent.query_approval): "manual" holds a task whose
    # shape no steward of this node approved before until one does, or `approval_timeout_s`
    # passes (then it is refused). Per dataset in `dataset_approval`; the stewards who decide
    # are `[policy.stewards]` (name -> public key), else `[policy.synthesis.stewards]`.
    approval: Literal["auto", "manual"] = "auto"
    dataset_approval: dict[str, Literal["auto", "manual"]] = {}
    approval_timeout_s: float = Field(3600.0, gt=0, le=30 * 86400)
    stewards: dict[str, str] = {}

    @field_validator("stewards")
    @classmethod
    def _steward_keys(cls, value: dict[str, str]) -> dict[str, str]:
        return steward_keys(value)

    @model_validator(mode="after")
    def _delta_needs_epsilon(self) -> PolicyConfig:
        if self.dp_delta_budget is not None and self.dp_epsilon_budget is None:
            raise ValueError("dp_delta_budget needs dp_epsilon_budget")
        return self

    @model_validator(mode="after")
    def _manual_needs_stewards(self) -> PolicyConfig:
        manual = self.approval == "manual" or "manual" in self.dataset_approval.values()
        if manual and not self.query_stewards:
            raise ValueError(
                'approval = "manual" needs stewards to approve queries: list them with their '
                'public keys in [policy.stewards] (NAME = "ed25519:...", from `tessera steward '
                "keygen`)"
            )
        return self

    def approval_mode(self, dataset: str) -> str:
        """ "auto" or "manual": whether a query on `dataset` needs a steward's approval of its
        shape."""
        return self.dataset_approval.get(dataset, self.approval)

    @property
    def query_stewards(self) -> dict[str, str]:
        """Who approves queries: `[policy.stewards]`, else the synthesis stewards."""
        if self.stewards:
            return dict(self.stewards)
        return dict(self.synthesis.stewards) if self.synthesis is not None else {}

    @property
    def dp_budget(self) -> DPBudget | None:
        """The default budget of one study on one dataset (None: DP queries are refused)."""
        if self.dp_epsilon_budget is None:
            return None
        return DPBudget(epsilon=self.dp_epsilon_budget, delta=self.dp_delta_budget or 0.0)

    @property
    def dp_total(self) -> DPTotal | None:
        """The default cap on all studies together on one dataset (None: no such cap)."""
        if self.dp_epsilon_total is None and self.dp_delta_total is None:
            return None
        return DPTotal(epsilon=self.dp_epsilon_total, delta=self.dp_delta_total)

    def _dataset_total(self, own: DatasetDPConfig) -> DPTotal | None:
        epsilon = own.epsilon_total if own.epsilon_total is not None else self.dp_epsilon_total
        delta = own.delta_total if own.delta_total is not None else self.dp_delta_total
        if epsilon is None and delta is None:
            return None
        return DPTotal(epsilon=epsilon, delta=delta)

    @field_validator("allowed_statistics")
    @classmethod
    def _known_statistics(cls, value: list[str] | None) -> list[str] | None:
        from smpc.statistics import STATISTICS

        unknown = [s for s in value or [] if s not in STATISTICS]
        if unknown:
            raise ValueError(
                f"unknown statistic(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(STATISTICS)}"
            )
        return value

    def summary(self) -> NodePolicySummary:
        return NodePolicySummary(
            min_count=self.min_count,
            allowed_statistics=self.allowed_statistics,
            disclosure=self.disclosure,
            dataset_disclosure=self.dataset_disclosure,
            dp_budget=self.dp_budget,
            dp_dataset_budgets={
                name: budget
                for name, own in self.dp_budgets.items()
                if (budget := own.budget()) is not None
            },
            dp_total=self.dp_total,
            dp_dataset_totals={
                name: total
                for name, own in self.dp_budgets.items()
                if (own.epsilon_total is not None or own.delta_total is not None)
                and (total := self._dataset_total(own)) is not None
            },
            synthesis=self.synthesis.summary() if self.synthesis is not None else None,
        )


class NodeSettings(BaseSettings):
    """Everything one node agent process needs. Build with `NodeSettings.load(path)`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid"
    )

    name: str = Field(min_length=1, max_length=64)
    # "production": the coordinator only over https://, and no loopback peer addresses
    environment: Literal["local", "production"] = "local"
    coordinator_url: str = Field(pattern=r"^https?://\S+$")
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    # the one-time token that registers the node's key at its first start (from enrolment, or
    # from an administrator's reset of its identity); not needed once the key is registered
    enrolment_token: SecretStr | None = None
    mpc_host: str = Field("127.0.0.1", min_length=1)
    mpc_bind_host: str | None = None  # where the party listens, if not at mpc_host (NAT, LB)
    mpc_ports: str = "21000-21099"
    # MPC protocols this node runs at once (one port each); the others wait in the
    # coordinator's order (node_agent/slots.py)
    max_concurrent_protocols: int = Field(4, ge=1, le=64)
    work_dir: Path = Path(".")
    poll_wait_s: float = Field(25.0, gt=0, le=120)
    # the coordinator's signing key fingerprint (`sha256:...`, from its operator out of band);
    # unset: trusted on first use and kept in work_dir/identity/coordinator_key.pem
    coordinator_key: str | None = None
    log_format: Literal["text", "json"] = "text"
    policy: PolicyConfig = PolicyConfig()
    datasets: list[DatasetConfig] = Field(min_length=1)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values come in as init arguments; the environment overrides them.
        return (env_settings, init_settings)

    @field_validator("coordinator_key")
    @classmethod
    def _fingerprint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from tessera.errors import InvalidRequest
        from tessera.fingerprints import normalise

        try:
            return normalise(value)
        except InvalidRequest:
            raise ValueError(
                f"{value!r} is not a key fingerprint (sha256: and 64 hex digits, as "
                "GET /api/v1/coordinator/key gives it)"
            ) from None

    @field_validator("mpc_ports", mode="before")
    @classmethod
    def _port_range(cls, value: Any) -> Any:
        text = str(value).strip() if isinstance(value, int | str) else value
        if isinstance(text, str):
            low, high = _parse_range(text)
            if not 1024 <= low <= high <= 65535:
                raise ValueError(f"{text!r} must be a range like 21000-21099 within 1024-65535")
        return text

    @model_validator(mode="after")
    def _checks(self) -> NodeSettings:
        names = [d.name for d in self.datasets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"dataset name(s) used twice: {', '.join(dupes)}")
        unknown = sorted(set(self.policy.dp_budgets) - set(names))
        if unknown:
            raise ValueError(
                f"policy.dp_budgets names dataset(s) not declared here: {', '.join(unknown)}"
            )
        if self.environment == "production" and not self.coordinator_url.startswith("https://"):
            raise ValueError(
                "coordinator_url must be https:// in production (the API key and every task "
                'travel on it); http:// is for environment = "local" only'
            )
        if self.api_key is None:
            if self.api_key_file is None:
                raise ValueError(f"no API key: set api_key, api_key_file or {ENV_PREFIX}API_KEY")
            try:
                key = self.api_key_file.read_text().strip()
            except OSError as exc:
                raise ValueError(
                    f"api_key_file {self.api_key_file} cannot be read: {exc.strerror}"
                ) from None
            if not key:
                raise ValueError(f"api_key_file {self.api_key_file} is empty")
            self.api_key = SecretStr(key)
        return self

    @property
    def port_range(self) -> tuple[int, int]:
        return _parse_range(self.mpc_ports)

    @property
    def listen_host(self) -> str:
        """The local address the node's MPC party binds (`mpc_bind_host`, else `mpc_host`)."""
        return self.mpc_bind_host or self.mpc_host

    @property
    def key(self) -> str:
        """The API key (sent to the coordinator in a header; never logged)."""
        assert self.api_key is not None
        return self.api_key.get_secret_value()

    @property
    def audit_path(self) -> Path:
        return self.work_dir / "audit.jsonl"

    @property
    def synthesis_dir(self) -> Path:
        """Where candidates are written (`job-<id>/`) and their store kept."""
        return self.work_dir / "synthesis"

    @property
    def candidates_path(self) -> Path:
        """The candidate store (SQLite): candidates and the stewards' decisions."""
        return self.synthesis_dir / "candidates.sqlite3"

    @property
    def query_approvals_path(self) -> Path:
        """The steward queue of held queries and the stewards' signed decisions (SQLite)."""
        return self.work_dir / "query_approvals.sqlite3"

    @property
    def ledger_path(self) -> Path:
        """The privacy budget ledger (SQLite): what each study spent on each dataset."""
        return self.work_dir / "budget.sqlite3"

    def dataset(self, name: str) -> DatasetConfig | None:
        return next((d for d in self.datasets if d.name == name), None)

    @classmethod
    def load(cls, path: Path) -> NodeSettings:
        """Read, resolve and validate a node's TOML file; `ConfigInvalid` names file, key and
        problem."""
        raw = read_toml(path)
        _resolve_paths(raw, path.resolve().parent)
        try:
            return cls(**raw)
        except ValidationError as exc:
            raise ConfigInvalid(_explain(path, raw, exc), {"problems": exc.error_count()}) from None


def _parse_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    try:
        return int(low), int(high if sep else low)
    except ValueError:
        raise ValueError(f"{text!r} is not a port range like 21000-21099") from None


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Relative paths in the file are relative to the file, not to the current directory."""

    def absolute(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            return str(base / value)
        return value

    raw["work_dir"] = absolute(raw.get("work_dir", "."))
    if "api_key_file" in raw:
        raw["api_key_file"] = absolute(raw["api_key_file"])
    datasets = raw.get("datasets")
    for ds in datasets if isinstance(datasets, list) else []:
        if not isinstance(ds, dict):
            continue
        if "path" in ds:
            ds["path"] = absolute(ds["path"])
        if isinstance(ds.get("url"), str):
            ds["url"] = _resolve_sqlite(ds["url"], base)


def _resolve_sqlite(url: str, base: Path) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return url  # reported by the dataset's validation when it is used
    database = parsed.database
    if (
        parsed.get_backend_name() == "sqlite"
        and database
        and database != ":memory:"
        and not database.startswith("file:")
        and not Path(database).is_absolute()
    ):
        return parsed.set(database=str(base / database)).render_as_string(hide_password=False)
    return url


def _explain(path: Path, raw: dict[str, Any], exc: ValidationError) -> str:
    """One line: the file, the first offending key (dataset names instead of indexes), why."""
    first = exc.errors()[0]
    loc = list(first["loc"])
    where: list[str] = []
    node: Any = raw
    for part in loc:
        if isinstance(part, int) and isinstance(node, list):
            item = node[part] if part < len(node) else None
            label = item.get("name") if isinstance(item, dict) else None
            where[-1] = f"{where[-1]}[{label!r}]" if label else f"{where[-1]}[{part}]"
            node = item
        else:
            where.append(str(part))
            node = node.get(part) if isinstance(node, dict) else None
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "missing":
        message = "required key is missing"
    elif first["type"] == "extra_forbidden":
        message = "unknown key"
    key = ".".join(where)
    names: list[str] = []
    for part in loc:
        if not isinstance(part, str):
            break
        names.append(part)
        env = (ENV_PREFIX + "__".join(names)).upper()
        if env in os.environ:
            key += f" (from {env})"
            break
    more = exc.error_count() - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{path}: {key}: {message}{tail}" if key else f"{path}: {message}{tail}"
