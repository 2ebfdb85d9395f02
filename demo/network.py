"""A whole Tessera network on one machine: a coordinator and node agents as OS processes.

Used by `tessera demo`, the end-to-end tests and the latency benchmark. Everything listens on
127.0.0.1, on free ports, and `stop()` ends every process it started.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from node_agent.identity import NodeIdentity, TrustedPeers
from tessera.errors import ProtocolFailed
from tessera.schemas import DatasetSchema


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _toml_table(values: dict[str, Any]) -> list[str]:
    return [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]


@dataclass
class DataSource:
    """One dataset a node serves: `source` is csv, parquet or sql (with `url` and `table`)."""

    name: str
    source: str
    schema: DatasetSchema
    path: str | None = None
    url: str | None = None
    table: str | None = None


@dataclass
class NodeSpec:
    name: str
    organisation: str
    datasets: list[DataSource]
    min_count: int = 5
    allowed_statistics: list[str] | None = None
    # Differential privacy (docs/node-agent.md): per study and dataset, and optionally per
    # dataset over all studies. None: not set (no budget: queries with dp are refused).
    dp_epsilon_budget: float | None = None
    dp_delta_budget: float | None = None
    dp_epsilon_total: float | None = None
    dp_delta_total: float | None = None
    # `[policy.synthesis]` (docs/node-agent.md), its `gates` and `stewards` (name -> public
    # key) tables of their own; None: the node trains no generator.
    synthesis: dict[str, Any] | None = None
    # `[policy.disclosure]` (tessera.schemas.DisclosureRules: `mode` "exact" or "dp" and the
    # rules), for every dataset of the node; None: the defaults (exact).
    disclosure: dict[str, Any] | None = None
    # Manual approval of query shapes (`approval = "manual"`, `approval_timeout_s`) and the
    # stewards who give it (`[policy.stewards]`: name -> public key); None: not set (auto).
    approval: str | None = None
    approval_timeout_s: float | None = None
    stewards: dict[str, str] | None = None
    # MPC protocols the node runs at once (None: the default, 4)
    max_concurrent_protocols: int | None = None


def node_config(
    spec: NodeSpec,
    coordinator_url: str,
    api_key: str,
    work_dir: Path,
    enrolment_token: str | None = None,
) -> str:
    """The node's TOML configuration file (see docs/node-agent.md)."""
    port = free_port()
    lines = _toml_table(
        {
            "name": spec.name,
            "coordinator_url": coordinator_url,
            "api_key": api_key,
            "enrolment_token": enrolment_token,
            "mpc_host": "127.0.0.1",
            "mpc_ports": f"{port}-{port + 9}" if port < 65000 else "21000-21009",
            "work_dir": str(work_dir),
            "poll_wait_s": 10,
            "max_concurrent_protocols": spec.max_concurrent_protocols,
        }
    )
    lines += ["", "[policy]"]
    lines += _toml_table(
        {
            "min_count": spec.min_count,
            "allowed_statistics": spec.allowed_statistics,
            "dp_epsilon_budget": spec.dp_epsilon_budget,
            "dp_delta_budget": spec.dp_delta_budget,
            "dp_epsilon_total": spec.dp_epsilon_total,
            "dp_delta_total": spec.dp_delta_total,
            "approval": spec.approval,
            "approval_timeout_s": spec.approval_timeout_s,
        }
    )
    if spec.stewards:
        lines += ["", "[policy.stewards]"]
        lines += [f"{json.dumps(n)} = {json.dumps(k)}" for n, k in spec.stewards.items()]
    if spec.disclosure is not None:
        lines += ["", "[policy.disclosure]", *_toml_table(spec.disclosure)]
    if spec.synthesis is not None:
        rules = dict(spec.synthesis)
        gates = rules.pop("gates", None)
        keyed = isinstance(rules.get("stewards"), dict)  # name -> public key
        stewards = rules.pop("stewards") if keyed else None
        lines += ["", "[policy.synthesis]", *_toml_table(rules)]
        if gates:
            lines += ["", "[policy.synthesis.gates]", *_toml_table(gates)]
        if stewards:
            lines += ["", "[policy.synthesis.stewards]"]
            lines += [f"{json.dumps(name)} = {json.dumps(key)}" for name, key in stewards.items()]
    for ds in spec.datasets:
        lines += ["", "[[datasets]]"]
        lines += _toml_table(
            {
                "name": ds.name,
                "source": ds.source,
                "path": ds.path,
                "url": ds.url,
                "table": ds.table,
            }
        )
        for col in ds.schema.columns:
            lines += ["", "[[datasets.columns]]"]
            lines += _toml_table(
                col.model_dump(exclude_none=True, exclude_defaults=True)
                | {"name": col.name, "type": col.type}
            )
    return "\n".join(lines) + "\n"


def introduce(nodes: dict[str, Path]) -> None:
    """What `tessera node init` and `tessera node trust` do, for nodes on one machine: each
    node (name → work_dir) gets an identity if it has none, and trusts every other's key."""
    for name, work_dir in nodes.items():
        if not NodeIdentity.exists(work_dir):
            NodeIdentity.create(work_dir, name)
    keys = {name: NodeIdentity.load(d, name).fingerprint for name, d in nodes.items()}
    for name, work_dir in nodes.items():
        trusted = TrustedPeers(work_dir)
        known = trusted.read()
        for other, fp in keys.items():
            if other != name and known.get(other) != fp:
                trusted.trust(other, fp)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
            self.popen.wait()

    def tail(self, lines: int = 20) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def cli_command(*args: str) -> list[str]:
    """The argv that runs `tessera ARGS...` with this interpreter."""
    return [sys.executable, "-m", "cli.main", *args]


_cli = cli_command


@dataclass
class Network:
    """A coordinator plus node agents, started and stopped together."""

    root: Path
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    port: int = field(default_factory=free_port)
    coordinator: Process | None = None
    nodes: dict[str, Process] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str]) -> Process:
        log_path = self.root / f"{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - closed by Process.stop
        popen = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            cwd=self.root,
        )
        return Process(name, popen, log_path, log)

    def start_coordinator(self, database_url: str | None = None, **settings: Any) -> None:
        """Start (or restart) the coordinator and wait until it answers."""
        if not self.settings:
            self.settings = {
                "TESSERA_DATABASE_URL": database_url or f"sqlite:///{self.root / 'coordinator.db'}",
                "TESSERA_JWT_SECRET": secrets.token_urlsafe(32),
                "TESSERA_BOOTSTRAP_ADMIN_USERNAME": "admin",
                "TESSERA_BOOTSTRAP_ADMIN_PASSWORD": self.admin_password,
            }
            self.settings |= {f"TESSERA_{k.upper()}": str(v) for k, v in settings.items()}
        argv = _cli("coordinator", "serve", "--host", "127.0.0.1", "--port", str(self.port))
        self.coordinator = self._spawn("coordinator", argv, self.settings)
        self.wait_ready(self.coordinator)

    def wait_ready(self, proc: Process, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise ProtocolFailed(f"the coordinator exited:\n{proc.tail()}")
            try:
                if httpx.get(f"{self.url}/api/v1/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise ProtocolFailed(f"the coordinator did not answer within {timeout:.0f} s")

    def start_node(
        self,
        spec: NodeSpec,
        api_key: str,
        enrolment_token: str | None = None,
        *,
        introduce: bool = True,
    ) -> Process:
        """Write the node's configuration (with the API key and the one-time enrolment token
        `POST /nodes` answered), make its identity on first start (what `tessera node init`
        does) and, with `introduce`, have it and every node started before trust
        each other's keys (what the hospitals' stewards do out of band, `tessera node
        trust`); then start its agent."""
        work_dir = self.root / spec.name
        work_dir.mkdir(exist_ok=True)
        config = work_dir / "node.toml"
        config.write_text(node_config(spec, self.url, api_key, work_dir, enrolment_token))
        config.chmod(0o600)
        if not NodeIdentity.exists(work_dir):
            NodeIdentity.create(work_dir, spec.name)
        if introduce:
            self.introduce(spec.name)
        proc = self._spawn(spec.name, _cli("node", "run", "--config", str(config)), {})
        self.nodes[spec.name] = proc
        return proc

    def fingerprint(self, name: str) -> str:
        return NodeIdentity.load(self.root / name, name).fingerprint

    def introduce(self, name: str) -> None:
        """Node `name` and every other node of this network with an identity trust each
        other (each side's own list: `node_agent.identity.TrustedPeers`)."""
        nodes = {
            d.name: d
            for d in sorted(self.root.iterdir())
            if d.is_dir() and (d.name == name or NodeIdentity.exists(d))
        }
        introduce(nodes)

    def stop(self) -> None:
        """SIGTERM every process at once, then wait for each (SIGKILL after 10 s)."""
        procs = [*self.nodes.values(), *([self.coordinator] if self.coordinator else [])]
        for proc in procs:
            if proc.alive():
                proc.popen.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.stop()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
