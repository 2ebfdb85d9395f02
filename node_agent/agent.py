"""`NodeAgent`: register, long-poll for tasks, decide, compute the local summary, run the party.

Each task runs in its own thread, so queries can overlap; each gets its own MPC port from the
node's range. What leaves the node: its declared schemas and policy summary (at start), its
accept/refuse decisions, and the *opened pooled* result of each protocol. The local summary
goes only to the node's own party process, on its standard input.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from contextlib import closing
from datetime import UTC, datetime

from node_agent.audit_log import AuditLog
from node_agent.config import NodeSettings
from node_agent.coordinator_client import CoordinatorClient
from node_agent.datasets import DatasetCache
from node_agent.policy import refusal
from tessera import __version__
from tessera.errors import Conflict, TesseraError
from tessera.schemas import NodeHello, TaskAccept, TaskOut, TaskResult

log = logging.getLogger("tessera.node")


class PortPool:
    """MPC listen ports from the node's range, one per task in flight."""

    def __init__(self, host: str, low: int, high: int) -> None:
        self.host, self.low, self.high = host, low, high
        self._busy: set[int] = set()
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            for port in range(self.low, self.high + 1):
                if port not in self._busy and self._bindable(port):
                    self._busy.add(port)
                    return port
        raise TesseraError(f"no free MPC port in {self.low}-{self.high}")

    def release(self, port: int) -> None:
        with self._lock:
            self._busy.discard(port)

    def _bindable(self, port: int) -> bool:
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self.host, port))
            except OSError:
                return False
        return True


class NodeAgent:
    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.stopping = threading.Event()
        self.client = CoordinatorClient(
            settings.coordinator_url, settings.api_key.get_secret_value(), self.stopping
        )
        self.cache = DatasetCache()
        self.ports = PortPool(settings.mpc_host, *settings.port_range)
        self.audit = AuditLog(settings.work_dir / "audit.jsonl")
        self._seen: set[int] = set()
        self._threads: list[threading.Thread] = []

    # ---- lifecycle ------------------------------------------------------------------------

    def check_datasets(self) -> dict[str, int]:
        """Load every dataset and check it against its declared schema (rows per dataset)."""
        return {ds.name: len(self.cache.get(ds)) for ds in self.settings.datasets}

    def register(self) -> None:
        self.client.hello(
            NodeHello(agent_version=__version__, policy=self.settings.policy.summary())
        )
        for ds in self.settings.datasets:
            self.client.register_dataset(ds.name, ds.schema_)
        log.info(
            "registered with %s: datasets %s",
            self.settings.coordinator_url,
            ", ".join(d.name for d in self.settings.datasets),
        )

    def run(self) -> None:
        """Serve until `stop()`; re-registers after the coordinator comes back."""
        self.check_datasets()
        self.register()
        healthy = True
        while not self.stopping.is_set():
            try:
                tasks = self.client.tasks(self.settings.poll_wait_s)
                if not healthy:
                    self.register()
                    healthy = True
            except TesseraError as exc:
                if self.stopping.is_set():
                    break
                log.warning("polling for tasks failed: %s", exc.message)
                healthy = False
                self.stopping.wait(1.0)
                continue
            for task in tasks:
                if task.id in self._seen:
                    continue
                self._seen.add(task.id)
                thread = threading.Thread(
                    target=self.handle, args=(task,), daemon=True, name=f"task-{task.id}"
                )
                thread.start()
                self._threads.append(thread)
            self._threads = [t for t in self._threads if t.is_alive()]
        self.shutdown()

    def stop(self) -> None:
        """Ask `run` to return (from another thread or a signal handler)."""
        self.stopping.set()

    def shutdown(self, grace_s: float = 5.0) -> None:
        """Give tasks in flight a moment to report, then close the connection."""
        self.stopping.set()
        deadline = time.monotonic() + grace_s
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.client.close()
        log.info("node agent stopped")

    # ---- one task -------------------------------------------------------------------------

    def handle(self, task: TaskOut) -> None:
        started = time.perf_counter()
        statistic = task.query.get("statistic")
        subject = {
            "task": task.id,
            "query": task.query_id,
            "statistic": statistic,
            "dataset": task.dataset,
        }
        self.audit.record("task.received", **subject)
        log.info(
            "task %s (query %s, %s on %s): received",
            task.id,
            task.query_id,
            statistic,
            task.dataset,
        )
        reason = refusal(self.settings, task.dataset, task.query)
        if reason is not None:
            self.audit.record("task.refused", reason=reason, **subject)
            log.info("task %s: refused (%s)", task.id, reason)
            self._quietly(self.client.reject, task.id, reason)
            return
        port = None
        try:
            job = self._prepare(task)
            port = self.ports.take()
            self.client.accept(task.id, TaskAccept(mpc_host=self.settings.mpc_host, mpc_port=port))
            self.audit.record("task.accepted", **subject)
            start = self._wait_for_start(task)
            if start is None:
                return
            self.client.progress(task.id, "mpc", f"party {task.party_id} of {task.n_parties}")
            outcome = self._run_party(task, job, start)
            self.client.result(
                task.id,
                TaskResult(
                    result=outcome.result,
                    min_count_applied=outcome.min_count_applied,
                    seconds=outcome.seconds,
                ),
            )
            self.audit.record(
                "result.opened", min_count_applied=outcome.min_count_applied, **subject
            )
            log.info(
                "task %s: done in %.2f s (protocol %.2f s)",
                task.id,
                time.perf_counter() - started,
                outcome.seconds,
            )
        except Conflict as exc:
            self.audit.record("task.abandoned", reason=exc.message, **subject)
            log.info("task %s: abandoned (%s)", task.id, exc.message)
        except TesseraError as exc:
            self.audit.record("task.failed", code=exc.code, reason=exc.message, **subject)
            log.warning("task %s: failed (%s: %s)", task.id, exc.code, exc.message)
            self._quietly(self.client.fail, task.id, exc.code, exc.message)
        except Exception as exc:  # never let a task thread die silently
            log.exception("task %s: unexpected error", task.id)
            self._quietly(self.client.fail, task.id, "node_error", type(exc).__name__)
        finally:
            if port is not None:
                self.ports.release(port)

    def _prepare(self, task: TaskOut) -> tuple[dict, object, object]:
        from smpc import local_summary, prepare

        ds = self.settings.dataset(task.dataset)
        assert ds is not None
        query = prepare(task.query, ds.schema_)
        summary = local_summary(query, self.cache.get(ds), ds.schema_)
        return query.to_json(), ds.schema_, summary

    def _wait_for_start(self, task: TaskOut):  # type: ignore[no-untyped-def]
        while not self.stopping.is_set():
            left = (task.deadline - datetime.now(UTC)).total_seconds()
            if left <= 0:
                raise TesseraError("the query's deadline passed before all nodes accepted")
            start = self.client.start(task.id, min(left, self.settings.poll_wait_s))
            if start.start:
                return start
        return None

    def _run_party(self, task: TaskOut, job: tuple, start):  # type: ignore[no-untyped-def]
        from smpc import PartyJob, run_party

        query, schema, summary = job
        deadline = start.deadline or task.deadline
        timeout = max(1.0, (deadline - datetime.now(UTC)).total_seconds())
        addresses = [(p.host, p.port) for p in sorted(start.parties, key=lambda p: p.party_id)]
        return run_party(
            PartyJob(
                query=query,
                schema=schema,
                summary=summary,
                party_id=task.party_id,
                parties=addresses,
                min_count_floor=self.settings.policy.min_count,
                timeout_s=timeout,
            )
        )

    @staticmethod
    def _quietly(call, *args) -> None:  # type: ignore[no-untyped-def]
        try:
            call(*args)
        except TesseraError as exc:
            log.warning("could not tell the coordinator: %s", exc.message)


def configure_logging(fmt: str) -> None:
    class JsonFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return json.dumps(
                {
                    "at": self.formatTime(record),
                    "level": record.levelname,
                    "logger": record.name,
                    "event": record.getMessage(),
                }
            )

    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
