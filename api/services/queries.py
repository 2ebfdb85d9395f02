"""Queries and their tasks: validation, scheduling, the accept/start/result protocol, timeouts.

A query becomes one task per participating node. It is `pending` until every node accepted,
`running` once the last acceptance arrived (the start signal goes out), and ends `succeeded`
(all parties posted identical results: the one stored) or `failed` (a refusal, an error, a
disagreement or a missed deadline: nothing stored).

Every change to a query or its tasks happens under the query's lock (`lock_query`), so
concurrent node requests, and several coordinator replicas, see one order of events. Deadlines
are enforced by conditional updates (`expire`): whichever replica's sweeper gets there first
fails the query, the others find nothing to do.

Every time here (created, started, finished, the deadlines and the comparisons with them) is
read from the session's clock (`api.clock.now`), so tests can move it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from api import audit, clock
from api.db import write_lock
from api.models import Dataset, Node, Query, Study, Task, User
from api.pagination import PageRequest
from api.services import budget, limits
from api.services.network import published_policy
from api.services.studies import is_member, registered_nodes, study_nodes
from api.settings import CoordinatorSettings
from tessera.errors import Conflict, NotFound, PolicyDenied
from tessera.schemas import (
    DatasetSchema,
    DisclosureRules,
    PartyAddress,
    TaskAccept,
    TaskFailure,
    TaskOut,
    TaskResult,
    TaskStart,
)
from tessera.signing import statement_hash, task_statement

if TYPE_CHECKING:
    from smpc.cost import QueryCost
    from smpc.query import QueryBase
    from smpc.statistics import SecureStatistic

MIN_PARTIES = 3
TERMINAL = ("succeeded", "failed")
OPEN_TASK = ("pending", "offered", "accepted", "running")
NOT_ACCEPTED = ("pending", "offered")


def _nodes_phrase(names: list[str]) -> str:
    return f"node {names[0]}" if len(names) == 1 else f"nodes {', '.join(names)}"


# ---- submission ------------------------------------------------------------------------


def _agreed_schema(query: Any, registered: list[tuple[Node, Any]]) -> DatasetSchema:
    """The schema all nodes agree on for the columns the query reads, or 409 naming the split."""
    return agreed_schema(query.dataset, query.referenced_columns(), registered)


def agreed_schema(
    dataset: str,
    columns: list[str] | None,
    registered: list[tuple[Node, Any]],
    exact: bool = False,
) -> DatasetSchema:
    """The first node's schema once every node declares `columns` of `dataset` alike (None:
    every column any node declares), or 409 naming the nodes that differ. Alike is the same
    type and levels; `exact`, the same declaration in every field (bounds included), as a
    generator that models every column's domain needs."""
    schemas = [(node, DatasetSchema.model_validate(ds.schema)) for node, ds in registered]
    if columns is None:
        columns = list(dict.fromkeys(name for _, s in schemas for name in s.names))
    for name in columns:
        specs = [(node.name, s.column(name)) for node, s in schemas]
        missing = [n for n, spec in specs if spec is None]
        if missing and len(missing) < len(specs):
            raise Conflict(
                f"column {name!r} of dataset {dataset!r} is not declared by "
                f"{_nodes_phrase(missing)}",
                {"column": name, "nodes": missing},
            )
        declared: dict[str, list[str]] = {}
        for node_name, spec in specs:
            if spec is not None:
                if exact:
                    kind = spec.model_dump_json(exclude_none=True)
                else:
                    kind = spec.type + (f" {spec.levels}" if spec.levels else "")
                declared.setdefault(kind, []).append(node_name)
        if len(declared) > 1:
            split = "; ".join(f"{_nodes_phrase(n)}: {kind}" for kind, n in declared.items())
            raise Conflict(
                f"the nodes declare column {name!r} of dataset {dataset!r} differently ({split})",
                {"column": name, "declared": declared},
            )
    return schemas[0][1]


@dataclass(frozen=True)
class Plan:
    """A query that passed every check the coordinator can make, and the nodes that would run
    it, in party order (what a submission schedules and a dry run describes)."""

    statistic: SecureStatistic
    schema: DatasetSchema
    registered: list[tuple[Node, Dataset]]

    @property
    def query(self) -> QueryBase:
        return self.statistic.query

    @property
    def nodes(self) -> list[Node]:
        return [node for node, _ in self.registered]

    def cost(self) -> QueryCost:
        """The query's estimated cost among its parties (`smpc.cost`)."""
        return self.statistic.cost(len(self.registered))

    def min_count_applied(self) -> int:
        """The threshold every party will apply: the query's, raised to each node's floor."""
        from smpc.query import applied_threshold

        floors = [published_policy(node).min_count for node in self.nodes]
        return applied_threshold(self.query.min_count, floors)


def plan(db: Session, study: Study, raw: Any) -> Plan:
    """Validate a query as submission does, without scheduling it. Raises `QueryInvalid` (422),
    `NotFound` (dataset not in the study), `Conflict` (too few nodes, schemas disagree) or
    `PolicyDenied` (a node's published policy)."""
    from smpc.statistics import checked, parse_query

    query = parse_query(raw)
    registered = registered_nodes(db, study, query.dataset)
    if len(registered) < MIN_PARTIES:
        raise Conflict(
            f"MPC needs at least {MIN_PARTIES} parties; {len(registered)} node(s) of this study "
            f"registered dataset {query.dataset!r}",
            {"nodes": [n.name for n, _ in registered]},
        )
    for node, _ in registered:
        reason = published_policy(node).disclosure_refusal(query.dataset, query.dp is not None)
        if reason is not None:
            raise PolicyDenied(
                f"node {node.name}: {reason}",
                {"node": node.name, "dataset": query.dataset, "mode": "dp"},
            )
    if query.dp is not None:
        budget.check_affordable(
            db, study, query.dataset, query.dp.epsilon, query.dp.delta, [n for n, _ in registered]
        )
    schema = _agreed_schema(query, registered)
    secure = checked(query, schema)  # the statistic's own checks, as every node will run them
    for node, _ in registered:
        policy = published_policy(node)
        reason = policy.statistic_refusal(query.statistic)
        if reason is not None:
            raise PolicyDenied(
                f"node {node.name} {reason}",
                {"node": node.name, "allowed": policy.allowed_statistics},
            )
    return Plan(secure, schema, registered)


def submit(db: Session, study: Study, user: User, raw: Any, settings: CoordinatorSettings) -> Query:
    """Validate a query (`plan`) and schedule it: one task per participating node, party ids in
    node-id order."""
    planned = plan(db, study, raw)
    query, registered, statistic = planned.query, planned.registered, planned.query.statistic
    bounds = limits.Limits.of(settings)
    limits.check_cost(planned.cost(), bounds)
    limits.admit_query(db, study, user, bounds)
    now = clock.now(db)
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
    tasks = [
        Task(query_id=record.id, node_id=node.id, party_id=party_id, status="pending")
        for party_id, (node, _) in enumerate(registered)
    ]
    db.add_all(tasks)
    db.flush()
    statements = {
        str(task.party_id): statement_hash(_statement(record, task, len(tasks), user))
        for task in tasks
    }
    audit.record(
        db,
        f"user:{user.username}",
        "query.submitted",
        f"query:{record.id}",
        study=study.name,
        statistic=statistic,
        dataset=query.dataset,
        nodes=[n.name for n, _ in registered],
        researcher_id=user.id,
        researcher=user.username,
        statements=statements,
    )
    db.flush()
    return record


def _statement(query: Query, task: Task, n_parties: int, user: User | None) -> dict[str, Any]:
    """The statement the coordinator signs for a task (`tessera.signing.task_statement`)."""
    return task_statement(
        query_id=query.id,
        task_id=task.id,
        party_id=task.party_id,
        n_parties=n_parties,
        study_id=query.study_id,
        dataset=query.dataset,
        query=query.query,
        researcher_id=None if user is None else user.id,
        researcher=None if user is None else user.username,
        submitted_at=query.created_at,
        deadline=query.deadline,
    )


def dry_run(
    db: Session,
    study: Study,
    user: User,
    raw: Any,
    settings: CoordinatorSettings | None = None,
) -> dict[str, Any]:
    """What submitting `raw` would do, and what it would reveal, without creating anything:
    the same checks as `submit` (and the same errors, the per-query cost limits included),
    then the nodes of the study with whether each would take part, the threshold every party
    would apply, the disclosure the statistic declares, the query's cost and the limits with
    the researcher's own use of them. Recorded in the audit log as `query.dry_run`."""
    from smpc.disclosure import AppliedRules
    from smpc.statistics import disclosure  # (smpc.disclosure is the rules module)

    planned = plan(db, study, raw)
    bounds = limits.Limits.of(settings) if settings is not None else limits.Limits()
    cost = planned.cost()
    limits.check_cost(cost, bounds)
    policies = [published_policy(node) for node in planned.nodes]
    rules = AppliedRules.local(
        planned.query.min_count,
        [p.min_count for p in policies],
        [p.rules(planned.query.dataset) for p in policies] or [DisclosureRules()],
    )
    reveals = disclosure(planned.statistic, planned.schema, rules)
    taking_part = {node.id for node in planned.nodes}
    nodes = []
    for node in study_nodes(db, study):
        takes_part = node.id in taking_part
        reason = None if takes_part else f"has not registered dataset {planned.query.dataset!r}"
        nodes.append(
            {
                "id": node.id,
                "name": node.name,
                "organisation": node.organisation.name,
                "takes_part": takes_part,
                "reason": reason,
                # the disclosure mode and rules the node applies to the query's dataset
                "disclosure": published_policy(node).rules(planned.query.dataset).model_dump(),
            }
        )
    answer = {
        "valid": True,
        "statistic": planned.query.statistic,
        "dataset": planned.query.dataset,
        "query": planned.query.to_json(),
        "nodes": nodes,
        "parties": len(planned.nodes),
        "min_count_applied": planned.min_count_applied(),
        "reveals": reveals["reveals"],
        "intermediates": reveals["intermediates"],
        "epsilon": reveals["epsilon"],
        "delta": reveals["delta"],
        "rules": reveals["rules"],
        "expected_error": reveals["expected_error"],
        "cost": cost.to_json(),
        "limits": {**bounds.describe(), **limits.usage(db, user)},
    }
    audit.record(
        db,
        f"user:{user.username}",
        "query.dry_run",
        f"study:{study.name}",
        statistic=planned.query.statistic,
        dataset=planned.query.dataset,
        nodes=[n.name for n in planned.nodes],
    )
    db.flush()
    return answer


def visible_query(db: Session, query_id: int, user: User) -> Query:
    """The query if the user may read it (admin, or a member of its study); 404 otherwise."""
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
                "stage": t.progress_stage,
                "error": t.error_message,
            }
            for t, name in tasks
        ],
        "created_at": query.created_at,
        "started_at": query.started_at,
        "finished_at": query.finished_at,
    }


def list_queries(
    db: Session,
    study: Study,
    page: PageRequest,
    status: str | None = None,
    statistic: str | None = None,
) -> tuple[list[Query], str | None]:
    """A page of the study's queries (of one status and statistic, if given)."""
    stmt = select(Query).where(Query.study_id == study.id)
    if status is not None:
        stmt = stmt.where(Query.status == status)
    if statistic is not None:
        stmt = stmt.where(Query.statistic == statistic)
    return page.page(db.scalars(page.apply(stmt, Query.id)).all(), lambda q: q.id)


def node_ids(db: Session, query_id: int) -> list[int]:
    return list(db.scalars(select(Task.node_id).where(Task.query_id == query_id)))


# ---- locking ----------------------------------------------------------------------------


def lock_query(db: Session, query_id: int) -> Query:
    """The query and its tasks as last committed, locked until this transaction ends."""
    write_lock(db)
    query = db.scalars(
        select(Query)
        .where(Query.id == query_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    db.scalars(
        select(Task).where(Task.query_id == query_id).execution_options(populate_existing=True)
    ).all()
    return query


def _own_task(db: Session, node: Node, task_id: int) -> Task:
    """A node's own task; another node's is 404, as if it did not exist."""
    task = db.get(Task, task_id)
    if task is None or task.node_id != node.id:
        raise NotFound(f"no task {task_id}", {"task_id": task_id})
    return task


def _locked_task(db: Session, node: Node, task_id: int) -> tuple[Task, Query]:
    task = _own_task(db, node, task_id)
    return task, lock_query(db, task.query_id)


def lock_task(db: Session, node: Node, task_id: int) -> Task:
    """A node's own task, its query (and so the task) locked until this transaction ends."""
    return _locked_task(db, node, task_id)[0]


def _refuse_if_over(query: Query) -> None:
    if query.status in TERMINAL:
        reason = query.error_message or f"query {query.id} has {query.status}"
        raise Conflict(
            f"query {query.id} is over: {reason}",
            {"query_id": query.id, "status": query.status, "code": query.error_code},
        )


# ---- the node side ----------------------------------------------------------------------


def offer_tasks(db: Session, node: Node) -> list[TaskOut]:
    """This node's new tasks (pending, their query still waiting for acceptance). Each task is
    offered once: taking it marks it `offered`, under its query's lock, so two concurrent polls
    never both get it."""
    candidates = db.execute(
        select(Task.id, Task.query_id)
        .join(Query, Query.id == Task.query_id)
        .where(Task.node_id == node.id, Task.status == "pending", Query.status == "pending")
        .order_by(Task.id)
    ).all()
    out = []
    for task_id, query_id in candidates:
        query = lock_query(db, query_id)
        task = next(t for t in query.tasks if t.id == task_id)
        if task.status != "pending" or query.status != "pending":
            continue
        task.status = "offered"
        researcher = db.get(User, query.submitted_by)
        statement = _statement(query, task, len(query.tasks), researcher)
        out.append(
            TaskOut(
                id=task.id,
                query_id=query.id,
                study_id=query.study_id,
                party_id=task.party_id,
                n_parties=len(query.tasks),
                dataset=query.dataset,
                query=query.query,
                deadline=query.deadline,
                researcher_id=statement["researcher_id"],
                researcher=statement["researcher"],
                submitted_at=query.created_at,
                signature=audit.signer(db).sign_statement(statement),
            )
        )
    db.flush()
    return out


def accept(db: Session, node: Node, task_id: int, body: TaskAccept) -> None:
    """Record the node's acceptance and MPC address; the last acceptance starts the query."""
    task, query = _locked_task(db, node, task_id)
    _refuse_if_over(query)
    if task.status not in NOT_ACCEPTED:
        raise Conflict(
            f"task {task_id} is {task.status}; it cannot be accepted again",
            {"task_id": task_id, "status": task.status},
        )
    if clock.now(db) > query.accept_deadline:
        raise Conflict(
            f"query {query.id} is past its acceptance deadline",
            {"query_id": query.id, "status": query.status},
        )
    task.status, task.mpc_host, task.mpc_port = "accepted", body.mpc_host, body.mpc_port
    task.mpc_certificate = body.mpc_certificate
    audit.record(
        db, f"node:{node.name}", "task.accepted", f"query:{query.id}", party_id=task.party_id
    )
    if all(t.status == "accepted" for t in query.tasks):
        query.status, query.started_at = "running", clock.now(db)
        for t in query.tasks:
            # every node starts its party on this go: the stage is the coordinator's to set
            # (a progress call from each node said the same, for 10 % of the CPU a query cost)
            t.status, t.progress_stage = "running", "mpc"
            t.progress_message = f"party {t.party_id} of {len(query.tasks)}"
        audit.record(db, "system", "query.started", f"query:{query.id}")
    db.flush()


def start_info(db: Session, node: Node, task_id: int) -> TaskStart:
    """The go (every party's address, ordered by party id) once the query runs; 409 once over."""
    task = _own_task(db, node, task_id)
    query = db.get(Query, task.query_id, populate_existing=True)
    assert query is not None
    _refuse_if_over(query)
    if query.status != "running":
        return TaskStart(start=False, status="pending")
    return TaskStart(
        start=True,
        status="running",
        deadline=query.deadline,
        parties=party_addresses(db, Task, Task.query_id == query.id),
    )


def party_addresses(db: Session, part: Any, where: Any) -> list[PartyAddress]:
    """Every party's address for the go, ordered by party id: its host, port and run
    certificate as it accepted (`part` is `Task`, or `SynthesisJob` for a pooled synthesis,
    `where` selects the run's), with its node's name and long-term identity certificate."""
    rows = db.execute(
        select(part, Node.name, Node.identity_certificate)
        .join(Node, Node.id == part.node_id)
        .where(where)
        .order_by(part.party_id)
    ).all()
    return [
        PartyAddress(
            party_id=p.party_id,
            node=name,
            host=p.mpc_host or "",
            port=p.mpc_port or 0,
            certificate=p.mpc_certificate,
            identity_certificate=identity,
        )
        for p, name, identity in rows
    ]


def _close_tasks(query: Query) -> None:
    """A failed query's open tasks are cancelled, and no party's opened result is kept."""
    for t in query.tasks:
        t.result = None
        if t.status in OPEN_TASK:
            t.status = "cancelled"


def fail_query(db: Session, query: Query, code: str, message: str, actor: str = "system") -> None:
    """End a locked query as failed: no result is kept, open tasks are cancelled."""
    if query.status in TERMINAL:
        return
    query.status, query.error_code, query.error_message = "failed", code, message
    query.result, query.min_count_applied, query.finished_at = None, None, clock.now(db)
    _close_tasks(query)
    audit.record(db, actor, "query.failed", f"query:{query.id}", code=code, message=message)
    db.flush()


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
    lost = [t for t in query.tasks if t.node.name in body.lost_nodes and t.id != task.id]
    if body.code == "peer_lost" and lost:
        # the node reporting is not the one to blame: name the nodes it lost first
        names = [t.node.name for t in lost]
        for t in lost:
            t.error_code, t.error_message = "peer_lost", f"lost (seen by {node.name})"
        message = f"{_nodes_phrase(names)} lost (node {node.name}: {body.message})"
        fail_query(db, query, body.code, message)
        return
    fail_query(db, query, body.code, f"node {node.name}: {body.message}")


def progress(db: Session, node: Node, task_id: int, stage: str, message: str) -> None:
    task, query = _locked_task(db, node, task_id)
    _refuse_if_over(query)
    task.progress_stage, task.progress_message = stage, message
    db.flush()


def result_problem(statistic: str, result: dict[str, Any]) -> str | None:
    """Why `result` is not of its statistic's result type (`QueryResult`), naming the keys and
    never a value; None when it is."""
    from smpc.statistics import REGISTRY

    cls = REGISTRY.get(statistic)
    if cls is None:
        return f"no statistic {statistic!r}"
    try:
        _result_adapter(statistic).validate_python(result)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "result"
        return f"{where}: {first['msg']}"
    return None


@functools.cache
def _result_adapter(statistic: str) -> TypeAdapter[Any]:
    from smpc.statistics import REGISTRY

    return TypeAdapter(REGISTRY[statistic].result_model())


def post_result(db: Session, node: Node, task_id: int, body: TaskResult) -> str:
    """Store a party's opened result; once every party reported, compare them all: the query
    succeeds with the result only if all are identical (canonical JSON). A result that is not
    of its statistic's result type fails the query: only results of the documented shape are
    ever stored and published. Returns the task's status (`done`, or `failed`)."""
    task, query = _locked_task(db, node, task_id)
    _refuse_if_over(query)
    if task.status != "running":
        raise Conflict(
            f"task {task_id} is {task.status}; only a running task takes a result",
            {"task_id": task_id, "status": task.status},
        )
    problem = result_problem(query.statistic, body.result)
    if problem is not None:
        task.status, task.error_code = "failed", "result_invalid"
        task.error_message = f"not a {query.statistic} result ({problem})"
        fail_query(
            db,
            query,
            "result_invalid",
            f"node {node.name} posted a result that is not a {query.statistic} result "
            f"({problem}); nothing was stored",
        )
        return task.status
    task.status, task.result = "done", body.result
    task.min_count_applied, task.seconds = body.min_count_applied, body.seconds
    db.flush()
    if any(t.status != "done" for t in query.tasks):
        return task.status
    opened = {audit.canonical([t.result, t.min_count_applied]) for t in query.tasks}
    if len(opened) != 1:
        fail_query(
            db,
            query,
            "results_disagree",
            f"the {len(query.tasks)} parties opened different results; nothing was stored",
        )
        return task.status
    query.status, query.result = "succeeded", body.result
    query.min_count_applied, query.finished_at = body.min_count_applied, clock.now(db)
    audit.record(
        db, "system", "result.opened", f"query:{query.id}", min_count_applied=body.min_count_applied
    )
    db.flush()
    return task.status


# ---- deadlines --------------------------------------------------------------------------


def _overdue(now: datetime) -> Any:
    return or_(
        and_(Query.status == "pending", Query.accept_deadline < now),
        and_(Query.status == "running", Query.deadline < now),
    )


def overdue_queries(db: Session, now: datetime | None = None) -> list[int]:
    """Ids of the queries past a deadline at `now` (default: the session's clock; `expire`
    each, in its own transaction)."""
    now = now or clock.now(db)
    return list(db.scalars(select(Query.id).where(_overdue(now)).order_by(Query.id)))


def node_gone(db: Session, node_id: int, polled_at: datetime) -> list[tuple[int, list[int]]]:
    """Fail every unfinished query that waits for node `node_id`, if the node has not polled
    since `polled_at` (its poll's connection closed then): the query names it and what it last
    did. Returns (query id, its nodes' ids) of each query failed, for the long-polls to wake."""
    node = db.get(Node, node_id)
    if node is None or (node.last_poll_at is not None and node.last_poll_at > polled_at):
        return []  # back already (its new poll noted it)
    open_ids = db.scalars(
        select(Task.query_id)
        .join(Query, Query.id == Task.query_id)
        .where(
            Task.node_id == node_id,
            Task.status.in_((*NOT_ACCEPTED, "accepted", "running")),
            Query.status.in_(("pending", "running")),
        )
        .order_by(Task.query_id)
    ).all()
    ended = []
    for query_id in open_ids:
        query = lock_query(db, query_id)
        if query.status in TERMINAL:
            continue
        mine = [t for t in query.tasks if t.node_id == node_id]
        if not mine or mine[0].status not in (*NOT_ACCEPTED, "accepted", "running"):
            continue
        step = last_step(mine[0])
        mine[0].error_code, mine[0].error_message = "node_lost", f"went away ({step})"
        message = (
            f"node {node.name} went away: its connection to the coordinator closed and it did "
            f"not come back (it had {step})"
        )
        fail_query(db, query, "node_lost", message)
        ended.append((query.id, [t.node_id for t in query.tasks]))
    return ended


def last_step(task: Task) -> str:
    """What a node last did with its task, as the coordinator saw it (for a missed deadline)."""
    if task.status == "pending":
        return "never fetched the task"
    if task.status == "offered":
        if task.progress_stage == "queued":
            return "fetched the task and queued it behind its other protocols"
        return "fetched the task, then sent nothing"
    if task.progress_stage == "mpc":  # set with the go
        return "accepted and was given the go to run its MPC party"
    if task.progress_stage:
        return f"accepted; last reported stage {task.progress_stage!r}"
    return "accepted, then sent nothing"


def expire(db: Session, query_id: int, now: datetime | None = None) -> Query | None:
    """Fail one query if it is still past its deadline, naming the nodes it waited for.

    The status change is a conditional update, so of several sweepers (replicas) exactly one
    wins; the others, and a sweeper that lost to the last node's answer, get None. `now`
    defaults to the session's clock.
    """
    now = now or clock.now(db)
    for phase, deadline in (("pending", Query.accept_deadline), ("running", Query.deadline)):
        claimed = db.execute(
            update(Query)
            .where(Query.id == query_id, Query.status == phase, deadline < now)
            .values(status="failed", error_code="timeout", result=None, finished_at=now)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount == 1:  # type: ignore[attr-defined]
            break
    else:
        return None
    query = lock_query(db, query_id)  # the update holds the lock already; this reads afresh
    if phase == "pending":
        late = [t for t in query.tasks if t.status in NOT_ACCEPTED]
        seconds = (query.accept_deadline - query.created_at).total_seconds()
        what = f"did not accept within {seconds:g} s"
    else:
        late = [t for t in query.tasks if t.status in ("accepted", "running")]
        seconds = (query.deadline - query.created_at).total_seconds()
        what = f"did not report a result within {seconds:g} s"
    names = [t.node.name for t in late]
    message = f"{_nodes_phrase(names)} {what}" if names else f"the query {what}"
    if late:
        message += " (" + "; ".join(f"{t.node.name}: {last_step(t)}" for t in late) + ")"
    for t in late:
        t.error_code, t.error_message = "timeout", f"{what} ({last_step(t)})"
    query.error_message = message
    _close_tasks(query)
    audit.record(db, "system", "query.failed", f"query:{query.id}", code="timeout", message=message)
    db.flush()
    return query
