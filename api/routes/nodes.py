"""Node enrolment (admin) and everything a node agent calls: hello, datasets, tasks."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.db import Database
from api.deps import AdminUser, CurrentNode, NotifierDep, SessionDep, WaitParam
from api.models import Node, Task
from api.notify import Notifier, long_poll
from api.services import budget, network, queries
from tessera.schemas import (
    DatasetSchema,
    Name,
    NodeBudgetReport,
    NodeHello,
    TaskAccept,
    TaskFailure,
    TaskOut,
    TaskProgress,
    TaskRefusal,
    TaskResult,
    TaskStart,
)

router = APIRouter()


class NewNode(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{2,64}$")
    organisation_id: int


@router.post("/nodes", status_code=status.HTTP_201_CREATED, tags=["nodes"])
def create_node(body: NewNode, admin: AdminUser, db: SessionDep) -> dict[str, Any]:
    """Enrol a node. The API key is in this answer only: hand it to the hospital's operator."""
    node, key = network.create_node(db, body.name, body.organisation_id, f"user:{admin.username}")
    db.commit()
    return {**network.node_view(node), "api_key": key}


@router.get("/nodes", tags=["nodes"])
def list_nodes(_: AdminUser, db: SessionDep) -> list[dict[str, Any]]:
    return [network.node_view(n) for n in network.list_nodes(db)]


@router.post("/nodes/{node_id}/rotate-key", tags=["nodes"])
def rotate_key(node_id: int, admin: AdminUser, db: SessionDep) -> dict[str, Any]:
    node, key = network.rotate_key(db, node_id, f"user:{admin.username}")
    db.commit()
    return {**network.node_view(node), "api_key": key}


@router.get("/nodes/me", tags=["node agent"])
def node_me(node: CurrentNode) -> dict[str, Any]:
    return network.node_view(node)


@router.post("/nodes/me/hello", tags=["node agent"])
def hello(body: NodeHello, node: CurrentNode, db: SessionDep) -> dict[str, Any]:
    view = network.node_view(network.hello(db, node, body))
    db.commit()
    return view


@router.put("/nodes/me/datasets/{name}", tags=["node agent"])
def register_dataset(
    name: Name, body: DatasetSchema, node: CurrentNode, db: SessionDep
) -> dict[str, Any]:
    dataset = network.register_dataset(db, node, name, body)
    db.commit()
    return {"name": dataset.name, "node": node.name, "schema": dataset.schema}


@router.put("/nodes/me/budget", tags=["node agent"])
def report_budget(body: NodeBudgetReport, node: CurrentNode, db: SessionDep) -> dict[str, Any]:
    """The node's whole privacy ledger (epsilon and delta spent per study and dataset); it
    replaces the last report."""
    answer = budget.report(db, node, body)
    db.commit()
    return answer


@router.get("/nodes/me/tasks", tags=["node agent"])
async def my_tasks(request: Request, node: CurrentNode, wait: float = WaitParam) -> list[TaskOut]:
    """This node's new tasks; with `wait`, a long-poll that answers as soon as one arrives."""
    node_id = node.id

    def check() -> list[TaskOut] | None:
        with request.app.state.db.session() as db:
            me = db.get(Node, node_id)
            tasks = queries.offer_tasks(db, me)
        return tasks or None

    return await long_poll(request, wait, f"node:{node_id}", check) or []


@router.post("/tasks/{task_id}/accept", tags=["node agent"])
def accept(
    task_id: int, body: TaskAccept, node: CurrentNode, db: SessionDep, notifier: NotifierDep
) -> dict[str, Any]:
    """Accept a task, giving this run's MPC address (and certificate); 409 if the query is over."""
    queries.accept(db, node, task_id, body)
    _commit_and_wake(db, notifier, task_id)
    return {"status": "accepted"}


@router.get("/tasks/{task_id}/start", tags=["node agent"])
async def start(
    request: Request, task_id: int, node: CurrentNode, wait: float = WaitParam
) -> TaskStart:
    """Long-poll for the go: every party's address once all nodes accepted; 409 if failed."""
    node_id = node.id
    query_id = await run_in_threadpool(_query_of, request.app.state.db, task_id)

    def check() -> TaskStart | None:
        with request.app.state.db.session() as db:
            me = db.get(Node, node_id)
            info = queries.start_info(db, me, task_id)
        return info if info.start else None

    answer = await long_poll(request, wait, f"query:{query_id}", check)
    return answer or TaskStart(start=False, status="pending")


@router.post("/tasks/{task_id}/reject", tags=["node agent"])
def reject(
    task_id: int, body: TaskRefusal, node: CurrentNode, db: SessionDep, notifier: NotifierDep
) -> dict[str, Any]:
    queries.reject(db, node, task_id, body.reason)
    _commit_and_wake(db, notifier, task_id)
    return {"status": "refused"}


@router.post("/tasks/{task_id}/fail", tags=["node agent"])
def fail(
    task_id: int, body: TaskFailure, node: CurrentNode, db: SessionDep, notifier: NotifierDep
) -> dict[str, Any]:
    queries.fail(db, node, task_id, body)
    _commit_and_wake(db, notifier, task_id)
    return {"status": "failed"}


@router.post("/tasks/{task_id}/progress", tags=["node agent"])
def progress(task_id: int, body: TaskProgress, node: CurrentNode, db: SessionDep) -> dict[str, Any]:
    queries.progress(db, node, task_id, body.stage, body.message)
    db.commit()
    return {"status": "ok"}


@router.post("/tasks/{task_id}/result", tags=["node agent"])
def result(
    task_id: int, body: TaskResult, node: CurrentNode, db: SessionDep, notifier: NotifierDep
) -> dict[str, Any]:
    queries.post_result(db, node, task_id, body)
    _commit_and_wake(db, notifier, task_id)
    return {"status": "done"}


def _query_of(database: Database, task_id: int) -> int:
    with database.session() as db:
        query_id = db.scalar(select(Task.query_id).where(Task.id == task_id))
    return query_id or 0


def _commit_and_wake(db: Session, notifier: Notifier, task_id: int) -> None:
    """Commit a task's change, then wake everyone long-polling on its query."""
    query_id = db.scalar(select(Task.query_id).where(Task.id == task_id))
    db.commit()
    notifier.notify(f"query:{query_id}")
