"""Queries and their tasks: validation, scheduling, the accept/start/result protocol, timeouts.

A query becomes one task per participating node. It is `pending` until every node accepted,
`running` once the start signal went out, and ends `succeeded` (all parties posted identical
results: the one stored) or `failed` (a refusal, an error, a disagreement or a missed deadline:
nothing stored). Every change takes a row lock on the query, so concurrent node requests (and
several coordinator replicas) see one order of events.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api import audit
from api.models import Node, Query, Study, Task, User, utcnow
from api.services.studies import dataset_nodes
from api.settings import CoordinatorSettings
from tessera.errors import Conflict, NotFound, PolicyDenied
from tessera.schemas import (
    DatasetSchema,
    PartyAddress,
    TaskAccept,
    TaskFailure,
    TaskOut,
    TaskResult,
    TaskStart,
)

MIN_PARTIES = 3
TERMINAL = ("succeeded", "failed")
OPEN_TASK = ("pending", "offered", "accepted", "running")


def aware(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they are UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# ---- submission ------------------------------------------------------------------------


def _agreed_schema(query: Any, registered: list[tuple[Node, Any]]) -> DatasetSchema:
    """The schema all nodes agree on for the columns the query reads, or 409 naming the split."""
    schemas = [(node, DatasetSchema.model_validate(ds.schema)) for node, ds in registered]
    first = schemas[0][1]
    for name in query.referenced_columns():
        specs = [(node.name, s.column(name)) for node, s in schemas]
        missing = [n for n, spec in specs if spec is None]
        if missing and len(missing) < len(specs):
            raise Conflict(
                f"column {name!r} of dataset {query.dataset!r} is not declared by node(s) "
                f"{', '.join(missing)}",
                {"column": name, "nodes": missing},
            )
        declared = {(spec.type, tuple(spec.levels or ())) for _, spec in specs if spec is not None}
        if len(declared) > 1:
            raise Conflict(
                f"the nodes declare column {name!r} of dataset {query.dataset!r} differently "
                "(type or levels)",
                {"column": name, "nodes": [n for n, _ in specs]},
            )
    return first


def submit(db: Session, study: Study, user: User, raw: Any, settings: CoordinatorSettings) -> Query:
    from smpc.query import check_query, parse_query
    from smpc.statistics import SUPPORTED

    query = parse_query(raw)
    datasets = {d for d in _study_datasets(db, study)}
    if query.dataset not in datasets:
        raise NotFound(
            f"dataset {query.dataset!r} is not part of study {study.name!r}",
            {"dataset": query.dataset, "datasets": sorted(datasets)},
        )
    registered = dataset_nodes(db, study, query.dataset)
    if len(registered) < MIN_PARTIES:
        raise Conflict(
            f"MPC needs at least {MIN_PARTIES} parties; {len(registered)} node(s) of this study "
            f"registered dataset {query.dataset!r}",
            {"nodes": [n.name for n, _ in registered]},
        )
    schema = _agreed_schema(query, registered)
    check_query(query, schema, SUPPORTED)
    statistic = query.statistic
    for node, _ in registered:
        allowed = (node.policy or {}).get("allowed_statistics")
        if allowed is not None and statistic not in allowed:
            raise PolicyDenied(
                f"node {node.name} does not allow {statistic!r} queries",
                {"node": node.name, "allowed": allowed},
            )
    now = utcnow()
    record = Query(
        study_id=study.id,
        submitted_by=user.id,
        dataset=query.dataset,
        statistic=statistic,
        query=query.to_json(),
        status="pending",
        created_at=now,
        accept_deadline=now + timedelta(seconds=settings.accept_timeout_s),
        deadline=now + timedelta(seconds=settings.query_timeout_s),
    )
    db.add(record)
    db.flush()
    for party_id, (node, _) in enumerate(registered):
        db.add(Task(query_id=record.id, node_id=node.id, party_id=party_id, status="pending"))
    audit.record(
        db,
        f"user:{user.username}",
        "query.submitted",
        f"query:{record.id}",
        study=study.name,
        statistic=statistic,
        dataset=query.dataset,
        nodes=[n.name for n, _ in registered],
    )
    db.flush()
    return record


def _study_datasets(db: Session, study: Study) -> list[str]:
    from api.models import StudyDataset

    return list(db.scalars(select(StudyDataset.name).where(StudyDataset.study_id == study.id)))


def visible_query(db: Session, query_id: int, user: User) -> Query:
    from api.services.studies import is_member

    query = db.get(Query, query_id)
    if query is None or not (user.role == "admin" or is_member(db, query.study_id, user.id)):
        raise NotFound(f"no query {query_id}", {"query_id": query_id})
    return query


def query_view(db: Session, query: Query) -> dict[str, Any]:
    tasks = db.execute(
        select(Task, Node.name)
        .join(Node, Node.id == Task.node_id)
        .where(Task.query_id == query.id)
        .order_by(Task.party_id)
    ).all()
    error = {"code": query.error_code, "message": query.error_message} if query.error_code else None
    return {
        "id": query.id,
        "study_id": query.study_id,
        "dataset": query.dataset,
        "statistic": query.statistic,
        "query": query.query,
        "status": query.status,
        "error": error,
        "result": query.result,
        "min_count_applied": query.min_count_applied,
        "tasks": [
            {
                "node": name,
                "party_id": t.party_id,
                "status": t.status,
                "stage": t.stage,
                "error": t.error_message,
            }
            for t, name in tasks
        ],
        "created_at": query.created_at,
        "started_at": query.started_at,
        "finished_at": query.finished_at,
    }


def list_queries(db: Session, study: Study) -> list[Query]:
    return list(db.scalars(select(Query).where(Query.study_id == study.id).order_by(Query.id)))


# ---- the node side ----------------------------------------------------------------------


def offer_tasks(db: Session, node: Node) -> list[TaskOut]:
    """Pending tasks of this node whose query still waits for acceptance; marks them offered."""
    rows = db.execute(
        select(Task, Query)
        .join(Query, Query.id == Task.query_id)
        .where(Task.node_id == node.id, Task.status == "pending", Query.status == "pending")
        .order_by(Task.id)
    ).all()
    out = []
    for task, query in rows:
        n_parties = len(query.tasks)
        task.status = "offered"
        out.append(
            TaskOut(
                id=task.id,
                query_id=query.id,
                party_id=task.party_id,
                n_parties=n_parties,
                dataset=query.dataset,
                query=query.query,
                deadline=aware(query.deadline),
            )
        )
    return out


def _locked_task(db: Session, node: Node, task_id: int) -> tuple[Task, Query]:
    task = db.get(Task, task_id)
    if task is None or task.node_id != node.id:
        raise NotFound(f"no task {task_id}", {"task_id": task_id})
    query = db.scalars(select(Query).where(Query.id == task.query_id).with_for_update()).one()
    db.refresh(task)
    return task, query


def _refuse_if_over(query: Query) -> None:
    if query.status in TERMINAL:
        reason = query.error_message or f"query {query.id} has {query.status}"
        raise Conflict(
            f"query {query.id} is over: {reason}", {"query_id": query.id, "status": query.status}
        )


def accept(db: Session, node: Node, task_id: int, body: TaskAccept) -> str:
    task, query = _locked_task(db, node, task_id)
    _refuse_if_over(query)
    if task.status not in ("pending", "offered"):
        raise Conflict(f"task {task_id} is {task.status}, it cannot be accepted again")
    task.status, task.mpc_host, task.mpc_port = "accepted", body.mpc_host, body.mpc_port
    task.mpc_certificate = body.mpc_certificate
    audit.record(
        db, f"node:{node.name}", "task.accepted", f"query:{query.id}", party_id=task.party_id
    )
    db.flush()
    if all(t.status == "accepted" for t in query.tasks):
        query.status, query.started_at = "running", utcnow()
        for t in query.tasks:
            t.status = "running"
        audit.record(db, "system", "query.started", f"query:{query.id}")
    return task.status


def start_info(db: Session, node: Node, task_id: int) -> TaskStart:
    task = db.get(Task, task_id)
    if task is None or task.node_id != node.id:
        raise NotFound(f"no task {task_id}", {"task_id": task_id})
    query = db.get(Query, task.query_id)
    assert query is not None
    db.refresh(query)
    _refuse_if_over(query)
    if query.status != "running":
        return TaskStart(start=False, status="pending")
    parties = db.execute(
        select(Task, Node.name)
        .join(Node, Node.id == Task.node_id)
        .where(Task.query_id == query.id)
        .order_by(Task.party_id)
    ).all()
    return TaskStart(
        start=True,
        status="running",
        deadline=aware(query.deadline),
        parties=[
            PartyAddress(
                party_id=t.party_id,
                node=name,
                host=t.mpc_host or "",
                port=t.mpc_port or 0,
                certificate=t.mpc_certificate,
            )
            for t, name in parties
        ],
    )


def fail_query(db: Session, query: Query, code: str, message: str, actor: str = "system") -> None:
    """End a query as failed: no result is kept, open tasks are cancelled."""
    if query.status in TERMINAL:
        return
    query.status, query.error_code, query.error_message = "failed", code, message
    query.result, query.finished_at = None, utcnow()
    for t in query.tasks:
        if t.status in OPEN_TASK:
            t.status = "cancelled"
    audit.record(db, actor, "query.failed", f"query:{query.id}", code=code, message=message)


def reject(db: Session, node: Node, task_id: int, reason: str) -> None:
    task, query = _locked_task(db, node, task_id)
    _refuse_if_over(query)
    task.status, task.error_code, task.error_message = "refused", "node_refused", reason
    audit.record(db, f"node:{node.name}", "task.refused", f"query:{query.id}", reason=reason)
    fail_query(db, query, "node_refused", f"node {node.name} refused: {reason}")


def fail(db: Session, node: Node, task_id: int, body: TaskFailure) -> None:
    task, query = _locked_task(db, node, task_id)
    _refuse_if_over(query)
    task.status, task.error_code, task.error_message = "failed", body.code, body.message
    audit.record(
        db,
        f"node:{node.name}",
        "task.failed",
        f"query:{query.id}",
        code=body.code,
        message=body.message,
    )
    fail_query(db, query, body.code, f"node {node.name}: {body.message}")


def progress(db: Session, node: Node, task_id: int, stage: str, message: str) -> None:
    task = db.get(Task, task_id)
    if task is None or task.node_id != node.id:
        raise NotFound(f"no task {task_id}", {"task_id": task_id})
    task.stage, task.stage_message = stage, message


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def post_result(db: Session, node: Node, task_id: int, body: TaskResult) -> None:
    task, query = _locked_task(db, node, task_id)
    _refuse_if_over(query)
    if task.status != "running":
        raise Conflict(f"task {task_id} is {task.status}; only a running task takes a result")
    task.status, task.result = "done", body.result
    task.min_count_applied, task.seconds = body.min_count_applied, body.seconds
    db.flush()
    if any(t.status != "done" for t in query.tasks):
        return
    opened = {_canonical([t.result, t.min_count_applied]) for t in query.tasks}
    if len(opened) != 1:
        fail_query(
            db,
            query,
            "results_disagree",
            "the parties opened different results; nothing was stored",
        )
        return
    query.status, query.result = "succeeded", body.result
    query.min_count_applied, query.finished_at = body.min_count_applied, utcnow()
    audit.record(
        db, "system", "result.opened", f"query:{query.id}", min_count_applied=body.min_count_applied
    )


# ---- deadlines --------------------------------------------------------------------------


def sweep(db: Session, now: datetime | None = None) -> list[Query]:
    """Fail every query past its deadline, naming the nodes it waited for."""
    now = now or utcnow()
    overdue = db.scalars(
        select(Query)
        .where(
            ((Query.status == "pending") & (Query.accept_deadline < now))
            | ((Query.status == "running") & (Query.deadline < now))
        )
        .with_for_update(skip_locked=True)
    ).all()
    for query in overdue:
        if query.status == "pending":
            late = [t for t in query.tasks if t.status in ("pending", "offered")]
            seconds = (aware(query.accept_deadline) - aware(query.created_at)).total_seconds()
            what = f"did not accept within {seconds:.0f} s"
        else:
            late = [t for t in query.tasks if t.status == "running"]
            seconds = (aware(query.deadline) - aware(query.created_at)).total_seconds()
            what = f"did not report a result within {seconds:.0f} s"
        names = ", ".join(t.node.name for t in late) or "no node"
        for t in late:
            t.error_code, t.error_message = "timeout", what
        fail_query(db, query, "timeout", f"node(s) {names} {what}")
    return list(overdue)


def node_ids(query: Query) -> list[int]:
    return [t.node_id for t in query.tasks]
