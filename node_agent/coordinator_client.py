"""The node's HTTP client of the coordinator: outbound requests only, retried with backoff.

Transport failures (connection refused or reset, a timeout, a reply lost when the connection
closed before it came) and 5xx answers are retried with exponential backoff and full jitter
(capped at 10 s; longer if a 503 asks so in `Retry-After`), so a node rides out a coordinator
restart. Retrying a POST is safe: the coordinator answers a node's repeated step on a task or
synthesis job with its first answer (`Idempotent-Replayed: true`) and changes nothing twice,
so a replay is this call's success. A step on a query task, or on a synthesis job before its
candidate, is retried until the task's (job's) deadline, which the coordinator enforces itself
(at least `MIN_RETRY_S`); progress notes for `PROGRESS_RETRY_S` (they must not hold up the
protocol); everything else until it succeeds or the agent stops. 4xx answers are the
coordinator's word and come back as the `tessera.errors` exception it named. The API key goes
in a header and is never logged; neither are request bodies.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tessera.errors import TesseraError, Unauthorized, error_from_dict
from tessera.schemas import (
    DatasetSchema,
    NodeBudgetReport,
    NodeHello,
    ReleaseCard,
    SynthesisCandidate,
    SynthesisJobOut,
    SynthesisProgress,
    SynthesisRejection,
    TaskAccept,
    TaskFailure,
    TaskOut,
    TaskProgress,
    TaskRefusal,
    TaskResult,
    TaskStart,
)
from tessera.signing import format_head, parse_head

log = logging.getLogger("tessera.node")

AUDIT_HEAD = "Tessera-Audit-Head"
REPLAYED = "Idempotent-Replayed"  # the coordinator's mark of a first answer given again

FIRST_BACKOFF_S = 0.2
MAX_BACKOFF_S = 10.0
MIN_RETRY_S = 30.0  # a step past its deadline is still tried this long (its failure report)
PROGRESS_RETRY_S = 3.0
FORGET_DEADLINE_AFTER = timedelta(hours=1)


class CoordinatorUnreachable(TesseraError):
    """The coordinator did not answer (connection error or 5xx) and the call was not retried."""

    code = "coordinator_unreachable"


class AgentStopping(TesseraError):
    """A retry was cut short because the agent is stopping."""

    code = "node_stopping"


class Backoff:
    """Exponential backoff with full jitter: waits in [d/2, d] with d = 0.2, 0.4, ... <= 10 s."""

    def __init__(
        self,
        first: float = FIRST_BACKOFF_S,
        cap: float = MAX_BACKOFF_S,
        rng: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.first, self.cap, self._rng = first, cap, rng
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.first * 2**self.attempt)
        self.attempt += 1
        return self._rng(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class CoordinatorClient:
    """Typed calls of the coordinator's node API (`/api/v1`, node API key auth).

    `on_reconnect` is called (once) after a call succeeds that had to be retried because the
    coordinator was unreachable: the agent then registers again. `transport` and `backoff`
    are for tests.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        stop: threading.Event | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        on_reconnect: Callable[[], None] | None = None,
        transport: httpx.BaseTransport | None = None,
        backoff: Callable[[], Backoff] = Backoff,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._read_timeout_s = read_timeout_s
        self._http = httpx.Client(
            base_url=self.base_url + "/api/v1",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            transport=transport,
        )
        self._stop = stop or threading.Event()
        self.on_reconnect = on_reconnect
        self.retries = 0
        self.audit_head: tuple[int, str, str] | None = None  # the coordinator's, last poll
        self._backoff = backoff
        self._connect_timeout_s = connect_timeout_s
        self._now = now
        self.replays = 0  # answers the coordinator gave again to a retried step
        # the deadline of each task and synthesis job offered: its steps are retried until then
        self._deadlines: dict[tuple[str, int], datetime] = {}
        self._deadlines_lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def _call(
        self,
        method: str,
        path: str,
        retry: bool = True,
        wait: float = 0.0,
        answer_headers: dict[str, str] | None = None,
        give_up_at: datetime | None = None,
        **kwargs: Any,
    ) -> Any:
        """One call, retried on a transport failure or a 5xx (not with `retry` false) until it
        is answered, the agent stops (`AgentStopping`) or `give_up_at` passes
        (`CoordinatorUnreachable`)."""
        backoff = self._backoff()
        timeout = (
            httpx.Timeout(self._read_timeout_s + wait, connect=self._connect_timeout_s)
            if wait
            else None
        )
        if timeout is not None:
            kwargs["timeout"] = timeout
        while True:
            asked_delay = 0.0
            try:
                response = self._http.request(method, path, **kwargs)
                if response.status_code < 500:
                    break
                problem = f"it answered {response.status_code}"
                asked_delay = _retry_after(response)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}"
            if self._stop.is_set():
                raise AgentStopping(f"coordinator unreachable ({problem}) while stopping")
            if not retry:
                raise CoordinatorUnreachable(f"coordinator unreachable: {problem}")
            delay = max(backoff.next_delay(), asked_delay)
            if give_up_at is not None:
                left = (give_up_at - self._now()).total_seconds()
                if left <= 0:
                    raise CoordinatorUnreachable(
                        f"coordinator unreachable ({problem}) until the step's deadline"
                    )
                delay = min(delay, left)
            self.retries += 1
            log.warning(
                "coordinator unreachable (%s %s: %s); retrying in %.1f s",
                method,
                path,
                problem,
                delay,
                extra={"event": "coordinator.retry", "fields": {"delay_s": round(delay, 2)}},
            )
            if self._stop.wait(delay):
                raise AgentStopping("node agent stopping")
        if backoff.attempt and self.on_reconnect is not None:
            log.info("coordinator reachable again", extra={"event": "coordinator.back"})
            self.on_reconnect()
        if response.status_code >= 400:
            raise _error(response)
        if response.headers.get(REPLAYED) == "true":
            self.replays += 1
            log.info(
                "the coordinator had taken %s %s already: its first answer stands",
                method,
                path,
                extra={"event": "coordinator.replayed"},
            )
        if answer_headers is not None:
            answer_headers.update(response.headers)
        return response.json() if response.content else None

    def _keep_deadline(self, kind: str, subject_id: int, deadline: datetime) -> None:
        with self._deadlines_lock:
            now = self._now()
            for key, at in list(self._deadlines.items()):
                if now - at > FORGET_DEADLINE_AFTER:
                    del self._deadlines[key]
            self._deadlines[(kind, subject_id)] = deadline

    def _until_deadline(self, kind: str, subject_id: int) -> datetime | None:
        """When to stop retrying a step on the task (job): its deadline, but at least
        `MIN_RETRY_S` from now; None (until the agent stops) when it was not offered to this
        client (the agent restarted since)."""
        with self._deadlines_lock:
            deadline = self._deadlines.get((kind, subject_id))
        if deadline is None:
            return None
        return max(deadline, self._now() + timedelta(seconds=MIN_RETRY_S))

    def _task_post(self, task_id: int, step: str, body: dict[str, Any]) -> Any:
        return self._call(
            "POST",
            f"/tasks/{task_id}/{step}",
            give_up_at=self._until_deadline("task", task_id),
            json=body,
        )

    # ---- registration ---------------------------------------------------------------------

    def hello(self, message: NodeHello) -> dict[str, Any]:
        body = self._call("POST", "/nodes/me/hello", json=message.model_dump(mode="json"))
        return dict(body or {})

    def register_dataset(self, name: str, schema: DatasetSchema) -> None:
        self._call(
            "PUT",
            f"/nodes/me/datasets/{name}",
            json=schema.model_dump(mode="json", exclude_none=True),
        )

    def report_budget(self, report: NodeBudgetReport) -> None:
        """Publish the whole privacy ledger (it replaces the coordinator's copy)."""
        self._call("PUT", "/nodes/me/budget", json=report.model_dump(mode="json"))

    # ---- tasks ----------------------------------------------------------------------------

    def coordinator_key(self) -> str:
        """The coordinator's public signing key (PEM) as it publishes it (the node pins it)."""
        body = self._call("GET", "/coordinator/key")
        pem = body.get("public_key_pem") if isinstance(body, dict) else None
        if not isinstance(pem, str):
            raise TesseraError("the coordinator published no signing key")
        return pem

    def tasks(
        self, wait: float, retry: bool = True, audit_head: tuple[int, str, str] | None = None
    ) -> list[TaskOut]:
        """New tasks for this node; a long-poll of up to `wait` seconds (`[]` if none). Sends
        the node's audit log head, if given; keeps the coordinator's (`audit_head`)."""
        headers = {} if audit_head is None else {AUDIT_HEAD: format_head(*audit_head)}
        answered: dict[str, str] = {}
        body = self._call(
            "GET",
            "/nodes/me/tasks",
            retry=retry,
            wait=wait,
            answer_headers=answered,
            params={"wait": wait},
            headers=headers,
        )
        lowered = {k.lower(): v for k, v in answered.items()}
        self.audit_head = parse_head(lowered.get(AUDIT_HEAD.lower()))
        tasks = [TaskOut.model_validate(t) for t in body or []]
        for task in tasks:
            self._keep_deadline("task", task.id, task.deadline)
        return tasks

    def accept(self, task_id: int, body: TaskAccept, wait: float = 0.0) -> TaskStart | None:
        """Accept a task; with `wait`, wait up to that long for the go as well (one request
        instead of an accept and a start long-poll): the go, or None if it has not come."""
        answer = self._call(
            "POST",
            f"/tasks/{task_id}/accept",
            wait=wait,
            give_up_at=self._until_deadline("task", task_id),
            params={"wait": wait} if wait else None,
            json=body.model_dump(exclude_none=True),
        )
        start = answer.get("start") if isinstance(answer, dict) else None
        return TaskStart.model_validate(start) if start else None

    def start(self, task_id: int, wait: float) -> TaskStart:
        """Wait up to `wait` seconds for the go; `Conflict` if the query is over."""
        body = self._call("GET", f"/tasks/{task_id}/start", wait=wait, params={"wait": wait})
        return TaskStart.model_validate(body)

    def reject(self, task_id: int, reason: str) -> None:
        self._task_post(task_id, "reject", TaskRefusal(reason=reason[:2000]).model_dump())

    def progress(self, task_id: int, stage: str, message: str = "") -> None:
        """Best effort: retried for `PROGRESS_RETRY_S` only (a lost progress note must not hold
        up the protocol)."""
        body = TaskProgress(stage=stage[:64], message=message[:2000]).model_dump()
        self._call("POST", f"/tasks/{task_id}/progress", give_up_at=self._soon(), json=body)

    def result(self, task_id: int, body: TaskResult) -> None:
        self._task_post(task_id, "result", body.model_dump(mode="json"))

    def fail(
        self, task_id: int, code: str, message: str, lost_nodes: list[str] | None = None
    ) -> None:
        body = TaskFailure(
            code=code[:64] or "error", message=message[:2000] or code, lost_nodes=lost_nodes or []
        ).model_dump()
        self._task_post(task_id, "fail", body)

    def _soon(self) -> datetime:
        return self._now() + timedelta(seconds=PROGRESS_RETRY_S)

    # ---- synthesis jobs -------------------------------------------------------------------

    def synthesis_jobs(self, wait: float, retry: bool = True) -> list[SynthesisJobOut]:
        """New synthesis jobs for this node; a long-poll of up to `wait` seconds."""
        body = self._call(
            "GET", "/nodes/me/synthesis-jobs", retry=retry, wait=wait, params={"wait": wait}
        )
        jobs = [SynthesisJobOut.model_validate(j) for j in body or []]
        for job in jobs:
            self._keep_deadline("synthesis_job", job.id, job.deadline)
        return jobs

    def _job_post(self, job_id: int, step: str, until_deadline: bool, **kwargs: Any) -> Any:
        """A step on a synthesis job: one before its candidate is retried until the job's
        deadline (the coordinator fails the job then), a later one until it is answered."""
        give_up_at = self._until_deadline("synthesis_job", job_id) if until_deadline else None
        return self._call(
            "POST", f"/synthesis-jobs/{job_id}/{step}", give_up_at=give_up_at, **kwargs
        )

    def accept_synthesis(self, job_id: int, body: TaskAccept | None = None) -> None:
        """Accept a job; a pooled one says where this node's MPC party will listen."""
        if body is None:
            self._job_post(job_id, "accept", True)
        else:
            self._job_post(job_id, "accept", True, json=body.model_dump(exclude_none=True))

    def synthesis_start(self, job_id: int, wait: float) -> TaskStart:
        """A pooled job: wait up to `wait` seconds for every node to accept (the parties)."""
        body = self._call(
            "GET", f"/synthesis-jobs/{job_id}/start", wait=wait, params={"wait": wait}
        )
        return TaskStart.model_validate(body)

    def refuse_synthesis(self, job_id: int, reason: str) -> None:
        body = TaskRefusal(reason=reason[:2000]).model_dump()
        self._job_post(job_id, "refuse", True, json=body)

    def synthesis_progress(self, job_id: int, body: SynthesisProgress) -> None:
        """Best effort: retried for `PROGRESS_RETRY_S` only (a lost progress note must not hold
        up training)."""
        self._call(
            "POST",
            f"/synthesis-jobs/{job_id}/progress",
            give_up_at=self._soon(),
            json=body.model_dump(),
        )

    def synthesis_candidate(self, job_id: int, body: SynthesisCandidate) -> dict[str, Any]:
        return dict(self._job_post(job_id, "candidate", True, json=body.model_dump(mode="json")))

    def reject_synthesis(self, job_id: int, body: SynthesisRejection) -> None:
        self._job_post(job_id, "reject", False, json=body.model_dump(mode="json"))

    def fail_synthesis(self, job_id: int, code: str, message: str) -> None:
        """Retried until answered: a job awaiting its stewards has no deadline to end it."""
        body = TaskFailure(code=code[:64] or "error", message=message[:2000] or code).model_dump()
        self._job_post(job_id, "fail", False, json=body)

    def release(
        self, job_id: int, card: ReleaseCard, data: bytes | None, report: bytes
    ) -> dict[str, Any]:
        """Upload an approved candidate (multipart: card, data, report); retried until answered,
        so an upload survives a coordinator restart (a retried upload that was published is
        answered its release again). A pooled job's approval goes without `data` first (the
        answer is a `PooledApproval`, the request's state now), and with it once every node
        approved."""
        files = {"report": ("report.html", report, "text/html")}
        if data is not None:
            files["data"] = ("synthetic.parquet", data, "application/vnd.apache.parquet")
        return dict(
            self._call(
                "POST",
                f"/synthesis-jobs/{job_id}/release",
                data={"card": card.model_dump_json()},
                files=files,
            )
        )


def _retry_after(response: httpx.Response) -> float:
    """The seconds a 503's `Retry-After` asks for (capped at `MAX_BACKOFF_S`), else 0."""
    try:
        return min(MAX_BACKOFF_S, max(0.0, float(response.headers.get("retry-after", 0))))
    except ValueError:  # an HTTP date: the backoff decides
        return 0.0


def _error(response: httpx.Response) -> TesseraError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = error_from_dict(body)
        error.http_status = response.status_code
        return error
    if response.status_code == 401:
        return Unauthorized("the coordinator did not accept this node's API key")
    detail = body.get("detail") if isinstance(body, dict) else None
    error = TesseraError(
        f"coordinator answered {response.status_code}" + (f": {detail}" if detail else "")
    )
    error.http_status = response.status_code
    return error
