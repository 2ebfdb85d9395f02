"""The node's synthesis jobs: decide, train in a worker process, gate, wait for the stewards,
upload only what they approved.

`SynthesisService` runs three kinds of threads inside the node agent:

- a poller long-polls the coordinator for synthesis jobs (`GET /nodes/me/synthesis-jobs`);
- one thread per job decides by the node's policy (refusing with the reason), records the
  candidate (`node_agent.candidates`), accepts, runs `node_agent.synthesis_worker` in a
  process of its own (at most `max_concurrent_jobs` at once), relays its progress, and reports
  the candidate's release gates: a candidate that failed one is `gated`, never offered, and
  nothing of it leaves the node;
- a reviewer looks at the candidate store every second: each steward decision made with
  `tessera steward` is checked (a signature by the key the policy lists for that steward,
  over this node, this job and the candidate's hashes: `tessera.stewards`) and written to the
  node's audit log, or logged as not counting; one signed rejection rejects the candidate (the
  coordinator keeps only that record); signed approvals by `approvals_required` distinct keys
  make it `approved`, and the reviewer re-hashes the data, card and report, refuses if any
  changed since an approval, and uploads the release card with the signatures, the synthetic
  Parquet and the report. Only then does synthetic data leave the node.

What leaves the node for a job: its decision and reason, progress (stages, epochs, losses),
the gates' names, values and thresholds, the stewards' decisions, and for an approved
candidate its card, data and report. Never a row of the real data, and never the model.
On start, a job that was training when the agent stopped is failed (its worker died with
it); an approved candidate whose upload had not finished is uploaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node_agent.candidates import Candidate, CandidateStore
from node_agent.coordinator_client import AgentStopping, Backoff, CoordinatorClient
from node_agent.peers import check_parties, synthesis_run_id
from node_agent.policy import Policy
from tessera.errors import BudgetExceeded, Conflict, ProtocolFailed, TesseraError, Unauthorized
from tessera.schemas import (
    GateOutcome,
    ReleaseCard,
    StewardDecision,
    SynthesisCandidate,
    SynthesisJobOut,
    SynthesisProgress,
    SynthesisRejection,
    TaskAccept,
    TaskStart,
)
from tessera.signing import synthesis_message
from tessera.stewards import decision_refusal, distinct_keys, fingerprint

if TYPE_CHECKING:
    from node_agent.config import NodeSettings
    from node_agent.identity import NodeIdentity, TrustedPeers
    from node_agent.ports import PortPool

log = logging.getLogger("tessera.node")

REVIEW_INTERVAL_S = 1.0
POLLER = "synthesis-poller"  # the thread long-polling for jobs
PROGRESS_INTERVAL_S = 1.0
POOLED_RETRY_S = 2.0  # a pooled approval waiting for other nodes is sent again this often
POOLED_PARTY_TIMEOUT_S = 900.0  # a pooled measurement's party (measure, fit, share) at most
WORKER = [sys.executable, "-m", "node_agent.synthesis_worker"]

Audit = Callable[..., None]
Charge = Callable[[SynthesisJobOut, float, float], "BudgetExceeded | None"]


@dataclass(frozen=True)
class MPCContext:
    """What a pooled job's party needs of the node agent: its port pool, its long-term key
    (issues the run's certificate) and its trusted peers."""

    ports: PortPool
    identity: Callable[[], NodeIdentity]
    trusted: TrustedPeers


def _event(level: int, event: str, message: str, *args: Any, **fields: Any) -> None:
    log.log(level, message, *args, extra={"event": event, "fields": fields})


class SynthesisService:
    def __init__(
        self,
        settings: NodeSettings,
        client: CoordinatorClient,
        policy: Policy,
        audit: Audit,
        stopping: threading.Event,
        charge: Charge | None = None,
        mpc: MPCContext | None = None,
        verify: Callable[[SynthesisJobOut], str | None] | None = None,
    ) -> None:
        self.settings = settings
        self.mpc = mpc  # what a pooled job's MPC party needs of the agent
        # why a job is not the coordinator's signed word (the agent's check; None: not checked)
        self.verify = verify
        self.charge = charge  # charges a DP job's rho to the privacy ledger (the agent's)
        self.client = client
        self.policy = policy
        self.audit = audit
        self.stopping = stopping
        self._store: CandidateStore | None = None
        rules = settings.policy.synthesis
        self._slots = threading.Semaphore(rules.max_concurrent_jobs if rules else 1)
        self._threads: list[threading.Thread] = []
        self._workers: dict[int, subprocess.Popen[bytes]] = {}
        self._workers_lock = threading.Lock()
        self._seen: set[int] = set()
        self._pooled_asked: dict[int, float] = {}  # pooled approvals: when last sent
        self._pooled_told: set[int] = set()

    @property
    def store(self) -> CandidateStore:
        if self._store is None:
            self._store = CandidateStore(self.settings.candidates_path)
        return self._store

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Recover from the last run, then start the poller and the reviewer."""
        self._recover()
        for target, name in ((self._poll, POLLER), (self._review, "reviewer")):
            thread = threading.Thread(target=target, daemon=True, name=name)
            thread.start()
            self._threads.append(thread)

    def stop(self, grace_s: float = 5.0) -> None:
        """Kill running workers (their jobs fail), then wait for the threads: not for the
        poller, which may be inside a long-poll of up to `poll_wait_s` and has nothing to
        finish (it takes no new job once stopping; the process's exit ends its request, and
        the coordinator offers nothing on a poll whose client left)."""
        with self._workers_lock:
            workers = list(self._workers.values())
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
        deadline = time.monotonic() + grace_s
        for thread in self._threads:
            if thread.name != POLLER:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _recover(self) -> None:
        for candidate in self.store.list(("training",)):
            self.store.set_status(
                candidate.job_id, "failed", error="the node agent stopped while it trained"
            )
            self.audit("synthesis.failed", "failed", job=candidate.job_id, code="node_restarted")
            self._tell(
                "fail_synthesis",
                candidate.job_id,
                "node_restarted",
                "the node agent stopped while it trained; request again",
            )
            self._seen.add(candidate.job_id)

    # ---- polling --------------------------------------------------------------------------

    def _poll(self) -> None:
        backoff = Backoff()
        while not self.stopping.is_set():
            try:
                jobs = self.client.synthesis_jobs(self.settings.poll_wait_s)
                backoff.reset()
            except (AgentStopping, Unauthorized):
                return
            except TesseraError as exc:
                delay = backoff.next_delay()
                _event(
                    logging.WARNING,
                    "synthesis.poll_failed",
                    "polling for synthesis jobs failed (%s); again in %.1f s",
                    exc.message,
                    delay,
                )
                self.stopping.wait(delay)
                continue
            if self.stopping.is_set():  # offered as the agent stops: fail them now, not at
                for job in jobs:  # their deadline (nobody here will train them)
                    self._tell("fail_synthesis", job.id, "node_stopping", "the node agent stopped")
                return
            for job in jobs:
                if job.id in self._seen:
                    continue
                self._seen.add(job.id)
                thread = threading.Thread(
                    target=self.handle, args=(job,), daemon=True, name=f"synthesis-{job.id}"
                )
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
                thread.start()

    # ---- one job --------------------------------------------------------------------------

    def handle(self, job: SynthesisJobOut) -> None:
        spec = job.spec
        subject = {
            "job": job.id,
            "request": job.request_id,
            "study": job.study_id,
            "dataset": spec.dataset,
            "generator": spec.generator,
            "requested_by": job.requested_by,
        }
        self.audit(
            "synthesis.received",
            "received",
            rows=spec.rows,
            epsilon=spec.epsilon,
            scope=spec.scope,
            party_id=job.party_id,
            statement_sha256=hashlib.sha256(synthesis_message(job.statement())).hexdigest(),
            **subject,
        )
        _event(
            logging.INFO,
            "synthesis.received",
            "synthesis job %d: %s on %s, %d rows, requested by %s",
            job.id,
            spec.generator,
            spec.dataset,
            spec.rows,
            job.requested_by,
            **subject,
        )
        reason = (
            (self.verify(job) if self.verify is not None else None)
            or self.policy.decide_synthesis(job)
            or self._charge(job)
        )
        if reason is not None:
            self.audit("synthesis.refused", "refused", reason=reason, **subject)
            _event(
                logging.INFO,
                "synthesis.refused",
                "synthesis job %d refused: %s",
                job.id,
                reason,
                job=job.id,
            )
            self._tell("refuse_synthesis", job.id, reason)
            return
        folder = self.settings.synthesis_dir / f"job-{job.id}"
        if not self.store.create(
            job.id,
            job.request_id,
            job.study_id,
            spec.dataset,
            spec.generator,
            job.requested_by,
            spec.model_dump(mode="json"),
            folder,
        ):
            return  # known from an earlier offer
        started = time.perf_counter()
        port: int | None = None
        try:
            pooled: dict[str, Any] | None = None
            if job.spec.scope == "pooled":
                # A worker slot first, then accept: the other nodes' parties never wait on a
                # party that is queued behind this node's other jobs.
                with self._slots:
                    port, pooled = self._join(job, subject)
                    self._progress(job.id, SynthesisProgress(stage="measuring", message="MPC"))
                    outcome = self._train(job, folder, pooled)
            else:
                self.client.accept_synthesis(job.id)
                self.audit("synthesis.accepted", "accepted", **subject)
                with self._slots:
                    self._progress(job.id, SynthesisProgress(stage="starting", message="worker"))
                    outcome = self._train(job, folder)
            gates = [GateOutcome.model_validate(g) for g in outcome["gates"]]
            rules = self.settings.policy.synthesis
            assert rules is not None  # decide_synthesis refused otherwise
            status = self.store.set_candidate(
                job.id, outcome["card"], outcome["gates"], rules.approvals_required
            )
            failed = [g.name for g in gates if not g.passed]
            self.audit(
                "synthesis.candidate",
                status,
                seconds=round(time.perf_counter() - started, 2),
                failed_gates=failed or None,
                **subject,
            )
            _event(
                logging.INFO,
                "synthesis.candidate",
                "synthesis job %d: candidate %s in %.1f s%s; report %s",
                job.id,
                status.replace("_", " "),
                time.perf_counter() - started,
                f" (failed gates: {', '.join(failed)})" if failed else "",
                folder / "report.html",
                job=job.id,
                status=status,
            )
            card = outcome["card"]
            answer = self.client.synthesis_candidate(
                job.id,
                SynthesisCandidate(
                    gates=gates,
                    approvals_required=rules.approvals_required,
                    candidate_sha256=card["sha256"] if pooled else None,
                    measurement_sha256=card.get("measurement_sha256") if pooled else None,
                ),
            )
            if answer.get("status") == "failed":  # pooled: the nodes' candidates differ
                raise Conflict("the coordinator failed the job: the nodes' candidates differ")
        except Conflict as exc:  # the coordinator ended the job (deadline, or failed)
            (folder / "synthetic.parquet").unlink(missing_ok=True)
            self.store.set_status(job.id, "failed", error=exc.message)
            self.audit("synthesis.abandoned", "abandoned", reason=exc.message, **subject)
        except AgentStopping:
            pass  # recovered at the next start
        except TesseraError as exc:
            self._failed(job.id, subject, exc.code, exc.message)
        except Exception as exc:  # never let a job thread die silently
            log.exception("synthesis job %d: unexpected %s", job.id, type(exc).__name__)
            self._failed(job.id, subject, "node_error", f"node error: {type(exc).__name__}")
        finally:
            if port is not None and self.mpc is not None:
                self.mpc.ports.release(port)

    def _join(self, job: SynthesisJobOut, subject: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A pooled job: make this run's TLS identity, accept with where this node's party
        will listen, wait until every node accepted, and check every party against this
        node's own trusted peers (`node_agent.peers.check_parties`) before any share is sent.
        Returns the port taken and what the worker's party process needs."""
        from smpc.tls import PartyTLS, issue_run_certificate

        if self.mpc is None or job.party_id is None or job.n_parties is None:
            raise ProtocolFailed("this node cannot take part in a pooled synthesis")
        run = synthesis_run_id(job.request_id)
        identity = self.mpc.identity()
        key_pem, certificate = issue_run_certificate(
            identity.key_pem, identity.certificate_pem, job.party_id, run
        )
        port = self.mpc.ports.take()
        try:
            self.client.accept_synthesis(
                job.id,
                TaskAccept(
                    mpc_host=self.settings.mpc_host, mpc_port=port, mpc_certificate=certificate
                ),
            )
            self.audit(
                "synthesis.accepted", "accepted", party_id=job.party_id, mpc_port=port, **subject
            )
            self._progress(job.id, SynthesisProgress(stage="waiting", message="for every node"))
            start = self._wait_for_start(job)
            parties = sorted(start.parties, key=lambda p: p.party_id)
            check_parties(
                parties,
                party_id=job.party_id,
                n_parties=job.n_parties,
                own_name=self.settings.name,
                own_identity=identity.certificate_pem,
                own_certificate=certificate,
                trusted=self.mpc.trusted.read(),
                run=run,
                production=self.settings.environment == "production",
            )
        except BaseException:
            self.mpc.ports.release(port)
            raise
        deadline = start.deadline or job.deadline
        pooled = {
            "party_id": job.party_id,
            # our own entry is where our party listens; the others', where we reach them
            "parties": [
                [self.settings.listen_host if p.party_id == job.party_id else p.host, p.port]
                for p in parties
            ],
            "names": [p.node for p in parties],
            # the measurement takes seconds and the fit minutes: a peer that died is not waited
            # for until the job's deadline (an hour by default)
            "timeout_s": min(
                POOLED_PARTY_TIMEOUT_S,
                max(1.0, (deadline - datetime.now(UTC)).total_seconds() - 5.0),
            ),
            "tls": PartyTLS(
                key_pem=key_pem,
                certificates=[p.certificate or "" for p in parties],
                authorities=[p.identity_certificate or "" for p in parties],
                run_id=run,
            ).model_dump(mode="json"),
        }
        return port, pooled

    def _wait_for_start(self, job: SynthesisJobOut) -> TaskStart:
        """Long-poll until every node of a pooled job accepted; `Conflict` if it failed."""
        while True:
            if self.stopping.is_set():
                raise AgentStopping()
            left = (job.deadline - datetime.now(UTC)).total_seconds()
            if left <= 0:
                raise ProtocolFailed("the job's deadline passed before every node accepted")
            start = self.client.synthesis_start(job.id, min(left, self.settings.poll_wait_s))
            if start.start:
                return start
            if start.status == "failed":
                raise Conflict("the pooled synthesis failed before it started")

    def _charge(self, job: SynthesisJobOut) -> str | None:
        """Charge a differentially private job's rho to its study's allocation of the dataset's
        privacy budget, before anything is trained, never refunded (as a query's); None when
        charged or nothing to charge, else why the job is refused. The rho is what the
        generator's own accounting is given for the request (`synth.accounting.rho_for` of its
        epsilon and delta, the policy's default delta where it gives none)."""
        spec = job.spec
        if not spec.differentially_private:
            return None
        from synth.accounting import rho_for

        rules = self.settings.policy.synthesis
        assert rules is not None and spec.epsilon is not None  # decided before this
        delta = spec.delta or rules.default_delta
        if spec.scope == "pooled":  # every node must measure with the same delta
            from synth.generators.mst import DEFAULT_DELTA

            delta = spec.delta or DEFAULT_DELTA
        rho = rho_for(spec.epsilon, delta)
        if self.charge is None:
            return "this node keeps no privacy ledger for synthesis"
        refused = self.charge(job, rho, delta)
        return None if refused is None else refused.message

    def _failed(self, job_id: int, subject: dict[str, Any], code: str, message: str) -> None:
        self.store.set_status(job_id, "failed", error=message)
        self.audit("synthesis.failed", "failed", code=code, reason=message, **subject)
        _event(
            logging.WARNING,
            "synthesis.failed",
            "synthesis job %d failed (%s: %s)",
            job_id,
            code,
            message,
            job=job_id,
            code=code,
        )
        self._tell("fail_synthesis", job_id, code, message)

    def _train(
        self, job: SynthesisJobOut, folder: Path, pooled: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Run the worker process until it answers or the job's deadline; relay progress."""
        rules = self.settings.policy.synthesis
        assert rules is not None
        ds = self.settings.dataset(job.spec.dataset)
        assert ds is not None
        dataset = ds.model_dump(mode="json")
        if ds.url is not None:
            dataset["url"] = ds.url.get_secret_value()  # to our own child, on its stdin
        job_input = {
            "job": job.model_dump(mode="json"),
            "dataset": dataset,
            "folder": str(folder),
            "device": rules.device,
            "min_count": self.policy.min_count,
            "default_delta": rules.default_delta,
            "max_training_seconds": rules.max_training_seconds,
            "gates": rules.gates,
            "node": self.settings.name,
            "pooled": pooled,  # a pooled job: the run's parties and this node's TLS material
        }
        folder.mkdir(parents=True, exist_ok=True)
        left = (job.deadline - datetime.now(UTC)).total_seconds()
        if left <= 0:
            raise ProtocolFailed("the job's deadline passed before training started")
        with (folder / "worker.log").open("ab") as worker_log:
            proc = subprocess.Popen(
                WORKER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=worker_log
            )
            with self._workers_lock:
                self._workers[job.id] = proc
            timer = threading.Timer(left, proc.kill)
            timer.daemon = True
            timer.start()
            try:
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(json.dumps(job_input).encode())
                proc.stdin.close()
                answer = self._relay(job.id, proc.stdout)
                proc.wait()
            finally:
                timer.cancel()
                with self._workers_lock:
                    self._workers.pop(job.id, None)
        if answer is None:
            if self.stopping.is_set():
                raise ProtocolFailed("the node agent stopped while it trained")
            if (job.deadline - datetime.now(UTC)).total_seconds() <= 0:
                raise ProtocolFailed("training did not finish by the job's deadline")
            raise ProtocolFailed(
                f"the synthesis worker exited ({proc.returncode}) without an answer; see "
                f"{folder / 'worker.log'}"
            )
        if "error" in answer:
            error = TesseraError(answer["error"]["message"])
            error.code = answer["error"]["code"]
            raise error
        return dict(answer["done"])

    def _relay(self, job_id: int, stdout: Any) -> dict[str, Any] | None:
        """Forward the worker's progress (at most one report a second, and every new stage)
        until its answer."""
        last_stage, last_sent = "", 0.0
        for raw in stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if "progress" not in message:
                return dict(message)
            event = message["progress"]
            now = time.monotonic()
            stage = str(event.get("stage", ""))
            final_epoch = event.get("epoch") is not None and event.get("epoch") == event.get(
                "epochs"
            )
            if stage != last_stage or final_epoch or now - last_sent >= PROGRESS_INTERVAL_S:
                self._progress(
                    job_id,
                    SynthesisProgress(
                        stage=stage[:64] or "training",
                        message=str(event.get("message", ""))[:2000],
                        epoch=event.get("epoch"),
                        epochs=event.get("epochs"),
                        loss=event.get("loss"),
                    ),
                )
                last_stage, last_sent = stage, now
        return None

    def _progress(self, job_id: int, body: SynthesisProgress) -> None:
        with contextlib.suppress(TesseraError):  # best effort: never holds up training
            self.client.synthesis_progress(job_id, body)

    # ---- review ---------------------------------------------------------------------------

    def _review(self) -> None:
        while not self.stopping.wait(REVIEW_INTERVAL_S):
            try:
                self.review_once()
            except AgentStopping:
                return
            except Exception:  # the reviewer must outlive one bad candidate
                log.exception("reviewing synthesis candidates failed; again in 1 s")

    def _stewards(self) -> dict[str, str]:
        rules = self.settings.policy.synthesis
        return dict(rules.stewards) if rules is not None else {}

    def _required(self, candidate: Candidate) -> int:
        """Approvals needed: the policy's now, never fewer than the candidate was trained
        under (the store is writable by whoever can write work_dir; the policy rules)."""
        rules = self.settings.policy.synthesis
        policy = rules.approvals_required if rules is not None else 1
        return max(policy, candidate.approvals_required or 1)

    def _refusal(
        self, job_id: int, decision: StewardDecision, hashes: dict[str, str] | None = None
    ) -> str | None:
        return decision_refusal(
            decision,
            node=self.settings.name,
            job_id=job_id,
            stewards=self._stewards(),
            hashes=hashes,
        )

    def _signed(self, candidate: Candidate, decisions: list[StewardDecision]) -> list[Any]:
        """The decisions whose signatures verify, one per key."""
        return distinct_keys(d for d in decisions if self._refusal(candidate.job_id, d) is None)

    def review_once(self) -> None:
        """Audit new decisions (and those that do not count, with why); reject, approve and
        upload what verified signatures decide."""
        for job_id, steward, decision in self.store.unaudited():
            refusal = (
                "it does not read as a signed decision"
                if decision is None
                else self._refusal(job_id, decision)
            )
            if decision is not None and refusal is None:
                done = {"approve": "approved", "reject": "rejected"}[decision.decision]
                self.audit(
                    f"steward.{done}",
                    done,
                    job=job_id,
                    steward=steward,
                    key=fingerprint(decision.key),
                    reason=decision.reason or None,
                )
            else:
                self.audit(
                    "steward.refused", "refused", job=job_id, steward=steward, reason=refusal
                )
                _event(
                    logging.WARNING,
                    "steward.refused",
                    "synthesis job %d: a decision as steward %r does not count: %s",
                    job_id,
                    steward,
                    refusal,
                    job=job_id,
                )
            self.store.mark_audited(job_id, steward)
        for candidate in self.store.list(("awaiting_review", "approved")):
            if candidate.status == "awaiting_review":
                rejections = self._signed(candidate, candidate.rejections)
                if rejections:
                    self._reject(candidate, rejections)
                    continue
                if len(self._signed(candidate, candidate.approvals)) < self._required(candidate):
                    continue
                self.store.set_status(candidate.job_id, "approved", expect=("awaiting_review",))
                candidate = self.store.get(candidate.job_id)
            self._upload(candidate)

    def _reject(self, candidate: Candidate, rejections: list[StewardDecision]) -> None:
        self.store.set_status(candidate.job_id, "rejected", expect=("awaiting_review",))
        candidate.data_path.unlink(missing_ok=True)  # never uploaded, not kept
        stewards = [d.steward for d in rejections]
        self.audit("synthesis.rejected", "rejected", job=candidate.job_id, stewards=stewards)
        _event(
            logging.INFO,
            "synthesis.rejected",
            "synthesis job %d rejected by %s",
            candidate.job_id,
            ", ".join(stewards),
            job=candidate.job_id,
        )
        decisions = self._signed(candidate, list(candidate.decisions))  # what verifies
        self._tell("reject_synthesis", candidate.job_id, SynthesisRejection(decisions=decisions))

    def _upload(self, candidate: Candidate) -> None:
        """Upload an approved candidate, after re-hashing its data, card and report: each
        counted approval must have signed exactly these (else nothing is uploaded)."""
        assert candidate.card is not None and candidate.gates is not None
        data = candidate.data_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != candidate.card["sha256"]:
            self._fail_candidate(candidate, "data_changed", "the candidate's data file changed")
            return
        report = candidate.report_path.read_bytes()
        content = candidate.content()
        now = {
            "data_sha256": hashlib.sha256(data).hexdigest(),
            "card_sha256": content.digest(),
            "report_sha256": hashlib.sha256(report).hexdigest(),
        }
        approvals = self._signed(candidate, candidate.approvals)
        for approval in approvals:
            changed = self._refusal(candidate.job_id, approval, now)
            if changed is not None:
                self._fail_candidate(candidate, "data_changed", f"{changed}; nothing uploaded")
                return
        if len(approvals) < self._required(candidate):
            self.store.set_status(candidate.job_id, "awaiting_review", expect=("approved",))
            self.audit(
                "synthesis.unapproved",
                "awaiting_review",
                job=candidate.job_id,
                reason=f"{len(approvals)} verified approval(s) of {self._required(candidate)}",
            )
            return
        card = ReleaseCard.model_validate(
            {**content.model_dump(mode="json"), "approvals": approvals}
        )
        try:
            if card.scope == "pooled":
                release = self._pooled_release(candidate, card, data, report)
                if release is None:
                    return  # waiting for other nodes' stewards
            else:
                release = self.client.release(candidate.job_id, card, data, report)
        except Conflict as exc:
            if exc.details.get("status") == "released":  # our earlier upload got there
                self.store.set_status(candidate.job_id, "released", expect=("approved",))
                return
            if card.scope == "pooled":  # another node's gates or stewards stopped it
                candidate.data_path.unlink(missing_ok=True)
            self._fail_candidate(candidate, "upload_refused", exc.message, tell=False)
            return
        except AgentStopping:
            raise
        except TesseraError as exc:
            self._fail_candidate(candidate, "upload_refused", exc.message)
            return
        release_id = release.get("id", release.get("release_id"))
        self.store.set_status(
            candidate.job_id, "released", expect=("approved",), release_id=release_id
        )
        self.audit(
            "release.uploaded",
            "released",
            job=candidate.job_id,
            release=release_id,
            sha256=card.sha256,
            rows=card.rows,
            approvals=[a.steward for a in card.approvals],
            keys=[fingerprint(a.key) for a in card.approvals],
        )
        _event(
            logging.INFO,
            "release.uploaded",
            "synthesis job %d released as release %s",
            candidate.job_id,
            release_id,
            job=candidate.job_id,
            release=release_id,
        )

    def _pooled_release(
        self, candidate: Candidate, card: ReleaseCard, data: bytes, report: bytes
    ) -> dict[str, Any] | None:
        """A pooled candidate: send this node's approvals, card and report (not the data);
        the data goes only once the coordinator says every node's stewards approved. None
        while other nodes have not (asked again every `POOLED_RETRY_S`)."""
        last = self._pooled_asked.get(candidate.job_id, 0.0)
        if time.monotonic() - last < POOLED_RETRY_S:
            return None
        self._pooled_asked[candidate.job_id] = time.monotonic()
        answer = self.client.release(candidate.job_id, card, None, report)
        if answer.get("data_wanted"):
            try:
                answer = self.client.release(candidate.job_id, card, data, report)
            except Conflict as exc:
                if "waiting_for" not in exc.details:
                    raise
                return None  # another node's approval was withdrawn meanwhile: ask again
        if answer.get("id") is None and answer.get("release_id") is None:
            waiting = answer.get("waiting_for") or []
            if candidate.job_id not in self._pooled_told:
                self._pooled_told.add(candidate.job_id)
                self.audit(
                    "synthesis.approval_sent",
                    "approved",
                    job=candidate.job_id,
                    approvals=[a.steward for a in card.approvals],
                    waiting_for=waiting,
                )
            return None
        self._pooled_asked.pop(candidate.job_id, None)
        return answer

    def _fail_candidate(
        self, candidate: Candidate, code: str, message: str, tell: bool = True
    ) -> None:
        self.store.set_status(candidate.job_id, "failed", error=message)
        self.audit("synthesis.failed", "failed", job=candidate.job_id, code=code, reason=message)
        _event(
            logging.WARNING,
            "synthesis.failed",
            "synthesis job %d: %s",
            candidate.job_id,
            message,
            job=candidate.job_id,
        )
        if tell:
            self._tell("fail_synthesis", candidate.job_id, code, message)

    def _tell(self, what: str, job_id: int, *args: Any) -> None:
        """Report to the coordinator; a failure to report is logged, not raised."""
        try:
            getattr(self.client, what)(job_id, *args)
        except Conflict as exc:
            _event(logging.INFO, "synthesis.over", "synthesis job %d: %s", job_id, exc.message)
        except TesseraError as exc:
            _event(
                logging.WARNING,
                "coordinator.unreported",
                "synthesis job %d: could not %s: %s",
                job_id,
                what,
                exc.message,
            )
        except RuntimeError:  # the agent closed its client while stopping
            _event(logging.INFO, "coordinator.unreported", "synthesis job %d: not told", job_id)
