"""Synthesis requests, one job per node, and the releases they publish.

A researcher's request (`SynthesisSpec`) becomes one job for every node of the study that
registered the dataset and whose published synthesis policy allows it (the others are listed in
`skipped`, with the reason; the node's own policy still decides). A job goes

    pending -> offered -> training -> awaiting_review -> released | rejected
                                   -> gated (a release gate failed: nothing is offered)
    pending | offered -> refused (the node's policy)       any open state -> failed

`pending`, `offered` and `training` must end by the job's deadline (`synthesis_timeout_s`),
or the sweeper fails it; a candidate awaiting its stewards waits as long as they take. The
coordinator keeps only what nodes report: progress (stage, epoch, loss), the gates and their
values, the stewards' decisions, and for an approved candidate the release: its card, the
synthetic data (Parquet, its hash checked on upload) and the report. Rejected, gated and failed
jobs leave the audit record only.

A pooled request (`spec.scope == "pooled"`) is one generator measured by MPC over every
participating node's rows: at least `MIN_PARTIES` nodes, each declaring the dataset's whole
schema identically, each with a party id (node-id order). Its jobs go

    pending -> offered -> training (accepted with the node's MPC address; the go, every party's
    address, once all accepted) -> awaiting_review (the candidate's and measurements' hashes
    agree with every other node's, and its gates passed) -> approved (its stewards' signed
    approvals verified; its card and report kept) -> released (once every node's job is
    approved, the first upload of the data publishes one release for the request)

and the request stands or falls as one: a job refused, failed, rejected, gated or expired fails
every other open job of the request (`pooled_blocked`, naming the node and why); candidates
whose hashes differ fail them all (`candidates_disagree`). The data reaches the coordinator
only after every node's stewards approved it.

Every change to a job happens under its request's and its own row locks (`lock_job`: the
request first, so a pooled request's jobs change one at a time), as queries do. Times (created,
the deadline and the comparisons with it) come from the session's clock (`api.clock.now`).
"""

from __future__ import annotations

import hashlib
import io
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from api import audit, clock
from api.db import write_lock
from api.models import (
    Node,
    Release,
    ReleaseFile,
    Study,
    SynthesisJob,
    SynthesisRequest,
    User,
)
from api.pagination import PageRequest
from api.services import limits
from api.services.network import published_policy
from api.services.queries import MIN_PARTIES, agreed_schema, party_addresses
from api.services.studies import is_member, registered_nodes
from api.settings import CoordinatorSettings
from tessera.errors import Conflict, InvalidRequest, NotFound, PolicyDenied
from tessera.schemas import (
    DatasetSchema,
    PooledApproval,
    ReleaseCard,
    ReleaseContent,
    StewardDecision,
    SynthesisCandidate,
    SynthesisJobOut,
    SynthesisProgress,
    SynthesisRejection,
    SynthesisSpec,
    TaskAccept,
    TaskFailure,
    TaskStart,
)
from tessera.stewards import decision_refusal, distinct_keys, fingerprint

TERMINAL = ("gated", "released", "rejected", "refused", "failed")
AT_REST = (*TERMINAL, "awaiting_review", "approved")  # nothing more happens without a steward
BEFORE_DEADLINE = ("pending", "offered", "training")
PARQUET = "application/vnd.apache.parquet"
# the card fields every node of a pooled release holds alike (its candidate's); `device` and
# `fit_seconds` are party 0's
SHARED = (
    "generator",
    "generator_license",
    "params",
    "rows",
    "columns",
    "epsilon",
    "delta",
    "sha256",
    "seed",
    "target",
    "scope",
    "parties",
    "measurement_sha256",
)


# ---- requests ---------------------------------------------------------------------------


def published_refusal(node: Node, spec: SynthesisSpec) -> str | None:
    """Why a node's published synthesis policy refuses `spec` (None: it may take it): the
    node's own rule (`SynthesisPolicySummary.refusal`), applied to what it published."""
    published = published_policy(node)
    policy = published.synthesis
    if policy is None:
        return "its policy allows no synthesis"
    reason = policy.refusal(spec)
    if reason is not None:
        return f"its {reason}"
    if not policy.stewards:
        return "its policy publishes no steward keys, so no release of it could be verified"
    return published.disclosure_refusal(spec.dataset, spec.differentially_private, "synthesis")


def request(
    db: Session, study: Study, user: User, spec: SynthesisSpec, settings: CoordinatorSettings
) -> SynthesisRequest:
    """Validate and schedule a synthesis request: one job per node that may take it."""
    from synth import check_request

    check_request(spec.generator, spec.epsilon, spec.delta)
    registered = registered_nodes(db, study, spec.dataset)
    if not registered:
        raise Conflict(
            f"no node of study {study.name!r} has registered dataset {spec.dataset!r}",
            {"dataset": spec.dataset},
        )
    if spec.target is not None:
        lacking = [
            node.name
            for node, ds in registered
            if DatasetSchema.model_validate(ds.schema).column(spec.target) is None
        ]
        if lacking:
            raise InvalidRequest(
                f"target {spec.target!r} is not a column of dataset {spec.dataset!r} at "
                f"node(s) {', '.join(lacking)}",
                {"target": spec.target, "nodes": lacking},
            )
    taking, skipped = [], []
    for node, _ in registered:
        reason = published_refusal(node, spec)
        if reason is None:
            taking.append(node)
        else:
            skipped.append({"node": node.name, "reason": reason})
    pooled = spec.scope == "pooled"
    if pooled:
        _check_pooled(spec, [(n, ds) for n, ds in registered if n in taking], skipped)
    if not taking:
        raise PolicyDenied(
            "no node of the study may take this request: "
            + "; ".join(f"{s['node']}: {s['reason']}" for s in skipped),
            {"skipped": skipped},
        )
    limits.admit_synthesis(db, study, user, limits.Limits.of(settings))
    now = clock.now(db)
    record = SynthesisRequest(
        study_id=study.id,
        requested_by=user.id,
        dataset=spec.dataset,
        generator=spec.generator,
        spec=spec.model_dump(mode="json"),
        skipped=skipped,
        scope=spec.scope,
        created_at=now,
    )
    db.add(record)
    db.flush()
    deadline = now + timedelta(seconds=settings.synthesis_timeout_s)
    for party_id, node in enumerate(taking):  # node-id order, as a query's parties
        db.add(
            SynthesisJob(
                request_id=record.id,
                node_id=node.id,
                party_id=party_id if pooled else None,
                deadline=deadline,
                created_at=now,
            )
        )
    audit.record(
        db,
        f"user:{user.username}",
        "synthesis.requested",
        f"synthesis:{record.id}",
        study=study.name,
        dataset=spec.dataset,
        generator=spec.generator,
        rows=spec.rows,
        epsilon=spec.epsilon,
        scope=spec.scope,
        nodes=[n.name for n in taking],
        skipped=[s["node"] for s in skipped],
    )
    db.flush()
    return record


def _check_pooled(
    spec: SynthesisSpec, taking: list[tuple[Node, Any]], skipped: list[dict[str, str]]
) -> None:
    """A pooled request needs `MIN_PARTIES` nodes that take it (an MPC needs at least three),
    each declaring every column of the dataset identically (MST models them all): else 409,
    naming the nodes."""
    if len(taking) < MIN_PARTIES:
        why = "; ".join(f"{s['node']}: {s['reason']}" for s in skipped) or "none"
        names = ", ".join(n.name for n, _ in taking) or "none"
        raise Conflict(
            f"a pooled synthesis needs at least {MIN_PARTIES} nodes (its measurement is an MPC); "
            f"{len(taking)} of the study's nodes may take it ({names}); skipped: {why}",
            {
                "nodes": [n.name for n, _ in taking],
                "skipped": skipped,
                "required": MIN_PARTIES,
            },
        )
    agreed_schema(spec.dataset, None, taking, exact=True)


def visible_request(db: Session, request_id: int, user: User) -> SynthesisRequest:
    record = db.get(SynthesisRequest, request_id)
    if record is None or not _may_read(db, record.study_id, user):
        raise NotFound(f"no synthesis request {request_id}", {"request_id": request_id})
    return record


def list_requests(
    db: Session, study: Study, page: PageRequest, status: str | None = None
) -> tuple[list[SynthesisRequest], str | None]:
    """A page of the study's synthesis requests; `status` `done` (every job ended) or
    `running` (some job has not)."""
    stmt = select(SynthesisRequest).where(SynthesisRequest.study_id == study.id)
    if status is not None:
        open_job = (
            select(SynthesisJob.id)
            .where(
                SynthesisJob.request_id == SynthesisRequest.id,
                SynthesisJob.status.not_in(TERMINAL),
            )
            .exists()
        )
        stmt = stmt.where(~open_job if status == "done" else open_job)
    return page.page(db.scalars(page.apply(stmt, SynthesisRequest.id)).all(), lambda r: r.id)


def request_view(db: Session, record: SynthesisRequest) -> dict[str, Any]:
    jobs = db.execute(
        select(SynthesisJob, Node.name)
        .join(Node, Node.id == SynthesisJob.node_id)
        .where(SynthesisJob.request_id == record.id)
        .order_by(SynthesisJob.id)
    ).all()
    releases = dict(
        db.execute(select(Release.job_id, Release.id).where(Release.request_id == record.id)).all()
    )
    if record.scope == "pooled":  # one release for every job
        releases = {job.id: next(iter(releases.values())) for job, _ in jobs} if releases else {}
    views = [_job_view(job, name, releases.get(job.id)) for job, name in jobs]
    statuses = [j["status"] for j in views]
    return {
        "id": record.id,
        "study_id": record.study_id,
        "requested_by": record.user.username,
        "dataset": record.dataset,
        "generator": record.generator,
        "spec": record.spec,
        "scope": record.scope,
        "status": "done" if all(s in TERMINAL for s in statuses) else "running",
        # every node of a pooled request approved: its data is due, no steward is waited for
        "at_rest": all(s in AT_REST for s in statuses)
        and not all(s == "approved" for s in statuses),
        "jobs": views,
        "skipped": record.skipped or [],
        "created_at": record.created_at,
    }


def _job_view(job: SynthesisJob, node: str, release_id: int | None) -> dict[str, Any]:
    progress = None
    if job.progress_stage is not None:
        progress = {
            "stage": job.progress_stage,
            "message": job.progress_message or "",
            "epoch": job.epoch,
            "epochs": job.epochs,
            "loss": job.loss,
        }
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    return {
        "id": job.id,
        "node": node,
        "party_id": job.party_id,
        "status": job.status,
        "progress": progress,
        "gates": job.gates,
        "approvals_required": job.approvals_required,
        "decisions": job.decisions,
        "error": error,
        "release_id": release_id,
        "deadline": job.deadline,
        "updated_at": job.updated_at,
    }


def _may_read(db: Session, study_id: int, user: User) -> bool:
    return user.role == "admin" or is_member(db, study_id, user.id)


# ---- the node side ----------------------------------------------------------------------


def lock_job(db: Session, job_id: int) -> SynthesisJob:
    """The job as last committed, locked until this transaction ends, after its request and
    every job of it (a pooled request's jobs change together; the request is locked first
    everywhere, so two nodes' calls cannot deadlock)."""
    write_lock(db)
    request_id = db.scalar(select(SynthesisJob.request_id).where(SynthesisJob.id == job_id))
    db.scalars(
        select(SynthesisRequest)
        .where(SynthesisRequest.id == request_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    db.scalars(
        select(SynthesisJob)
        .where(SynthesisJob.request_id == request_id)
        .order_by(SynthesisJob.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    return db.scalars(
        select(SynthesisJob)
        .where(SynthesisJob.id == job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


def _own_job(db: Session, node: Node, job_id: int, allowed: tuple[str, ...]) -> SynthesisJob:
    """A node's own job, locked, in one of the `allowed` states (another node's is 404; a job
    in another state is 409, saying which)."""
    _node_job(db, node, job_id)
    job = lock_job(db, job_id)
    if job.status not in allowed:
        reason = f": {job.error_message}" if job.error_message else ""
        raise Conflict(
            f"synthesis job {job_id} is {job.status}{reason}",
            {"job_id": job_id, "status": job.status, "code": job.error_code},
        )
    return job


def _node_job(db: Session, node: Node, job_id: int) -> SynthesisJob:
    """A node's own job, unlocked; another node's is 404, as if it did not exist."""
    found = db.get(SynthesisJob, job_id)
    if found is None or found.node_id != node.id:
        raise NotFound(f"no synthesis job {job_id}", {"job_id": job_id})
    return found


def request_of(db: Session, job_id: int) -> int:
    """The id of the request job `job_id` is part of (the job exists)."""
    request_id = db.scalar(select(SynthesisJob.request_id).where(SynthesisJob.id == job_id))
    assert request_id is not None
    return request_id


def _pooled(job: SynthesisJob) -> bool:
    return job.request.scope == "pooled"


def _block_siblings(db: Session, job: SynthesisJob, why: str) -> None:
    """A pooled request stands or falls as one: once `job` ended without a release, every
    other open job of its request fails (`pooled_blocked`, naming the node and why), and any
    card or report kept for it is dropped. Its node learns it by a 409 on its next call."""
    if not _pooled(job):
        return
    message = f"node {job.node.name} {why}"
    for sibling in job.request.jobs:
        if sibling.id == job.id or sibling.status in TERMINAL:
            continue
        sibling.status, sibling.error_code, sibling.error_message = (
            "failed",
            "pooled_blocked",
            message,
        )
        sibling.card, sibling.report = None, None
        audit.record(
            db,
            "system",
            "synthesis.failed",
            f"synthesis_job:{sibling.id}",
            code="pooled_blocked",
            message=message,
        )


def offer_jobs(db: Session, node: Node) -> list[SynthesisJobOut]:
    """This node's new jobs; taking one marks it `offered`, under its lock, so a job is offered
    once."""
    ids = list(
        db.scalars(
            select(SynthesisJob.id)
            .where(SynthesisJob.node_id == node.id, SynthesisJob.status == "pending")
            .order_by(SynthesisJob.id)
        )
    )
    out = []
    for job_id in ids:
        job = lock_job(db, job_id)
        if job.status != "pending":
            continue
        job.status = "offered"
        record = job.request
        offer = SynthesisJobOut(
            id=job.id,
            request_id=record.id,
            study_id=record.study_id,
            requested_by=record.user.username,
            spec=SynthesisSpec.model_validate(record.spec),
            deadline=job.deadline,
            party_id=job.party_id,
            n_parties=len(record.jobs) if record.scope == "pooled" else None,
        )
        # signed like a query task: the node runs the coordinator's word only
        offer.signature = audit.signer(db).sign_synthesis(offer.statement())
        out.append(offer)
    db.flush()
    return out


def accept(db: Session, node: Node, job_id: int, body: TaskAccept | None = None) -> SynthesisJob:
    """The node takes its job: it trains (local), or (pooled) says where its MPC party listens,
    with this run's certificate, and waits for the go (`start_info`). A local job ignores
    `body`; a pooled one needs it."""
    job = _own_job(db, node, job_id, ("pending", "offered"))
    if clock.now(db) > job.deadline:
        raise Conflict(f"synthesis job {job_id} is past its deadline", {"job_id": job_id})
    pooled = _pooled(job)
    if pooled:
        if body is None:
            raise InvalidRequest(
                f"synthesis job {job_id} is pooled: accept it with the node's MPC address "
                "(a TaskAccept body: mpc_host, mpc_port, mpc_certificate)",
                {"job_id": job_id},
            )
        job.mpc_host, job.mpc_port = body.mpc_host, body.mpc_port
        job.mpc_certificate = body.mpc_certificate
    job.status = "training"
    audit.record(
        db,
        f"node:{node.name}",
        "synthesis.accepted",
        f"synthesis_job:{job.id}",
        **({"party_id": job.party_id} if pooled else {}),
    )
    if pooled and not any(j.status in ("pending", "offered") for j in job.request.jobs):
        audit.record(db, "system", "synthesis.started", f"synthesis:{job.request_id}")
    db.flush()
    return job


def start_info(db: Session, node: Node, job_id: int) -> TaskStart:
    """A pooled job's go: `pending` until every job of the request accepted, then every
    party's address ordered by party id (as a query's); `failed` once the request failed."""
    job = _node_job(db, node, job_id)
    db.refresh(job.request)
    jobs = db.scalars(
        select(SynthesisJob)
        .where(SynthesisJob.request_id == job.request_id)
        .execution_options(populate_existing=True)
    ).all()
    if not _pooled(job):
        raise Conflict(
            f"synthesis job {job_id} is local: it has no MPC run to start",
            {"job_id": job_id, "status": job.status},
        )
    if any(j.status in ("refused", "failed", "rejected", "gated") for j in jobs):
        return TaskStart(start=False, status="failed")
    if any(j.status in ("pending", "offered") for j in jobs):
        return TaskStart(start=False, status="pending")
    return TaskStart(
        start=True,
        status="running",
        deadline=job.deadline,
        parties=party_addresses(db, SynthesisJob, SynthesisJob.request_id == job.request_id),
    )


def refuse(db: Session, node: Node, job_id: int, reason: str) -> SynthesisJob:
    job = _own_job(db, node, job_id, ("pending", "offered"))
    job.status, job.error_code, job.error_message = "refused", "node_refused", reason
    audit.record(
        db, f"node:{node.name}", "synthesis.refused", f"synthesis_job:{job.id}", reason=reason
    )
    _block_siblings(db, job, f"refused: {reason}")
    db.flush()
    return job


def progress(db: Session, node: Node, job_id: int, body: SynthesisProgress) -> SynthesisJob:
    job = _own_job(db, node, job_id, ("training",))
    job.progress_stage, job.progress_message = body.stage, body.message
    job.epoch, job.epochs, job.loss = body.epoch, body.epochs, body.loss
    db.flush()
    return job


def candidate(db: Session, node: Node, job_id: int, body: SynthesisCandidate) -> SynthesisJob:
    """The node's candidate and its gates: all passed, it awaits the stewards; else gated.

    Pooled: the candidate's and its measurements' hashes must be those every other node
    reported (the first report sets them); different ones fail the whole request
    (`candidates_disagree`). A gated node's siblings fail (`pooled_blocked`)."""
    job = _own_job(db, node, job_id, ("training",))
    if _pooled(job) and not _same_candidate(db, job, body):
        db.flush()
        return job
    job.gates = [g.model_dump(mode="json") for g in body.gates]
    job.approvals_required = body.approvals_required
    failed = [g.name for g in body.gates if not g.passed]
    if failed:
        job.status, job.error_code = "gated", "release_gate_failed"
        job.error_message = f"release gate(s) failed: {', '.join(failed)}"
        audit.record(
            db, f"node:{node.name}", "synthesis.gated", f"synthesis_job:{job.id}", failed=failed
        )
        _block_siblings(db, job, f"gated the candidate: {job.error_message}")
    else:
        job.status = "awaiting_review"
        audit.record(
            db,
            f"node:{node.name}",
            "synthesis.awaiting_review",
            f"synthesis_job:{job.id}",
            approvals_required=body.approvals_required,
        )
    db.flush()
    return job


def _same_candidate(db: Session, job: SynthesisJob, body: SynthesisCandidate) -> bool:
    """Whether a pooled job's candidate is the request's (the first report sets it); if not,
    every open job of the request fails (`candidates_disagree`), this one included."""
    if body.candidate_sha256 is None or body.measurement_sha256 is None:
        raise InvalidRequest(
            f"synthesis job {job.id} is pooled: its candidate gives candidate_sha256 and "
            "measurement_sha256",
            {"job_id": job.id},
        )
    record = job.request
    if record.candidate_sha256 is None:
        record.candidate_sha256 = body.candidate_sha256
        record.measurement_sha256 = body.measurement_sha256
        return True
    if (record.candidate_sha256, record.measurement_sha256) == (
        body.candidate_sha256,
        body.measurement_sha256,
    ):
        return True
    message = (
        f"node {job.node.name} reported candidate {body.candidate_sha256[:12]}… from "
        f"measurements {body.measurement_sha256[:12]}…; the request's are "
        f"{(record.candidate_sha256 or '')[:12]}… from {(record.measurement_sha256 or '')[:12]}…"
    )
    for open_job in record.jobs:
        if open_job.status in TERMINAL:
            continue
        open_job.status, open_job.error_code = "failed", "candidates_disagree"
        open_job.error_message, open_job.card, open_job.report = message, None, None
        audit.record(
            db,
            "system",
            "synthesis.failed",
            f"synthesis_job:{open_job.id}",
            code="candidates_disagree",
            message=message,
        )
    return False


def reject(db: Session, node: Node, job_id: int, body: SynthesisRejection) -> SynthesisJob:
    job = _own_job(db, node, job_id, ("awaiting_review",))
    if not any(d.decision == "reject" for d in body.decisions):
        raise InvalidRequest("a rejection names at least one steward who rejected")
    _verified(node, job, body.decisions, None)
    job.status, job.error_code = "rejected", "steward_rejected"
    job.error_message = "rejected by " + ", ".join(
        d.steward for d in body.decisions if d.decision == "reject"
    )
    job.decisions = [d.model_dump(mode="json") for d in body.decisions]
    audit.record(
        db,
        f"node:{node.name}",
        "synthesis.rejected",
        f"synthesis_job:{job.id}",
        stewards=[d.steward for d in body.decisions if d.decision == "reject"],
    )
    _block_siblings(db, job, f"was {job.error_message}")
    db.flush()
    return job


def fail(db: Session, node: Node, job_id: int, body: TaskFailure) -> SynthesisJob:
    job = _own_job(
        db, node, job_id, ("pending", "offered", "training", "awaiting_review", "approved")
    )
    job.status, job.error_code, job.error_message = "failed", body.code, body.message
    job.card, job.report = None, None
    audit.record(
        db,
        f"node:{node.name}",
        "synthesis.failed",
        f"synthesis_job:{job.id}",
        code=body.code,
        message=body.message,
    )
    _block_siblings(db, job, f"failed ({body.code}): {body.message}")
    db.flush()
    return job


def publish(
    db: Session,
    node: Node,
    job_id: int,
    card: ReleaseCard,
    data: bytes,
    report: bytes,
) -> Release:
    """Publish an approved candidate: its Parquet bytes must hash to the card's `sha256` and
    hold the card's rows and columns, with at least as many approvals as the job requires."""
    job = _own_job(db, node, job_id, ("awaiting_review",))
    if _pooled(job):
        raise InvalidRequest(f"synthesis job {job_id} is pooled", {"job_id": job_id})
    spec = SynthesisSpec.model_validate(job.request.spec)
    if hashlib.sha256(data).hexdigest() != card.sha256:
        raise InvalidRequest("the data does not hash to the card's sha256", {"job_id": job_id})
    rows = _check_shape(data, card)
    _check_card(card, spec, report)
    _approved(node, job, card, report)
    csv = parquet_to_csv(data)
    release = Release(
        job_id=job.id,
        request_id=job.request_id,
        study_id=job.request.study_id,
        node_id=node.id,
        dataset=job.request.dataset,
        card=card.model_dump(mode="json"),
        sha256=card.sha256,
        csv_sha256=hashlib.sha256(csv).hexdigest(),
        parquet_bytes=len(data),
        report_sha256=hashlib.sha256(report).hexdigest(),
        rows=rows,
    )
    db.add(release)
    db.flush()
    db.add(ReleaseFile(release_id=release.id, kind="data", content=data))
    db.add(ReleaseFile(release_id=release.id, kind="report", content=report))
    job.status = "released"
    job.decisions = [a.model_dump(mode="json") for a in card.approvals]
    audit.record(
        db,
        f"node:{node.name}",
        "release.published",
        f"release:{release.id}",
        job=job.id,
        study_id=release.study_id,
        dataset=release.dataset,
        generator=card.generator,
        epsilon=card.epsilon,
        rows=rows,
        sha256=card.sha256,
        approvals=[a.steward for a in card.approvals],
        keys=[fingerprint(a.key) for a in card.approvals],
    )
    db.flush()
    return release


def _check_shape(data: bytes, card: ReleaseCard) -> int:
    """The Parquet's row count, once it holds the card's rows and columns."""
    rows, columns = _parquet_shape(data)
    if rows != card.rows or columns != card.columns:
        raise InvalidRequest(
            f"the data holds {rows} rows and columns {columns}; the card says {card.rows} and "
            f"{card.columns}",
        )
    return rows


def _check_card(card: ReleaseCard, spec: SynthesisSpec, report: bytes) -> None:
    """The card is for the request (generator, DP, rows) and the report is HTML."""
    if card.generator != spec.generator:
        raise InvalidRequest(
            f"the card names generator {card.generator!r}; the request was for {spec.generator!r}"
        )
    if (card.epsilon is not None) != spec.differentially_private:
        raise InvalidRequest(
            "the card's epsilon is given exactly for a differentially private generator"
        )
    if card.rows != spec.rows:
        raise InvalidRequest(f"the request asked for {spec.rows} rows, the card has {card.rows}")
    if not report.lstrip().lower().startswith(b"<!doctype html"):
        raise InvalidRequest("the report is not an HTML document")


def _approved(
    node: Node, job: SynthesisJob, card: ReleaseCard, report: bytes
) -> list[StewardDecision]:
    """The card's approvals, one per key, once every one verifies against the keys the node
    published over this card's digest, its data hash (`card.sha256`) and this report's hash,
    and they are as many as the job and the node's policy require."""
    hashes = {
        "data_sha256": card.sha256,
        "card_sha256": card.digest(),
        "report_sha256": hashlib.sha256(report).hexdigest(),
    }
    signers = _verified(node, job, card.approvals, hashes)
    needed = max(job.approvals_required or 1, _published_stewards(node)[1])
    if len(signers) < needed:
        raise InvalidRequest(
            f"{len(signers)} distinct steward key(s) approved; this node's policy requires "
            f"{needed} (one key counts once)",
            {"approvals": len(signers), "required": needed},
        )
    return signers


# ---- pooled releases --------------------------------------------------------------------


def upload(
    db: Session,
    node: Node,
    job_id: int,
    card: ReleaseCard,
    data: bytes | None,
    report: bytes,
) -> Release | PooledApproval:
    """A node's upload of its approved candidate: a local job's publishes its release
    (`publish`); a pooled job's is its approval (`approve_pooled`), and with the data, once
    every node approved, publishes the request's one release (`publish_pooled`)."""
    if not _pooled(_node_job(db, node, job_id)):
        if data is None:
            raise InvalidRequest("the synthetic data (the file `data`) is missing")
        return publish(db, node, job_id, card, data, report)
    if data is None:
        return approve_pooled(db, node, job_id, card, report)
    return publish_pooled(db, node, job_id, card, data, report)


def approve_pooled(
    db: Session, node: Node, job_id: int, card: ReleaseCard, report: bytes
) -> PooledApproval:
    """Record a node's approval of a pooled candidate: its card (the request's candidate and
    measurements, the parties in order, the spec's generator, epsilon and rows, its own
    metrics and gates) with its stewards' signed approvals, verified as `publish` verifies
    them, and its report. The job is `approved`; the answer names the nodes still waited for.
    Posting the same approval again changes nothing."""
    job = _own_job(db, node, job_id, ("awaiting_review", "approved"))
    _approve(db, node, job, card, report)
    db.flush()
    return _approval_answer(job)


def _approve(db: Session, node: Node, job: SynthesisJob, card: ReleaseCard, report: bytes) -> None:
    record = job.request
    spec = SynthesisSpec.model_validate(record.spec)
    parties = [j.node.name for j in sorted(record.jobs, key=lambda j: j.party_id or 0)]
    _check_card(card, spec, report)
    expected = {
        "scope": "pooled",
        "sha256": record.candidate_sha256,
        "measurement_sha256": record.measurement_sha256,
        "parties": parties,
    }
    for field, value in expected.items():
        if getattr(card, field) != value:
            raise InvalidRequest(
                f"the card's {field} is {getattr(card, field)!r}; the pooled request's is "
                f"{value!r}",
                {"job_id": job.id, "field": field},
            )
    # the epsilon the measurement spent (converted back from its recorded rho): at most the
    # epsilon asked for, never more
    asked = float(spec.epsilon or 0.0)
    if card.epsilon is None or not 0 < card.epsilon <= asked * (1 + 1e-9):
        raise InvalidRequest(
            f"the card's epsilon is {card.epsilon!r}; the pooled request asked for {asked:g} "
            "(a release may spend at most that)",
            {"job_id": job.id, "field": "epsilon"},
        )
    for other in record.jobs:
        if other.id != job.id and other.card is not None:
            theirs = {k: other.card.get(k) for k in SHARED}
            ours = {k: v for k, v in card.model_dump(mode="json").items() if k in SHARED}
            differ = [k for k in SHARED if theirs[k] != ours.get(k)]
            if differ:
                raise InvalidRequest(
                    f"the card's {', '.join(differ)} differ from node {other.node.name}'s card "
                    "of the same pooled candidate",
                    {"job_id": job.id, "fields": differ, "node": other.node.name},
                )
    signers = _approved(node, job, card, report)
    first = job.status == "awaiting_review"
    job.status = "approved"
    job.card = card.model_dump(mode="json")
    job.report, job.report_sha256 = report, hashlib.sha256(report).hexdigest()
    job.decisions = [a.model_dump(mode="json") for a in card.approvals]
    if first:
        audit.record(
            db,
            f"node:{node.name}",
            "synthesis.approved",
            f"synthesis_job:{job.id}",
            approvals=[a.steward for a in signers],
            keys=[fingerprint(a.key) for a in signers],
            card_sha256=card.digest(),
            report_sha256=job.report_sha256,
        )


def _approval_answer(job: SynthesisJob) -> PooledApproval:
    jobs = sorted(job.request.jobs, key=lambda j: j.party_id or 0)
    waiting = [j.node.name for j in jobs if j.status != "approved"]
    return PooledApproval(status=job.status, waiting_for=waiting, data_wanted=not waiting)


def _overall_verdict(nodes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The release's verdict: every hospital's, the worst winning (`synth.verdict.combine`),
    each reason naming its hospital."""
    from synth.verdict import combine

    judged = {n["node"]: n["verdict"] for n in nodes if n.get("verdict") is not None}
    return combine(judged) if judged else None


def publish_pooled(
    db: Session, node: Node, job_id: int, card: ReleaseCard, data: bytes, report: bytes
) -> Release:
    """Publish a pooled request's one release, once every node's stewards approved it: this
    node's upload counts as its approval (`approve_pooled`'s checks), the data must hash to the
    request's candidate and hold its rows and columns. The release's card is the candidate's
    shared part and every node's own part (`nodes`, in party order: its metrics, gates,
    report's and card's hashes and approvals); every node's report is kept. Nothing is stored
    while a node is still waited for (409)."""
    job = _own_job(db, node, job_id, ("awaiting_review", "approved"))
    _approve(db, node, job, card, report)
    record = job.request
    jobs = sorted(record.jobs, key=lambda j: j.party_id or 0)
    waiting = [j.node.name for j in jobs if j.status != "approved"]
    if waiting:
        raise Conflict(
            f"pooled synthesis {record.id} waits for the approval of {', '.join(waiting)}: "
            "the data is taken once every node approved",
            {"job_id": job_id, "status": job.status, "waiting_for": waiting},
        )
    if hashlib.sha256(data).hexdigest() != record.candidate_sha256:
        raise InvalidRequest(
            "the data does not hash to the pooled candidate's sha256", {"job_id": job_id}
        )
    rows = _check_shape(data, card)
    cards = [ReleaseCard.model_validate(j.card) for j in jobs]
    first = cards[0]
    shared = first.model_dump(mode="json", include=set(SHARED) | {"device", "fit_seconds"})
    nodes: list[dict[str, Any]] = [
        {
            "node": j.node.name,
            "verdict": c.verdict.model_dump(mode="json") if c.verdict is not None else None,
            "metrics": c.metrics,
            "gates": [g.model_dump(mode="json") for g in c.gates],
            "report_sha256": j.report_sha256,
            "card_sha256": ReleaseContent.model_validate(
                c.model_dump(exclude={"approvals"})
            ).digest(),
            "approvals": [a.model_dump(mode="json") for a in c.approvals],
        }
        for j, c in zip(jobs, cards, strict=True)
    ]
    csv = parquet_to_csv(data)
    release = Release(
        job_id=jobs[0].id,
        request_id=record.id,
        study_id=record.study_id,
        node_id=jobs[0].node_id,
        dataset=record.dataset,
        card={"verdict": _overall_verdict(nodes), **shared, "nodes": nodes},
        sha256=first.sha256,
        csv_sha256=hashlib.sha256(csv).hexdigest(),
        parquet_bytes=len(data),
        report_sha256=jobs[0].report_sha256,
        rows=rows,
        scope="pooled",
    )
    db.add(release)
    db.flush()
    db.add(ReleaseFile(release_id=release.id, kind="data", content=data))
    for j in jobs:
        assert j.report is not None  # kept from its approval
        db.add(ReleaseFile(release_id=release.id, kind=f"report:{j.node.name}", content=j.report))
        j.status, j.report = "released", None
    audit.record(
        db,
        f"node:{node.name}",
        "release.published",
        f"release:{release.id}",
        request=record.id,
        jobs=[j.id for j in jobs],
        study_id=release.study_id,
        dataset=release.dataset,
        scope="pooled",
        generator=first.generator,
        epsilon=first.epsilon,
        rows=rows,
        sha256=first.sha256,
        measurement_sha256=first.measurement_sha256,
        approvals={n["node"]: [a["steward"] for a in n["approvals"]] for n in nodes},
        keys={n["node"]: [fingerprint(a["key"]) for a in n["approvals"]] for n in nodes},
    )
    db.flush()
    return release


def _published_stewards(node: Node) -> tuple[dict[str, str], int]:
    """The stewards' public keys the node published at its last hello, and its
    approvals_required; none published: nothing it sends is signed by a known key."""
    policy = published_policy(node).synthesis
    if policy is None or not policy.stewards:
        raise Conflict(
            f"node {node.name} published no steward keys (its policy's "
            "[policy.synthesis.stewards]): no decision of it can be verified",
            {"node": node.name},
        )
    return dict(policy.stewards), policy.approvals_required


def _verified(
    node: Node,
    job: SynthesisJob,
    decisions: list[StewardDecision],
    hashes: dict[str, str] | None,
) -> list[StewardDecision]:
    """The decisions, one per key, after checking every one against the keys the node
    published (`tessera.stewards.decision_refusal`, the rule the node applies too); 422 naming
    the first that does not verify."""
    stewards, _ = _published_stewards(node)
    for decision in decisions:
        refusal = decision_refusal(
            decision, node=node.name, job_id=job.id, stewards=stewards, hashes=hashes
        )
        if refusal is not None:
            raise InvalidRequest(
                f"a steward decision does not verify: {refusal}",
                {"job_id": job.id, "steward": decision.steward},
            )
    return distinct_keys(decisions)


def _parquet_shape(data: bytes) -> tuple[int, list[str]]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(io.BytesIO(data)).metadata
    except Exception:  # pyarrow raises several kinds for a file that is not Parquet
        raise InvalidRequest("the data is not a Parquet file") from None
    return int(meta.num_rows), [meta.schema.column(i).name for i in range(meta.num_columns)]


def parquet_to_csv(data: bytes) -> bytes:
    """The CSV every download of a release's data as CSV serves (deterministic)."""
    import pandas as pd

    frame = pd.read_parquet(io.BytesIO(data))
    return frame.to_csv(index=False).encode()


# ---- releases -----------------------------------------------------------------------------


def visible_release(db: Session, release_id: int, user: User) -> Release:
    release = db.get(Release, release_id)
    if release is None or not _may_read(db, release.study_id, user):
        raise NotFound(f"no release {release_id}", {"release_id": release_id})
    return release


def list_releases(
    db: Session,
    study: Study,
    page: PageRequest,
    dataset: str | None = None,
    node: str | None = None,
) -> tuple[list[Release], str | None]:
    """A page of the study's releases (of one dataset and node, if given: a pooled release is
    every participating node's)."""
    stmt = select(Release).where(Release.study_id == study.id)
    if dataset is not None:
        stmt = stmt.where(Release.dataset == dataset)
    if node is not None:
        took_part = (
            select(SynthesisJob.id)
            .join(Node, Node.id == SynthesisJob.node_id)
            .where(SynthesisJob.request_id == Release.request_id, Node.name == node)
            .exists()
        )
        own = select(Node.id).where(Node.id == Release.node_id, Node.name == node).exists()
        stmt = stmt.where(or_(own, and_(Release.scope == "pooled", took_part)))
    return page.page(db.scalars(page.apply(stmt, Release.id)).all(), lambda r: r.id)


def signers(card: dict[str, Any], node: str | None = None) -> list[dict[str, Any]]:
    """Who signed a release: each approving steward's name, key fingerprint and time, and the
    node whose steward it is (a pooled release's card lists every node's approvals)."""
    if card.get("scope") == "pooled":
        return [s for part in card.get("nodes", []) for s in signers(part, part["node"])]
    out = []
    for a in card.get("approvals", []):
        try:
            print_ = fingerprint(a["key"])
        except (KeyError, ValueError):
            print_ = None  # a release published before signed approvals
        out.append({"steward": a["steward"], "fingerprint": print_, "at": a["at"], "node": node})
    return out


def release_parties(release: Release) -> list[str]:
    """The nodes whose rows the release was made from: the one node, or a pooled release's
    parties in party order."""
    if release.scope == "pooled":
        return list(release.card.get("parties") or [])
    return [release.node.name]


def release_view(release: Release) -> dict[str, Any]:
    parties = release_parties(release)
    return {
        "id": release.id,
        "study_id": release.study_id,
        "request_id": release.request_id,
        "job_id": release.job_id,
        "node": release.node.name,
        "dataset": release.dataset,
        "rows": release.rows,
        "sha256": release.sha256,
        "csv_sha256": release.csv_sha256,
        "parquet_bytes": release.parquet_bytes,
        "report_sha256": release.report_sha256,
        "scope": release.scope,
        "parties": parties,
        "card": release.card,
        "signed_by": signers(release.card, release.node.name),
        "created_at": release.created_at,
        "links": {
            "parquet": f"/api/v1/releases/{release.id}/data?format=parquet",
            "csv": f"/api/v1/releases/{release.id}/data?format=csv",
            "report": f"/api/v1/releases/{release.id}/report",
        },
    }


def release_file(db: Session, release: Release, kind: str) -> bytes:
    stored = db.get(ReleaseFile, (release.id, kind))
    if stored is None:  # the release row and its files are written in one transaction
        raise NotFound(f"release {release.id} has no {kind}")
    return stored.content


def report_kind(release: Release, node: str | None) -> str:
    """The stored file of the report of `node` (None: the first node's); 404 for a node that
    made no part of the release."""
    parties = release_parties(release)
    if node is not None and node not in parties:
        raise NotFound(
            f"release {release.id} has no report of node {node!r} (its nodes: "
            f"{', '.join(parties)})",
            {"release_id": release.id, "node": node},
        )
    if release.scope != "pooled":
        return "report"
    return f"report:{node or parties[0]}"


def download(
    db: Session, release: Release, user: User, fmt: str, node: str | None = None
) -> tuple[bytes, str, str]:
    """(content, media type, file name) of a release's data or report (`node`'s, for a pooled
    release: default the first node's); audited."""
    if fmt not in ("csv", "parquet", "report"):
        raise InvalidRequest(f"format must be csv or parquet, not {fmt!r}")
    stem = f"release-{release.id}-{release.dataset}"
    if fmt == "report":
        kind = report_kind(release, node)
        stem += f"-{kind.removeprefix('report:')}" if kind != "report" else ""
        content, media, name = release_file(db, release, kind), "text/html", f"{stem}.html"
    else:
        content = release_file(db, release, "data")
        media, name = PARQUET, f"{stem}.parquet"
        if fmt == "csv":
            content, media, name = parquet_to_csv(content), "text/csv", f"{stem}.csv"
    audit.record(
        db,
        f"user:{user.username}",
        "release.downloaded",
        f"release:{release.id}",
        format=fmt,
        **({"node": node} if node is not None else {}),
    )
    db.flush()
    return content, media, name


# ---- deadlines ----------------------------------------------------------------------------


def overdue_jobs(db: Session, now: datetime | None = None) -> list[int]:
    """Ids of the jobs still open past their deadline at `now` (default: the session's clock)."""
    now = now or clock.now(db)
    return list(
        db.scalars(
            select(SynthesisJob.id)
            .where(SynthesisJob.status.in_(BEFORE_DEADLINE), SynthesisJob.deadline < now)
            .order_by(SynthesisJob.id)
        )
    )


def expire(db: Session, job_id: int, now: datetime | None = None) -> SynthesisJob | None:
    """Fail one job if it is still open past its deadline (a conditional update: of several
    sweepers exactly one wins). `now` defaults to the session's clock."""
    now = now or clock.now(db)
    lock_job(db, job_id)  # its request first, as every change to a job
    claimed = db.execute(
        update(SynthesisJob)
        .where(
            SynthesisJob.id == job_id,
            SynthesisJob.status.in_(BEFORE_DEADLINE),
            SynthesisJob.deadline < now,
        )
        .values(status="failed", error_code="timeout", updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return None
    job = lock_job(db, job_id)
    seconds = (job.deadline - job.created_at).total_seconds()
    job.error_message = f"node {job.node.name} did not finish training within {seconds:g} s"
    audit.record(
        db,
        "system",
        "synthesis.failed",
        f"synthesis_job:{job.id}",
        code="timeout",
        message=job.error_message,
    )
    _block_siblings(db, job, f"did not reach review within {seconds:g} s")
    db.flush()
    return job
