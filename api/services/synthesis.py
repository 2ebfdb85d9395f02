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

Every change to a job happens under its row lock (`lock_job`), as queries do. Times (created,
the deadline and the comparisons with it) come from the session's clock (`api.clock.now`).
"""

from __future__ import annotations

import hashlib
import io
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
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
from api.services.network import published_policy
from api.services.studies import is_member, registered_nodes
from api.settings import CoordinatorSettings
from tessera.errors import Conflict, InvalidRequest, NotFound, PolicyDenied
from tessera.schemas import (
    DatasetSchema,
    ReleaseCard,
    StewardDecision,
    SynthesisCandidate,
    SynthesisJobOut,
    SynthesisProgress,
    SynthesisRejection,
    SynthesisSpec,
    TaskFailure,
)
from tessera.stewards import decision_refusal, distinct_keys, fingerprint

TERMINAL = ("gated", "released", "rejected", "refused", "failed")
AT_REST = (*TERMINAL, "awaiting_review")  # nothing more happens without a steward
BEFORE_DEADLINE = ("pending", "offered", "training")
PARQUET = "application/vnd.apache.parquet"


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
    if not taking:
        raise PolicyDenied(
            "no node of the study may take this request: "
            + "; ".join(f"{s['node']}: {s['reason']}" for s in skipped),
            {"skipped": skipped},
        )
    now = clock.now(db)
    record = SynthesisRequest(
        study_id=study.id,
        requested_by=user.id,
        dataset=spec.dataset,
        generator=spec.generator,
        spec=spec.model_dump(mode="json"),
        skipped=skipped,
        created_at=now,
    )
    db.add(record)
    db.flush()
    deadline = now + timedelta(seconds=settings.synthesis_timeout_s)
    for node in taking:
        db.add(
            SynthesisJob(request_id=record.id, node_id=node.id, deadline=deadline, created_at=now)
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
        nodes=[n.name for n in taking],
        skipped=[s["node"] for s in skipped],
    )
    db.flush()
    return record


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
    views = [_job_view(job, name, releases.get(job.id)) for job, name in jobs]
    return {
        "id": record.id,
        "study_id": record.study_id,
        "requested_by": record.user.username,
        "dataset": record.dataset,
        "generator": record.generator,
        "spec": record.spec,
        "status": "done" if all(j["status"] in TERMINAL for j in views) else "running",
        "at_rest": all(j["status"] in AT_REST for j in views),
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
    """The job as last committed, locked until this transaction ends."""
    write_lock(db)
    return db.scalars(
        select(SynthesisJob)
        .where(SynthesisJob.id == job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


def _own_job(db: Session, node: Node, job_id: int, allowed: tuple[str, ...]) -> SynthesisJob:
    """A node's own job, locked, in one of the `allowed` states (another node's is 404; a job
    in another state is 409, saying which)."""
    found = db.get(SynthesisJob, job_id)
    if found is None or found.node_id != node.id:
        raise NotFound(f"no synthesis job {job_id}", {"job_id": job_id})
    job = lock_job(db, job_id)
    if job.status not in allowed:
        reason = f": {job.error_message}" if job.error_message else ""
        raise Conflict(
            f"synthesis job {job_id} is {job.status}{reason}",
            {"job_id": job_id, "status": job.status, "code": job.error_code},
        )
    return job


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
        out.append(
            SynthesisJobOut(
                id=job.id,
                request_id=record.id,
                study_id=record.study_id,
                requested_by=record.user.username,
                spec=SynthesisSpec.model_validate(record.spec),
                deadline=job.deadline,
            )
        )
    db.flush()
    return out


def accept(db: Session, node: Node, job_id: int) -> SynthesisJob:
    job = _own_job(db, node, job_id, ("pending", "offered"))
    if clock.now(db) > job.deadline:
        raise Conflict(f"synthesis job {job_id} is past its deadline", {"job_id": job_id})
    job.status = "training"
    audit.record(db, f"node:{node.name}", "synthesis.accepted", f"synthesis_job:{job.id}")
    db.flush()
    return job


def refuse(db: Session, node: Node, job_id: int, reason: str) -> SynthesisJob:
    job = _own_job(db, node, job_id, ("pending", "offered"))
    job.status, job.error_code, job.error_message = "refused", "node_refused", reason
    audit.record(
        db, f"node:{node.name}", "synthesis.refused", f"synthesis_job:{job.id}", reason=reason
    )
    db.flush()
    return job


def progress(db: Session, node: Node, job_id: int, body: SynthesisProgress) -> SynthesisJob:
    job = _own_job(db, node, job_id, ("training",))
    job.progress_stage, job.progress_message = body.stage, body.message
    job.epoch, job.epochs, job.loss = body.epoch, body.epochs, body.loss
    db.flush()
    return job


def candidate(db: Session, node: Node, job_id: int, body: SynthesisCandidate) -> SynthesisJob:
    """The node's candidate and its gates: all passed, it awaits the stewards; else gated."""
    job = _own_job(db, node, job_id, ("training",))
    job.gates = [g.model_dump(mode="json") for g in body.gates]
    job.approvals_required = body.approvals_required
    failed = [g.name for g in body.gates if not g.passed]
    if failed:
        job.status, job.error_code = "gated", "release_gate_failed"
        job.error_message = f"release gate(s) failed: {', '.join(failed)}"
        audit.record(
            db, f"node:{node.name}", "synthesis.gated", f"synthesis_job:{job.id}", failed=failed
        )
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
    db.flush()
    return job


def fail(db: Session, node: Node, job_id: int, body: TaskFailure) -> SynthesisJob:
    job = _own_job(db, node, job_id, ("pending", "offered", "training", "awaiting_review"))
    job.status, job.error_code, job.error_message = "failed", body.code, body.message
    audit.record(
        db,
        f"node:{node.name}",
        "synthesis.failed",
        f"synthesis_job:{job.id}",
        code=body.code,
        message=body.message,
    )
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
    spec = SynthesisSpec.model_validate(job.request.spec)
    if hashlib.sha256(data).hexdigest() != card.sha256:
        raise InvalidRequest("the data does not hash to the card's sha256", {"job_id": job_id})
    rows, columns = _parquet_shape(data)
    if rows != card.rows or columns != card.columns:
        raise InvalidRequest(
            f"the data holds {rows} rows and columns {columns}; the card says {card.rows} and "
            f"{card.columns}",
            {"job_id": job_id},
        )
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
    """A page of the study's releases (of one dataset and node, if given)."""
    stmt = select(Release).where(Release.study_id == study.id)
    if dataset is not None:
        stmt = stmt.where(Release.dataset == dataset)
    if node is not None:
        stmt = stmt.join(Node, Node.id == Release.node_id).where(Node.name == node)
    return page.page(db.scalars(page.apply(stmt, Release.id)).all(), lambda r: r.id)


def signers(card: dict[str, Any]) -> list[dict[str, Any]]:
    """Who signed a release: each approving steward's name, key fingerprint and time."""
    out = []
    for a in card.get("approvals", []):
        try:
            print_ = fingerprint(a["key"])
        except (KeyError, ValueError):
            print_ = None  # a release published before signed approvals
        out.append({"steward": a["steward"], "fingerprint": print_, "at": a["at"]})
    return out


def release_view(release: Release) -> dict[str, Any]:
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
        "card": release.card,
        "signed_by": signers(release.card),
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


def download(db: Session, release: Release, user: User, fmt: str) -> tuple[bytes, str, str]:
    """(content, media type, file name) of a release's data or report; audited."""
    if fmt not in ("csv", "parquet", "report"):
        raise InvalidRequest(f"format must be csv or parquet, not {fmt!r}")
    stem = f"release-{release.id}-{release.dataset}"
    if fmt == "report":
        content, media, name = release_file(db, release, "report"), "text/html", f"{stem}.html"
    else:
        content = release_file(db, release, "data")
        media, name = PARQUET, f"{stem}.parquet"
        if fmt == "csv":
            content, media, name = parquet_to_csv(content), "text/csv", f"{stem}.csv"
    audit.record(
        db, f"user:{user.username}", "release.downloaded", f"release:{release.id}", format=fmt
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
    db.flush()
    return job
