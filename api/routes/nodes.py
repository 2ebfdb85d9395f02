"""Node enrolment (admin) and everything a node agent calls: hello, datasets, tasks."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import AdminUser, CurrentNode, NotifierDep, SessionDep
from api.models import Node, Task
from api.notify import RECHECK_S, Notifier
from api.services import network, queries
from tessera.schemas import (
    DatasetSchema,
    Name,
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
WaitParam = Query(0.0, ge=0, description="Long-poll: seconds to wait for news (capped).")


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


async def _long_poll(request: Request, wait: float, topic: str, check: Any) -> Any:
    """Call `check` (in a worker thread, own DB session) until it answers or `wait` runs out."""
    settings = request.app.state.settings
    notifier = request.app.state.notifier
    deadline = time.monotonic() + min(wait, settings.long_poll_max_s)
    while True:
        answer = await run_in_threadpool(check)
        left = deadline - time.monotonic()
        if answer is not None or left <= 0 or await request.is_disconnected():
            return answer
        await notifier.wait(topic, min(left, RECHECK_S))


@router.get("/nodes/me/tasks", tags=["node agent"])
async def my_tasks(request: Request, node: CurrentNode, wait: float = WaitParam) -> list[TaskOut]:
    """This node's new tasks; with `wait`, a long-poll that answers as soon as one arrives."""
    node_id = node.id

    def check() -> list[TaskOut] | None:
        with request.app.state.db.session() as db:
            me = db.get(Node, node_id)
            tasks = queries.offer_tasks(db, me)
        return tasks or None

    return await _long_poll(request, wait, f"node:{node_id}", check) or []


@router.post("/tasks/{task_id}/accept", tags=["node agent"])
def accept(
    task_id: int, body: TaskAccept, node: CurrentNode, db: SessionDep, notifier: NotifierDep
) -> dict[str, Any]:
    task_status = queries.accept(db, node, task_id, body)
    _commit_and_wake(db, notifier, task_id)
    return {"status": task_status}


@router.get("/tasks/{task_id}/start", tags=["node agent"])
async def start(
    request: Request, task_id: int, node: CurrentNode, wait: float = WaitParam
) -> TaskStart:
    """Long-poll for the go: every party's address once all nodes accepted; 409 if failed."""
    node_id = node.id
    with request.app.state.db.session() as db:
        query_id = _query_of(db, task_id)

    def check() -> TaskStart | None:
        with request.app.state.db.session() as db:
            me = db.get(Node, node_id)
            info = queries.start_info(db, me, task_id)
        return info if info.start else None

    answer = await _long_poll(request, wait, f"query:{query_id}", check)
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


def _query_of(db: Session, task_id: int) -> int:
    task = db.get(Task, task_id)
    return task.query_id if task is not None else 0


def _commit_and_wake(db: Session, notifier: Notifier, task_id: int) -> None:
    """Commit a task's change, then wake everyone long-polling on its query."""
    db.commit()
    notifier.notify(f"query:{_query_of(db, task_id)}")
