"""Node enrolment (admin) and everything a node agent calls: hello, datasets, budget, tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response, status
from pydantic import BaseModel
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api import audit, clock
from api.db import Database
from api.deps import (
    AdminUser,
    CurrentNode,
    IdPath,
    NotifierDep,
    PageDep,
    SessionDep,
    SettingsDep,
    WaitParam,
    id_query,
)
from api.models import Node, Query, Task
from api.notify import Notifier, long_poll
from api.openapi import errors
from api.services import budget, idempotency, network, queries
from tessera.errors import Conflict, InvalidRequest
from tessera.rest import (
    Ack,
    BudgetReportAck,
    NewNode,
    NodeOut,
    NodePage,
    NodeWithEnrolment,
    NodeWithKey,
)
from tessera.rest import RegisteredDataset as RegisteredDatasetOut
from tessera.schemas import (
    DatasetSchema,
    Name,
    NodeBudgetReport,
    NodeHello,
    TaskAccept,
    TaskAccepted,
    TaskFailure,
    TaskOut,
    TaskProgress,
    TaskRefusal,
    TaskResult,
    TaskStart,
)
from tessera.signing import format_head, node_audit_message, parse_head, unb64, verify_ecdsa

router = APIRouter()
NODE = errors(401, 403, 422)  # what every node-agent route can answer
TASK = errors(401, 403, 404, 409, 422)  # ... and one on a task


# ---- administrators -----------------------------------------------------------------------


@router.post(
    "/nodes",
    status_code=status.HTTP_201_CREATED,
    tags=["nodes"],
    response_model=NodeWithKey,
    responses=errors(401, 403, 404, 409, 422),
)
def create_node(
    body: NewNode, admin: AdminUser, db: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    """Enrol a node. The API key and the one-time enrolment token (which registers the node's
    long-term key at its first start) are in this answer only: hand them to the hospital's
    operator."""
    node, key = network.create_node(db, body.name, body.organisation_id, f"user:{admin.username}")
    enrolment = network.issue_enrolment(db, node, settings.enrolment_ttl_s)
    db.commit()
    return {**network.node_view(node), "api_key": key, "enrolment_token": enrolment}


@router.get("/nodes", tags=["nodes"], response_model=NodePage, responses=errors(401, 403, 422))
def list_nodes(
    _: AdminUser,
    db: SessionDep,
    page: PageDep,
    organisation_id: Annotated[int | None, id_query("Only this organisation's.")] = None,
) -> dict[str, Any]:
    """Every enrolled node (admin), a page at a time."""
    nodes, cursor = network.list_nodes(db, page, organisation_id)
    return {"items": [network.node_view(n) for n in nodes], "next_cursor": cursor}


@router.post(
    "/nodes/{node_id}/rotate-key",
    tags=["nodes"],
    response_model=NodeWithKey,
    responses=errors(401, 403, 404, 422),
)
def rotate_node_key(node_id: IdPath, admin: AdminUser, db: SessionDep) -> dict[str, Any]:
    """A new API key for the node (in this answer only); the old one stops working."""
    node, key = network.rotate_key(db, node_id, f"user:{admin.username}")
    db.commit()
    return {**network.node_view(node), "api_key": key}


@router.post(
    "/nodes/{node_id}/reset-identity",
    tags=["nodes"],
    response_model=NodeWithEnrolment,
    responses=errors(401, 403, 404, 422),
)
def reset_node_identity(
    node_id: IdPath, admin: AdminUser, db: SessionDep, settings: SettingsDep
) -> dict[str, Any]:
    """Forget the node's registered long-term key and issue a new one-time enrolment token (in
    this answer only): the node's next start with it registers the key it shows (after
    `tessera node init` on a new host). Its peers compute with it again only once their own
    hospitals trust the new fingerprint."""
    node = network.reset_identity(db, node_id, f"user:{admin.username}")
    enrolment = network.issue_enrolment(db, node, settings.enrolment_ttl_s)
    db.commit()
    return {**network.node_view(node), "enrolment_token": enrolment}


# ---- node agents ----------------------------------------------------------------------------


@router.get("/nodes/me", tags=["nodes"], response_model=NodeOut, responses=NODE)
def get_my_node(node: CurrentNode) -> dict[str, Any]:
    """The node of the API key."""
    return network.node_view(node)


@router.post(
    "/nodes/me/hello",
    tags=["nodes"],
    response_model=NodeOut,
    responses=errors(401, 403, 409, 413, 422),
)
def say_hello(body: NodeHello, node: CurrentNode, db: SessionDep) -> dict[str, Any]:
    """A node agent starting: its version, the summary of its policy (the coordinator plans
    with it; the node still decides) and its long-term certificate (registered at the first
    hello; another one later is a 409 until an administrator resets the node's identity)."""
    view = network.node_view(network.hello(db, node, body))
    db.commit()
    return view


@router.put(
    "/nodes/me/datasets/{name}",
    tags=["datasets"],
    response_model=RegisteredDatasetOut,
    response_model_exclude_none=True,  # the schema as registered: undeclared keys stay absent
    responses=NODE,
)
def register_dataset(
    name: Name, body: DatasetSchema, node: CurrentNode, db: SessionDep
) -> dict[str, Any]:
    """Register or replace the node's declared schema of a dataset: columns, never rows."""
    dataset = network.register_dataset(db, node, name, body)
    db.commit()
    return {"name": dataset.name, "node": node.name, "schema": dataset.schema}


@router.put("/nodes/me/budget", tags=["nodes"], response_model=BudgetReportAck, responses=NODE)
def report_budget(body: NodeBudgetReport, node: CurrentNode, db: SessionDep) -> dict[str, Any]:
    """The node's whole privacy ledger (epsilon and delta spent per study and dataset); it
    replaces the last report."""
    answer = budget.report(db, node, body)
    db.commit()
    return answer


AUDIT_HEAD = "Tessera-Audit-Head"  # "<seq>:<hash>:<signature>", both ways


@router.get("/nodes/me/tasks", tags=["tasks"], response_model=list[TaskOut], responses=NODE)
async def poll_tasks(
    request: Request,
    response: Response,
    node: CurrentNode,
    wait: float = WaitParam,
    node_head: Annotated[
        str | None,
        Header(
            alias=AUDIT_HEAD,
            description="The node's audit log head: `<entries>:<last hash>:<its signature>`.",
        ),
    ] = None,
) -> list[TaskOut]:
    """This node's new tasks (each with the coordinator's signature of its statement); with
    `wait`, a long-poll that answers as soon as one arrives. The node may send its audit log
    head (kept: `GET /audit/node-heads`); the answer's `Tessera-Audit-Head` header is the
    coordinator's signed audit chain head, which the node records."""
    node_id = node.id
    if node_head is not None:
        head = parse_head(node_head)
        if head is None:
            raise InvalidRequest(
                f"{AUDIT_HEAD} must be `<entries>:<last hash>:<signature>`",
                {"header": AUDIT_HEAD},
            )
        raw = unb64(head[2])
        if node.identity_certificate is not None and (
            raw is None
            or not verify_ecdsa(node.identity_certificate, node_audit_message(head[1]), raw)
        ):
            raise InvalidRequest(
                f"{AUDIT_HEAD} is not signed by this node's registered key",
                {"header": AUDIT_HEAD},
            )
        await run_in_threadpool(_keep_node_head, request.app.state.db, node_id, head)

    def check() -> list[TaskOut] | None:
        with request.app.state.db.session() as db:
            me = db.get(Node, node_id)
            tasks = queries.offer_tasks(db, me)
        return tasks or None

    database = request.app.state.db
    polled_at = await run_in_threadpool(_polling, database, node_id)
    tasks = await long_poll(request, wait, f"node:{node_id}", check) or []
    if not tasks and await request.is_disconnected():
        # The agent left mid-poll (its process died, or its network): unless it polls again
        # within the grace period, the queries it takes part in cannot finish.
        watch = _gone_unless_back(request.app, node_id, polled_at)
        _watching.add(asyncio.get_running_loop().create_task(watch))
    chain = await run_in_threadpool(_chain_head, request.app.state.db)
    if chain is not None and chain["signature"] is not None:
        response.headers[AUDIT_HEAD] = format_head(chain["seq"], chain["hash"], chain["signature"])
    return tasks


_watching: set[asyncio.Task[None]] = set()  # node departures being watched (kept referenced)


def _polling(database: Database, node_id: int) -> datetime:
    """Note that the node polls now (`last_poll_at`, on every poll: how a departure learns of
    a return, on any replica); the time noted."""
    with database.session() as db:
        now = clock.now(db)
        db.execute(update(Node).where(Node.id == node_id).values(last_poll_at=now))
        db.commit()
    return now


async def _gone_unless_back(app: Any, node_id: int, polled_at: datetime) -> None:
    """After `node_gone_grace_s`, fail the unfinished queries of a node that has not polled
    again since its poll's connection closed, naming it and what it last did."""
    try:
        await asyncio.sleep(app.state.settings.node_gone_grace_s)
        ended = await run_in_threadpool(_node_gone, app.state.db, node_id, polled_at)
        notifier: Notifier = app.state.notifier
        for query_id, node_ids in ended:
            notifier.notify(f"query:{query_id}", *(f"node:{n}" for n in node_ids))
    finally:
        _watching.discard(asyncio.current_task())


def _node_gone(
    database: Database, node_id: int, polled_at: datetime
) -> list[tuple[int, list[int]]]:
    with database.session() as db:
        ended = queries.node_gone(db, node_id, polled_at)
        db.commit()
    return ended


def _keep_node_head(database: Database, node_id: int, head: tuple[int, str, str]) -> None:
    try:
        with database.session() as db:
            node = db.get(Node, node_id)
            if node is not None:
                audit.record_node_head(db, node, *head)
    except IntegrityError:
        pass  # the same head, kept by a concurrent poll (another replica) a moment ago


def _chain_head(database: Database) -> dict[str, Any] | None:
    with database.session() as db:
        return audit.head(db)


@router.post("/tasks/{task_id}/accept", tags=["tasks"], response_model=TaskAccepted, responses=TASK)
async def accept_task(
    request: Request,
    task_id: IdPath,
    body: TaskAccept,
    node: CurrentNode,
    db: SessionDep,
    notifier: NotifierDep,
    wait: float = WaitParam,
) -> Any:
    """Accept a task, giving this run's MPC address (and certificate); 409 if the query is over.
    The same acceptance again is answered as the first (`Idempotent-Replayed: true`); another
    one is a 409. With `wait`, the answer also waits (a long-poll) for the go, as
    `GET /tasks/{id}/start` would: `start` holds it once every node accepted, or is null if
    the wait ran out or the query ended meanwhile (then that long-poll says how)."""
    node_id = node.id

    def work() -> dict[str, Any]:
        queries.accept(db, node, task_id, body)
        return {"status": "accepted"}

    def step() -> tuple[idempotency.Answer, int]:
        answer = _task_step(db, node, task_id, "accept", body, work)
        return answer, _commit_and_wake(db, notifier, task_id, GO_OR_END)

    answer, query_id = await run_in_threadpool(step)
    if wait <= 0 or answer.status_code != status.HTTP_200_OK:
        return idempotency.respond(answer)
    try:
        start = await _go(request, node_id, task_id, query_id, wait)
    except Conflict:  # the query ended while this node waited: its start long-poll says how
        start = None
    reply = {**answer.body, "start": start.model_dump(mode="json") if start else None}
    return idempotency.respond(replace(answer, body=reply))


async def _go(
    request: Request, node_id: int, task_id: int, query_id: int, wait: float
) -> TaskStart | None:
    """Wait up to `wait` for the go of a node's task: every party's address once all nodes
    accepted; None if the wait ran out; `Conflict` once the query is over."""

    def check() -> TaskStart | None:
        with request.app.state.db.session() as db:
            me = db.get(Node, node_id)
            info = queries.start_info(db, me, task_id)
        return info if info.start else None

    return await long_poll(request, wait, f"query:{query_id}", check)


@router.get("/tasks/{task_id}/start", tags=["tasks"], response_model=TaskStart, responses=TASK)
async def await_task_start(
    request: Request, task_id: IdPath, node: CurrentNode, wait: float = WaitParam
) -> TaskStart:
    """Long-poll for the go: every party's address once all nodes accepted; 409 if failed."""
    query_id = await run_in_threadpool(_query_of, request.app.state.db, task_id)
    answer = await _go(request, node.id, task_id, query_id, wait)
    return answer or TaskStart(start=False, status="pending")


@router.post("/tasks/{task_id}/reject", tags=["tasks"], response_model=Ack, responses=TASK)
def refuse_task(
    task_id: IdPath, body: TaskRefusal, node: CurrentNode, db: SessionDep, notifier: NotifierDep
) -> Any:
    """The node's policy refuses the task, with the rule's reason: the query fails."""

    def work() -> dict[str, Any]:
        queries.reject(db, node, task_id, body.reason)
        return {"status": "refused"}

    answer = _task_step(db, node, task_id, "reject", body, work)
    _commit_and_wake(db, notifier, task_id, queries.TERMINAL)
    return idempotency.respond(answer)


@router.post("/tasks/{task_id}/fail", tags=["tasks"], response_model=Ack, responses=TASK)
def fail_task(
    task_id: IdPath, body: TaskFailure, node: CurrentNode, db: SessionDep, notifier: NotifierDep
) -> Any:
    """The node could not complete its part: the query fails."""

    def work() -> dict[str, Any]:
        queries.fail(db, node, task_id, body)
        return {"status": "failed"}

    answer = _task_step(db, node, task_id, "fail", body, work)
    _commit_and_wake(db, notifier, task_id, queries.TERMINAL)
    return idempotency.respond(answer)


@router.post("/tasks/{task_id}/progress", tags=["tasks"], response_model=Ack, responses=TASK)
def report_task_progress(
    task_id: IdPath, body: TaskProgress, node: CurrentNode, db: SessionDep
) -> Any:
    """A stage of the node's work on the task (shown to the researcher). The same note as the
    last changes nothing; a newer one is recorded."""

    def work() -> dict[str, Any]:
        queries.progress(db, node, task_id, body.stage, body.message)
        return {"status": "ok"}

    answer = _task_step(db, node, task_id, "progress", body, work, repeatable=True)
    db.commit()
    return idempotency.respond(answer)


@router.post("/tasks/{task_id}/result", tags=["tasks"], response_model=Ack, responses=TASK)
def post_task_result(
    task_id: IdPath, body: TaskResult, node: CurrentNode, db: SessionDep, notifier: NotifierDep
) -> Any:
    """The party's opened, pooled result; the query succeeds once every party posted the same
    one. A result not of its statistic's shape fails the task and the query (`failed`). The
    same result again is answered as the first; another one is a 409."""

    def work() -> dict[str, Any]:
        return {"status": queries.post_result(db, node, task_id, body)}

    answer = _task_step(db, node, task_id, "result", body, work)
    _commit_and_wake(db, notifier, task_id, queries.TERMINAL)
    return idempotency.respond(answer)


def _task_step(
    db: Session,
    node: Node,
    task_id: int,
    step: str,
    body: BaseModel,
    work: Callable[[], dict[str, Any]],
    repeatable: bool = False,
) -> idempotency.Answer:
    """A node's step on its task, once (`idempotency.node_step`): a retry is answered the
    first answer, under the task's query lock."""
    return idempotency.node_step(
        db,
        node,
        ("task", task_id),
        step,
        body.model_dump(mode="json"),
        lambda: queries.lock_task(db, node, task_id),
        lambda: idempotency.Answer(status.HTTP_200_OK, work()),
        repeatable=repeatable,
    )


def _query_of(database: Database, task_id: int) -> int:
    with database.session() as db:
        query_id = db.scalar(select(Task.query_id).where(Task.id == task_id))
    return query_id or 0


# What a long-poll on a query answers: the researcher's at its end (`get_query`), each node's
# at the go or the end (`await_task_start`).
GO_OR_END = frozenset({"running", *queries.TERMINAL})


def _commit_and_wake(
    db: Session, notifier: Notifier, task_id: int, wake_when: Collection[str]
) -> int:
    """Commit a task's change, then wake everyone long-polling on its query if the query is
    now in one of `wake_when`. A step that leaves the query as its waiters saw it (an accept
    before the last, a result before the last) wakes nobody: each wake re-runs the
    researcher's check and every waiting node's, for nothing (their periodic re-checks cover
    a notification lost anyway). Returns the query's id."""
    query_id, status = db.execute(
        select(Query.id, Query.status)
        .join(Task, Task.query_id == Query.id)
        .where(Task.id == task_id)
    ).one()
    db.commit()
    if status in wake_when:
        notifier.notify(f"query:{query_id}")
    return int(query_id)
