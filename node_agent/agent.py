"""`NodeAgent`: register, long-poll for tasks, decide, compute the local summary, run the party;
and run synthesis jobs (`node_agent.synthesis`).

Each task runs in its own thread, so queries can overlap; each gets its own MPC port from the
node's range and a fresh TLS key with a certificate issued by the node's long-term key
(`node_agent.identity`, `smpc.tls`); the run goes ahead only with parties whose keys the
hospital trusts (`node_agent.peers`). What
leaves the node: its declared schemas and policy summary (at start), its accept/refuse
decisions (with the reason), the MPC address and certificate of each run, progress notes,
failure codes, the *opened pooled* result of each protocol, and its privacy ledger (the zCDP
rho spent per study and dataset, and the (epsilon, delta) it amounts to). The local summary
and the TLS key go only to the node's own party process (on its standard input); rows never
leave the process that read them.

Every task must carry the coordinator's signature of its statement (who asked, in which study,
for which query; `tessera.signing`), checked with the coordinator key the node pinned
(`node_agent.coordinator_key`): a task unsigned, or signed by another key, or whose fields
differ from what was signed, is refused and audited. The node's audit log is signed by its own
key; with each poll the node sends its log head and records the coordinator's signed chain head
when it changed, so neither side can rewrite its log alone (`tessera audit verify`).

A query with `dp` (and a DP synthesis job) is charged to its study's allocation of the
dataset's privacy budget when the node accepts it, and refused if that would exceed the
allocation or the dataset's total over all studies (`node_agent.budget`); after each charge the
whole ledger is sent to the coordinator, one report at a time, from a thread of its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from node_agent.audit_log import AuditLog
from node_agent.budget import PrivacyLedger, Spent
from node_agent.config import NodeSettings
from node_agent.coordinator_client import AgentStopping, Backoff, CoordinatorClient
from node_agent.coordinator_key import pin
from node_agent.datasets import DatasetCache
from node_agent.identity import NodeIdentity, TrustedPeers
from node_agent.peers import check_parties, run_id
from node_agent.policy import Policy
from node_agent.ports import PortPool
from node_agent.query_approval import QueryApprovals
from node_agent.slots import ProtocolSlots
from node_agent.synthesis import MPCContext, SynthesisService
from tessera import __version__
from tessera.errors import (
    BudgetExceeded,
    ConfigInvalid,
    Conflict,
    PeerLost,
    ProtocolFailed,
    TesseraError,
    Unauthorized,
)
from tessera.privacy import text
from tessera.schemas import (
    DatasetSchema,
    DPBudget,
    DPTotal,
    NodeHello,
    SynthesisJobOut,
    TaskAccept,
    TaskOut,
    TaskResult,
    TaskStart,
)
from tessera.signing import (
    audit_message,
    statement_hash,
    statement_message,
    synthesis_message,
    verify_ed25519,
)

if TYPE_CHECKING:
    from smpc import LocalSummary, PartyJob, PartyOutcome
    from smpc.query import DPSpec
    from smpc.statistics import SecureStatistic

log = logging.getLogger("tessera.node")

PartyRunner = Callable[["PartyJob"], "PartyOutcome"]


class _Interrupted(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT to cut a long-poll short."""


def _event(level: int, event: str, message: str, *args: Any, **fields: Any) -> None:
    log.log(level, message, *args, extra={"event": event, "fields": fields})


@dataclass
class _Prepared:
    query: dict[str, Any]
    dataset: Any
    summary: LocalSummary
    key_pem: str = ""  # this run's TLS key: only ever handed to our own party process
    certificate: str = ""
    dp: DPSpec | None = None
    schema: DatasetSchema | None = None  # as declared to the party process (`rows` set)


QUEUED_NOTICE_S = 5.0  # a task waiting this long for a protocol slot tells the coordinator


def _seconds(since: float) -> float:
    return round(time.perf_counter() - since, 3)


class NodeAgent:
    """One hospital's agent. `run()` blocks until `stop()` (or SIGTERM/SIGINT)."""

    def __init__(
        self,
        settings: NodeSettings,
        client: CoordinatorClient | None = None,
        run_party: PartyRunner | None = None,
    ) -> None:
        self.settings = settings
        self.stopping = threading.Event()
        self._reconnected = threading.Event()
        self.client = client or CoordinatorClient(
            settings.coordinator_url, settings.key, self.stopping
        )
        self.client.on_reconnect = self._reconnected.set
        self._run_party = run_party
        self.policy = Policy(settings.policy, settings.datasets)
        self.cache = DatasetCache()
        self.ports = PortPool(settings.listen_host, *settings.port_range)
        self.slots = ProtocolSlots(settings.max_concurrent_protocols, self.ports)
        self.audit: AuditLog | None = None
        self._identity: NodeIdentity | None = None
        self.trusted = TrustedPeers(settings.work_dir)
        self.coordinator_key_pem: str | None = None  # pinned at registration
        self._coordinator_head: tuple[int, str, str] | None = None  # last recorded
        self.registered = threading.Event()
        self._seen: set[int] = set()
        self._threads: dict[int, threading.Thread] = {}
        self._waiting: set[int] = set()  # tasks from their accept until their go
        self._waiting_lock = threading.Lock()
        self._lock_file: IO[str] | None = None
        self._ledger: PrivacyLedger | None = None
        self._ledger_lock = threading.Lock()
        self._report_lock = threading.Lock()  # one budget report at a time, in order
        self._budget_changed = threading.Event()
        self._reporter: threading.Thread | None = None
        self.synthesis = SynthesisService(
            settings,
            self.client,
            self.policy,
            self._audit,
            self.stopping,
            self.charge_synthesis,
            MPCContext(self.ports, lambda: self.identity, self.trusted),
            self._job_signature_problem,
        )
        self.query_approvals = QueryApprovals(settings, self._audit, self._tell, self.stopping)

    # ---- lifecycle ------------------------------------------------------------------------

    def check_datasets(self) -> dict[str, int]:
        """Load every dataset and check it against its declared schema (rows per dataset)."""
        return {ds.name: len(self.cache.get(ds)) for ds in self.settings.datasets}

    @property
    def identity(self) -> NodeIdentity:
        """The node's long-term key (`tessera node init`), loaded once: it issues each run's
        TLS certificate and signs the node's audit log."""
        if self._identity is None:
            self._identity = NodeIdentity.load(self.settings.work_dir, self.settings.name)
        return self._identity

    def pin_coordinator_key(self) -> str:
        """Check the coordinator's signing key against the pinned one (`ConfigInvalid`, logged,
        if it changed) and keep it: every task's signature is checked with it."""
        try:
            pem = pin(
                self.settings.work_dir, self.client.coordinator_key(), self.settings.coordinator_key
            )
        except ConfigInvalid as exc:
            _event(logging.ERROR, "coordinator.key_refused", "%s", exc.message, **exc.details)
            raise
        self.coordinator_key_pem = pem
        return pem

    def register(self) -> None:
        """Pin the coordinator's key; say hello (version, policy summary, long-term
        certificate) and register every dataset the policy serves."""
        started = time.perf_counter()
        self.pin_coordinator_key()
        self.client.hello(
            NodeHello(
                agent_version=__version__,
                policy=self.policy.summary(),
                identity_certificate=self.identity.certificate_pem,
                enrolment_token=(
                    token.get_secret_value()
                    if (token := self.settings.enrolment_token) is not None
                    else None
                ),
            )
        )
        served = [ds for ds in self.settings.datasets if self.policy.serves(ds.name)]
        for ds in served:
            self.client.register_dataset(ds.name, ds.schema_)
        self._budget_changed.set()  # the coordinator may have lost our last report
        self._reconnected.clear()
        self.registered.set()
        _event(
            logging.INFO,
            "node.registered",
            "registered with %s as %s: dataset(s) %s, min_count %d (%.2f s)",
            self.client.base_url,
            self.settings.name,
            ", ".join(d.name for d in served) or "none",
            self.policy.min_count,
            _seconds(started),
            datasets=[d.name for d in served],
            seconds=_seconds(started),
        )

    def run(self, install_signal_handlers: bool = True) -> None:
        """Serve until `stop()`. Registers at start and again after the coordinator was
        unreachable (it may have lost state); rides out outages with backoff."""
        restore = self._install_signals() if install_signal_handlers else {}
        try:
            self._claim_work_dir()
            _ = self.identity  # `tessera node init` made it: no run without the node's key
            self.trusted.read()  # a damaged trust list stops the start, not the first query
            _ = self.row_key_secret  # made at the first start, before any task
            self.audit = AuditLog(self.settings.audit_path, self.identity)
            self.ledger  # noqa: B018 -- open it now: an unusable ledger stops the start
            rows = self.check_datasets()
            _event(
                logging.INFO,
                "node.starting",
                "node %s starting: %s",
                self.settings.name,
                ", ".join(f"{name} ({n} rows)" for name, n in rows.items()),
                node=self.settings.name,
            )
            self.register()
            self._reporter = threading.Thread(
                target=self._report_budget_changes, daemon=True, name="budget-reporter"
            )
            self._reporter.start()
            self.synthesis.start()
            self._serve()
        except (_Interrupted, AgentStopping):
            pass
        finally:
            self.shutdown()
            for sig, handler in restore.items():
                signal.signal(sig, handler)

    def _serve(self) -> None:
        backoff = Backoff()
        while not self.stopping.is_set():
            try:
                if self._reconnected.is_set():
                    self.register()
                head = self.audit.head() if self.audit is not None else None
                tasks = self.client.tasks(self.settings.poll_wait_s, audit_head=head)
                backoff.reset()
                self.note_coordinator_head(self.client.audit_head)
            except (AgentStopping, Unauthorized):
                if self.stopping.is_set():
                    return
                raise
            except TesseraError as exc:
                delay = backoff.next_delay()
                _event(
                    logging.WARNING,
                    "poll.failed",
                    "polling for tasks failed (%s: %s); again in %.1f s",
                    exc.code,
                    exc.message,
                    delay,
                    code=exc.code,
                )
                self.stopping.wait(delay)
                continue
            for task in tasks:
                if task.id not in self._seen:
                    self._seen.add(task.id)
                    self._start_task(task)

    def note_coordinator_head(self, head: tuple[int, str, str] | None) -> None:
        """Record the coordinator's signed audit chain head in the node's log when it changed
        (a head signed by another key, or one that went back, is recorded as such and logged)."""
        if head is None or head == self._coordinator_head:
            return
        seq, chain_hash, signature = head
        last = self._coordinator_head
        pem = self.coordinator_key_pem
        if pem is None or not verify_ed25519(pem, audit_message(chain_hash), signature):
            outcome = "invalid"
        elif last is not None and seq < last[0]:
            outcome = "went_back"
        else:
            outcome = "recorded"
        self._coordinator_head = head
        self._audit(
            "coordinator.head",
            outcome,
            coordinator_seq=seq,
            coordinator_hash=chain_hash,
            coordinator_sig=signature,
        )
        if outcome != "recorded":
            _event(
                logging.WARNING,
                "coordinator.head_" + outcome,
                "the coordinator's audit chain head %d is %s",
                seq,
                "not signed by its pinned key"
                if outcome == "invalid"
                else f"behind the one it showed before ({last[0] if last else '?'})",
                seq=seq,
            )

    def _start_task(self, task: TaskOut) -> None:
        thread = threading.Thread(
            target=self.handle, args=(task,), daemon=True, name=f"task-{task.id}"
        )
        self._threads = {k: t for k, t in self._threads.items() if t.is_alive()}
        self._threads[task.id] = thread
        thread.start()

    def stop(self) -> None:
        """Ask `run` to return (safe from another thread)."""
        self.stopping.set()

    def shutdown(self, grace_s: float = 10.0) -> None:
        """Stop polling; fail the tasks still waiting for their start signal (their queries
        then fail at once, not at their deadline); let protocols in flight finish for up to
        `grace_s`; close."""
        self.stopping.set()
        with self._waiting_lock:
            waiting, self._waiting = sorted(self._waiting), set()
        for task_id in waiting:
            self._tell("fail", task_id, "node_stopping", "the node agent stopped")
        deadline = time.monotonic() + grace_s
        for thread in list(self._threads.values()):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        left = [t.name for t in self._threads.values() if t.is_alive()]
        self.synthesis.stop()
        if self._reporter is not None:
            self._reporter.join(timeout=1.0)
        self.client.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        _event(
            logging.INFO,
            "node.stopped",
            "node agent stopped" + (f" ({len(left)} task(s) abandoned)" if left else ""),
            abandoned=left,
        )

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def interrupt(signum: int, frame: FrameType | None) -> None:
            first = not self.stopping.is_set()
            self.stop()
            if first:
                _event(logging.INFO, "node.stopping", "stopping (%s)", signal.Signals(signum).name)
                raise _Interrupted

        return {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _claim_work_dir(self) -> None:
        """One agent per work_dir: two would fork the audit chain."""
        work_dir = self.settings.work_dir
        try:
            work_dir.mkdir(parents=True, exist_ok=True)
            lock = (work_dir / "agent.lock").open("w")
        except OSError as exc:
            raise ConfigInvalid(f"work_dir {work_dir}: {exc.strerror}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ConfigInvalid(
                f"work_dir {work_dir} is in use by another node agent (agent.lock)"
            ) from None
        self._lock_file = lock

    @functools.cached_property
    def row_key_secret(self) -> str:
        """The secret that keys every row's cell key (`smpc.cellkey`): made once, kept in
        `work_dir/row_keys.secret` (mode 0600), never sent. Losing it changes every
        perturbation (a new "same" answer per query), so it is kept with the audit log."""
        from smpc.cellkey import SECRET_LENGTH, new_secret

        path = self.settings.work_dir / "row_keys.secret"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            secret = path.read_text(encoding="ascii").strip()
            if len(secret) != SECRET_LENGTH:
                raise ConfigInvalid(
                    f"{path} is not a row-key secret ({SECRET_LENGTH} characters); restore it "
                    "from backup (a new one would change every released perturbation)"
                ) from None
            return secret
        secret = new_secret()
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(secret + "\n")
        return secret

    # ---- privacy budget -------------------------------------------------------------------

    @property
    def ledger(self) -> PrivacyLedger:
        """The privacy ledger in `work_dir` (opened on first use)."""
        with self._ledger_lock:
            if self._ledger is None:
                self._ledger = PrivacyLedger(self.settings.ledger_path)
            return self._ledger

    def report_budget(self) -> None:
        """Send the whole ledger (`PUT /nodes/me/budget`). Reports go one at a time, each
        read when it is sent, so the last to arrive is the latest."""
        with self._report_lock:
            policy = self.policy
            self.client.report_budget(
                self.ledger.report(lambda d: (policy.dp_budget(d), policy.dp_total(d)))
            )

    def _report_budget_changes(self) -> None:
        """After each charge, report the ledger; a lost report is made good by the next one
        (or by registering again)."""
        while not self.stopping.is_set():
            if not self._budget_changed.wait(0.2):
                continue
            self._budget_changed.clear()
            try:
                self.report_budget()
            except AgentStopping:
                return
            except TesseraError as exc:
                _event(
                    logging.WARNING,
                    "budget.unreported",
                    "could not report the privacy ledger: %s",
                    exc.message,
                    code=exc.code,
                )

    def _charge(self, task: TaskOut, dp: DPSpec, subject: dict[str, Any]) -> BudgetExceeded | None:
        """Charge a DP query (rho = epsilon^2 / 2) to its study's allocation on the dataset and
        to the dataset's total over all studies, or say why not."""
        limit = self.policy.dp_budget(task.dataset)
        total = self.policy.dp_total(task.dataset)
        if limit is None or task.study_id is None:  # refused by the policy before this
            return BudgetExceeded("no differential-privacy budget applies to this task")
        try:
            spent = self.ledger.charge_query(
                task.study_id,
                task.dataset,
                dp.epsilon,
                dp.delta,
                limit,
                total,
                task_id=task.id,
                query_id=task.query_id,
            )
        except BudgetExceeded as exc:
            return exc
        self._charged(spent, limit, total, subject, epsilon=dp.epsilon, delta=dp.delta)
        return None

    def _charged(
        self,
        spent: Spent,
        limit: DPBudget,
        total: DPTotal | None,
        subject: dict[str, Any],
        **asked: Any,
    ) -> None:
        """Audit and log a charge (what each accountant has spent: zCDP's rho, basic
        composition's epsilon and delta), and report the ledger."""
        amounts: dict[str, Any] = {
            "rho_spent": float(spent.rho),
            "rho_limit": float(limit.rho),
            "epsilon_spent": None if spent.epsilon is None else float(spent.epsilon),
            "delta_spent": None if spent.delta is None else float(spent.delta),
            "epsilon_limit": limit.epsilon,
            "delta_limit": limit.delta,
            "epsilon_remaining": spent.remaining(limit),
        }
        if total is not None and spent.dataset_total is not None and total.rho is not None:
            was = spent.dataset_total
            amounts |= {
                "dataset_rho_spent": float(was.rho),
                "dataset_rho_total": float(total.rho),
                "dataset_epsilon_spent": None if was.epsilon is None else float(was.epsilon),
                "dataset_delta_spent": None if was.delta is None else float(was.delta),
                "dataset_epsilon_total": total.epsilon,
                "dataset_delta_total": total.delta,
            }
        self._audit("budget.charged", "charged", **asked, **amounts, **subject)
        _event(
            logging.INFO,
            "budget.charged",
            "charged study %s on %s: rho spent %.6g of %.6g, epsilon %s of %g (delta %s of %g);"
            " a query of epsilon up to %.6g remains",
            subject.get("study"),
            subject.get("dataset"),
            float(spent.rho),
            float(limit.rho),
            "?" if spent.epsilon is None else text(spent.epsilon),
            limit.epsilon,
            "?" if spent.delta is None else text(spent.delta),
            limit.delta,
            amounts["epsilon_remaining"],
            **{k: v for k, v in subject.items() if k in ("task", "query", "job", "study")},
            dataset=subject.get("dataset"),
            **{k: v for k, v in amounts.items() if k.startswith("dataset_")},
        )
        self._budget_changed.set()

    def charge_synthesis(
        self, job: SynthesisJobOut, rho: float, delta: float | None = None
    ) -> BudgetExceeded | None:
        """Charge a DP synthesis job's `rho`, calibrated to the request's epsilon and `delta`
        (the request's, or the policy's default where it gives none), to its study's allocation
        on the dataset and the dataset's total, like a query (`node_agent.synthesis`, before
        training); or say why not."""
        spec = job.spec
        limit = self.policy.dp_budget(spec.dataset)
        total = self.policy.dp_total(spec.dataset)
        if limit is None:  # refused by the policy before this
            return BudgetExceeded("no differential-privacy budget applies to this job")
        try:
            spent = self.ledger.charge(
                job.study_id,
                spec.dataset,
                rho,
                limit,
                total,
                epsilon=spec.epsilon,
                delta=spec.delta if delta is None else delta,
                kind="synthesis",
                job_id=job.id,
            )
        except BudgetExceeded as exc:
            return exc
        subject = {"job": job.id, "study": job.study_id, "dataset": spec.dataset}
        self._charged(spent, limit, total, subject, epsilon=spec.epsilon, delta=spec.delta)
        return None

    # ---- one task -------------------------------------------------------------------------

    def handle(self, task: TaskOut) -> None:
        """Refuse, or prepare, accept, wait for the go, run the party and post the result."""
        started = time.perf_counter()
        statistic = str(task.query.get("statistic"))
        ids = {"task": task.id, "query": task.query_id}
        subject = {**ids, "study": task.study_id, "statistic": statistic, "dataset": task.dataset}
        statement = task.statement()
        self._audit(
            "task.received",
            "received",
            party_id=task.party_id,
            statement_hash=statement_hash(statement),
            researcher=task.researcher,
            researcher_id=task.researcher_id,
            **subject,
        )
        _event(
            logging.INFO,
            "task.received",
            "task %d (query %d): %s on %s, party %d of %d",
            task.id,
            task.query_id,
            statistic,
            task.dataset,
            task.party_id,
            task.n_parties,
            **subject,
        )
        unsigned = self._signature_problem(task, statement)
        if unsigned is not None:
            self._refuse(task, subject, unsigned)
            return
        decision = self.policy.decide(task)
        if decision.statistic is None:
            self._refuse(task, subject, decision.refusal or "refused")
            return
        held = self.query_approvals.check(task, decision.statistic.query)  # manual approval
        if held is not None:
            self._refuse(task, subject, held)
            return
        port: int | None = None
        try:
            port = self._protocol_slot(task)
            prepared = self._prepare(task, decision.statistic)
            if prepared.dp is not None:
                over = self._charge(task, prepared.dp, subject)
                if over is not None:
                    self._refuse(task, subject, over.message, **over.details)
                    return
            accept = TaskAccept(
                mpc_host=self.settings.mpc_host,
                mpc_port=port,
                mpc_certificate=prepared.certificate,
            )
            with self._awaiting_go(task):
                go = self._accept(task, accept)
                self._audit("task.accepted", "accepted", mpc_port=port, **subject)
                _event(
                    logging.INFO,
                    "task.accepted",
                    "task %d: accepted, MPC port %d (%.2f s)",
                    task.id,
                    port,
                    _seconds(started),
                    port=port,
                    seconds=_seconds(started),
                    **ids,
                )
                start = self._wait_for_start(task, go)
            outcome = self._party(task, prepared, start)
            self.client.result(
                task.id,
                TaskResult(
                    result=outcome.result,
                    min_count_applied=outcome.min_count_applied,
                    seconds=outcome.seconds,
                ),
            )
            self._audit(
                "result.opened", "succeeded", min_count_applied=outcome.min_count_applied, **subject
            )
            _event(
                logging.INFO,
                "task.done",
                "task %d: done in %.2f s (protocol %.2f s, min_count %d)",
                task.id,
                _seconds(started),
                outcome.seconds,
                outcome.min_count_applied,
                seconds=_seconds(started),
                protocol_seconds=round(outcome.seconds, 3),
                **ids,
            )
        except Conflict as exc:
            # The query is over (another node refused or failed, or the deadline passed).
            self._audit("task.abandoned", "abandoned", reason=exc.message, **subject)
            _event(logging.INFO, "task.abandoned", "task %d: %s", task.id, exc.message, **ids)
        except TesseraError as exc:
            lost = exc.details.get("nodes") if isinstance(exc, PeerLost) else None
            self._failed(task, subject, exc.code, exc.message, started, lost)
        except Exception as exc:  # never let a task thread die silently
            log.exception("task %d: unexpected %s", task.id, type(exc).__name__)
            self._failed(task, subject, "node_error", f"node error: {type(exc).__name__}", started)
        finally:
            if port is not None:
                self.slots.release(port)

    def _protocol_slot(self, task: TaskOut) -> int:
        """Wait for one of the node's protocol slots, in the coordinator's order (lowest query
        first); the MPC port the party will listen on. A task that is still waiting after
        `QUEUED_NOTICE_S` tells the coordinator once (stage `queued`): under load most waits
        are shorter, and a note for each was a quarter of a query's requests. It gives up
        when the query's deadline passes."""
        notice: threading.Timer | None = None
        told = threading.Lock()  # held while the note is sent: the accept comes after it
        taken = False
        if not self.slots.free_now():
            _event(
                logging.INFO,
                "task.queued",
                "task %d (query %d): queued, %d protocols running, %d waiting",
                task.id,
                task.query_id,
                self.slots.running,
                self.slots.waiting,
                task=task.id,
                query=task.query_id,
            )

            def tell() -> None:
                with told:
                    if not taken:
                        self._tell(
                            "progress",
                            task.id,
                            "queued",
                            "waiting for a protocol slot at this node",
                        )

            notice = threading.Timer(QUEUED_NOTICE_S, tell)
            notice.daemon = True
            notice.start()

        def give_up() -> str | None:
            if self.stopping.is_set():
                return "the node agent is stopping"
            if datetime.now(UTC) >= task.deadline:
                return "the query's deadline passed while it waited for a protocol slot"
            return None

        try:
            return self.slots.take((task.query_id, task.id), give_up)
        finally:
            if notice is not None:
                notice.cancel()
                with told:  # a note being sent goes out before the task moves on
                    taken = True

    def _signature_problem(self, task: TaskOut, statement: dict[str, Any]) -> str | None:
        """Why the task is not the coordinator's word (None if it is): its statement, rebuilt
        from the task's own fields, must carry the pinned key's signature."""
        return self._unsigned(task.signature, statement_message(statement), "task")

    def _job_signature_problem(self, job: SynthesisJobOut) -> str | None:
        """The same for a synthesis job (its own statement and domain tag)."""
        return self._unsigned(job.signature, synthesis_message(job.statement()), "synthesis job")

    def _unsigned(self, signature: str | None, message: bytes, what: str) -> str | None:
        if signature is None:
            return (
                f"the {what} carries no coordinator signature: this node runs signed {what}s only"
            )
        pem = self.coordinator_key_pem
        if pem is None:
            try:
                pem = self.pin_coordinator_key()
            except TesseraError as exc:
                return f"this node cannot check the {what}'s signature: {exc.message}"
        if not verify_ed25519(pem, message, signature):
            return (
                f"the {what}'s signature is not the pinned coordinator key's over this {what} "
                "(altered, or not sent by the coordinator)"
            )
        return None

    def _refuse(self, task: TaskOut, subject: dict[str, Any], reason: str, **fields: Any) -> None:
        ids = {"task": task.id, "query": task.query_id}
        self._audit("task.refused", "refused", reason=reason, **{**fields, **subject})
        _event(logging.INFO, "task.refused", "task %d: refused: %s", task.id, reason, **ids)
        self._tell("reject", task.id, reason)

    def _failed(
        self,
        task: TaskOut,
        subject: dict[str, Any],
        code: str,
        message: str,
        started: float,
        lost_nodes: list[str] | None = None,
    ) -> None:
        self._audit("task.failed", "failed", code=code, reason=message, **subject)
        _event(
            logging.WARNING,
            "task.failed",
            "task %d: failed after %.2f s (%s: %s)",
            task.id,
            _seconds(started),
            code,
            message,
            task=task.id,
            query=task.query_id,
            code=code,
            seconds=_seconds(started),
        )
        self._tell("fail", task.id, code, message, *([lost_nodes] if lost_nodes else []))

    def _prepare(self, task: TaskOut, statistic: SecureStatistic) -> _Prepared:
        """Compute the local summary of the checked query (on the cached frame), and make this
        run's TLS identity (a fresh key, its certificate issued by the node's long-term key
        for this run; the certificate goes with the acceptance)."""
        from smpc.tls import issue_run_certificate

        ds = self.settings.dataset(task.dataset)
        assert ds is not None  # the policy refused unknown datasets
        statistic.key_secret = self.row_key_secret
        frame = self.cache.get(ds)
        summary = statistic.local_summary(frame)
        key_pem, certificate = issue_run_certificate(
            self.identity.key_pem,
            self.identity.certificate_pem,
            task.party_id,
            run_id(task.query_id),
        )
        query = statistic.query
        return _Prepared(
            query.to_json(), ds, summary, key_pem, certificate, query.dp, ds.declared(len(frame))
        )

    @contextlib.contextmanager
    def _awaiting_go(self, task: TaskOut) -> Iterator[None]:
        """From its accept until its go the task counts as waiting: a shutdown fails it
        meanwhile (its query then fails at once, which ends any wait for the go)."""
        with self._waiting_lock:
            self._waiting.add(task.id)
        try:
            yield
        finally:
            with self._waiting_lock:
                self._waiting.discard(task.id)

    def _still_awaited(self, task: TaskOut) -> None:
        """`Conflict` if `shutdown` failed the task while it waited for its go."""
        with self._waiting_lock:
            if task.id not in self._waiting:
                raise Conflict("the node agent stopped before the protocol")

    def _accept(self, task: TaskOut, accept: TaskAccept) -> TaskStart | None:
        """Accept, waiting in the same request for the go (up to `poll_wait_s`, within the
        deadline): the go, or None if it has not come (then `_wait_for_start`)."""
        left = (task.deadline - datetime.now(UTC)).total_seconds()
        go = self.client.accept(task.id, accept, max(0.0, min(left, self.settings.poll_wait_s)))
        return go if go is not None and go.start else None

    def _wait_for_start(self, task: TaskOut, go: TaskStart | None = None) -> TaskStart:
        """The go (`go` if the accept brought it), else long-poll for it until every party
        accepted; `Conflict` if the query failed or `shutdown` failed the task meanwhile."""
        while go is None:
            self._still_awaited(task)
            if self.stopping.is_set():
                raise ProtocolFailed("the node agent is stopping")
            left = (task.deadline - datetime.now(UTC)).total_seconds()
            if left <= 0:
                raise ProtocolFailed("the query's deadline passed before every node accepted")
            start = self.client.start(task.id, min(left, self.settings.poll_wait_s))
            go = start if start.start else None
        self._still_awaited(task)
        return go

    def _party(self, task: TaskOut, prepared: _Prepared, start: TaskStart) -> PartyOutcome:
        from smpc import PartyJob, run_party
        from smpc.tls import PartyTLS

        deadline = start.deadline or task.deadline
        timeout = (deadline - datetime.now(UTC)).total_seconds()
        if timeout <= 0:
            raise ProtocolFailed("the query's deadline passed before the protocol started")
        parties = sorted(start.parties, key=lambda p: p.party_id)
        check_parties(
            parties,
            party_id=task.party_id,
            n_parties=task.n_parties,
            own_name=self.settings.name,
            own_identity=self.identity.certificate_pem,
            own_certificate=prepared.certificate,
            trusted=self.trusted.read(),
            run=run_id(task.query_id),
            production=self.settings.environment == "production",
        )
        job = PartyJob(
            query=prepared.query,
            dataset_schema=prepared.schema or prepared.dataset.schema_,
            summary=prepared.summary,
            party_id=task.party_id,
            # Our own entry is where our party listens; the others', where we reach them.
            parties=[
                (self.settings.listen_host if p.party_id == task.party_id else p.host, p.port)
                for p in parties
            ],
            min_count_floor=self.policy.min_count,
            rules=self.policy.rules(task.dataset),
            timeout_s=timeout,
            tls=PartyTLS(
                key_pem=prepared.key_pem,
                certificates=[p.certificate or "" for p in parties],
                authorities=[p.identity_certificate or "" for p in parties],
                run_id=run_id(task.query_id),
            ),
        )
        try:
            return (self._run_party or run_party)(job)
        except PeerLost as exc:  # name the nodes behind the party ids
            ids = exc.details.get("parties") or []
            lost = [p for p in parties if p.party_id in ids]
            names = ", ".join(f"node {p.node} (party {p.party_id})" for p in lost)
            when = exc.details.get("when") or "mid-protocol"
            raise PeerLost(
                f"lost {names or 'a party'} {when}",
                {"parties": ids, "nodes": [p.node for p in lost]},
            ) from None

    def _audit(self, action: str, outcome: str, **fields: Any) -> None:
        if self.audit is not None:
            self.audit.record(action, outcome, node=self.settings.name, **fields)

    def _tell(self, what: str, task_id: int, *args: Any) -> None:
        """Report to the coordinator; a failure to report is logged, not raised."""
        try:
            getattr(self.client, what)(task_id, *args)
        except Conflict as exc:  # the query ended meanwhile: nothing left to tell
            _event(logging.INFO, "task.over", "task %d: %s", task_id, exc.message, task=task_id)
        except TesseraError as exc:
            _event(
                logging.WARNING,
                "coordinator.unreported",
                "task %d: could not %s: %s",
                task_id,
                what,
                exc.message,
                task=task_id,
            )


@contextlib.contextmanager
def running(agent: NodeAgent, timeout: float = 30.0) -> Iterator[NodeAgent]:
    """Run `agent` in a background thread until the block ends (tests, embedding)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            agent.run(install_signal_handlers=False)
        except BaseException as exc:  # reported when the block ends
            errors.append(exc)

    thread = threading.Thread(target=target, name="node-agent", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not agent.registered.is_set():
            if not thread.is_alive():
                raise errors[0] if errors else RuntimeError("the node agent stopped")
            if time.monotonic() > deadline:
                raise TimeoutError("the node agent did not register in time")
            time.sleep(0.02)
        yield agent
    finally:
        agent.stop()
        thread.join(timeout)
    if errors:
        raise errors[0]
