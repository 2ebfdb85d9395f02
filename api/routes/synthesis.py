"""Synthesis requests and releases (researchers), and the synthesis jobs node agents run."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile, status
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import (
    CurrentNode,
    CurrentUser,
    IdPath,
    NotifierDep,
    PageDep,
    SessionDep,
    SettingsDep,
    WaitParam,
    label_query,
)
from api.models import Node, SynthesisJob
from api.notify import Notifier, long_poll
from api.openapi import errors
from api.routes.studies import IdempotencyKey
from api.services import idempotency, studies, synthesis
from tessera.errors import InvalidRequest, TooLarge
from tessera.rest import (
    Ack,
    ReleaseOut,
    ReleasePage,
    SynthesisRequestOut,
    SynthesisRequestPage,
)
from tessera.schemas import (
    NAME_PATTERN,
    PooledApproval,
    ReleaseCard,
    SynthesisCandidate,
    SynthesisJobOut,
    SynthesisProgress,
    SynthesisRejection,
    SynthesisRequestStatus,
    SynthesisSpec,
    TaskAccept,
    TaskFailure,
    TaskRefusal,
    TaskStart,
)

router = APIRouter()
READ = errors(401, 403, 404, 422)  # a researcher reading one resource
JOB = errors(401, 403, 404, 409, 422)  # a node reporting on one of its jobs


# ---- researchers ------------------------------------------------------------------------


@router.post(
    "/studies/{study_id}/synthesis",
    status_code=status.HTTP_201_CREATED,
    tags=["synthesis"],
    response_model=SynthesisRequestOut,
    responses=errors(401, 403, 404, 409, 422, 429),
)
def request_synthesis(
    study_id: IdPath,
    body: SynthesisSpec,
    user: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    notifier: NotifierDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Ask every node of the study that holds the dataset to train a generator on its own rows,
    evaluate it against held-out rows and, once its stewards approve, release synthetic data.
    Nodes whose published policy refuses the request are listed in `skipped`."""
    study = studies.visible_study(db, study_id, user)
    nodes: list[int] = []

    def work() -> idempotency.Answer:
        record = synthesis.request(db, study, user, body, settings)
        nodes.extend(job.node_id for job in record.jobs)
        view = SynthesisRequestOut.model_validate(synthesis.request_view(db, record))
        return idempotency.Answer(status.HTTP_201_CREATED, view.model_dump(mode="json"))

    spec = body.model_dump(mode="json")
    operation = f"POST /studies/{study_id}/synthesis"
    answer = idempotency.once(db, user, idempotency_key, operation, spec, work)
    db.commit()
    notifier.notify(*(f"jobs:{n}" for n in nodes))  # not `node:`: that wakes the task polls
    return idempotency.respond(answer)


@router.get(
    "/studies/{study_id}/synthesis",
    tags=["synthesis"],
    response_model=SynthesisRequestPage,
    responses=READ,
)
def list_synthesis_requests(
    study_id: IdPath,
    user: CurrentUser,
    db: SessionDep,
    page: PageDep,
    status: Annotated[
        SynthesisRequestStatus | None,
        Query(description="done: every job ended; running: some job has not."),
    ] = None,
) -> dict[str, Any]:
    """The study's synthesis requests, oldest first, a page at a time."""
    study = studies.visible_study(db, study_id, user)
    found, cursor = synthesis.list_requests(db, study, page, status)
    return {"items": [synthesis.request_view(db, r) for r in found], "next_cursor": cursor}


@router.get(
    "/synthesis/{request_id}",
    tags=["synthesis"],
    response_model=SynthesisRequestOut,
    responses=READ,
)
async def get_synthesis_request(
    request: Request, request_id: IdPath, user: CurrentUser, wait: float = WaitParam
) -> dict[str, Any]:
    """A request and each node's job: progress, gates, decisions, release. With `wait`, a
    long-poll that answers as soon as every job is at rest (ended, or awaiting its
    stewards)."""
    database = request.app.state.db
    last: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        with database.session() as db:
            record = synthesis.visible_request(db, request_id, user)
            last.update(synthesis.request_view(db, record))
        return dict(last) if last["at_rest"] else None

    return await long_poll(request, wait, f"synthesis:{request_id}", check) or last


@router.get(
    "/studies/{study_id}/releases", tags=["releases"], response_model=ReleasePage, responses=READ
)
def list_releases(
    study_id: IdPath,
    user: CurrentUser,
    db: SessionDep,
    page: PageDep,
    dataset: Annotated[
        str | None, Query(description="Only this dataset's.", pattern=NAME_PATTERN)
    ] = None,
    node: Annotated[str | None, label_query("Only this node's.")] = None,
) -> dict[str, Any]:
    """The study's published synthetic datasets, each with its release card."""
    study = studies.visible_study(db, study_id, user)
    found, cursor = synthesis.list_releases(db, study, page, dataset, node)
    return {"items": [synthesis.release_view(r) for r in found], "next_cursor": cursor}


@router.get("/releases/{release_id}", tags=["releases"], response_model=ReleaseOut, responses=READ)
def get_release(release_id: IdPath, user: CurrentUser, db: SessionDep) -> dict[str, Any]:
    return synthesis.release_view(synthesis.visible_release(db, release_id, user))


@router.get(
    "/releases/{release_id}/data",
    tags=["releases"],
    response_class=Response,
    responses={
        200: {
            "description": "The data; its SHA-256 in the `X-SHA256` header.",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                synthesis.PARQUET: {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **READ,
    },
)
def download_release_data(
    release_id: IdPath,
    user: CurrentUser,
    db: SessionDep,
    format: str = Query("csv", pattern="^(csv|parquet)$", description="csv or parquet"),
) -> Response:
    """The synthetic data, as CSV or as the Parquet the node uploaded (`sha256` on the card)."""
    release = synthesis.visible_release(db, release_id, user)
    content, media, name = synthesis.download(db, release, user, format)
    digest = release.sha256 if format == "parquet" else release.csv_sha256
    db.commit()
    return _file(content, media, name, digest)


@router.get(
    "/releases/{release_id}/report",
    tags=["releases"],
    response_class=Response,
    responses={
        200: {
            "description": "The report; its SHA-256 in the `X-SHA256` header.",
            "content": {"text/html": {"schema": {"type": "string"}}},
        },
        **READ,
    },
)
def download_release_report(
    release_id: IdPath,
    user: CurrentUser,
    db: SessionDep,
    node: Annotated[
        str | None,
        label_query("A pooled release's: this node's report (default: the first node's)."),
    ] = None,
) -> Response:
    """The release's evaluation report (self-contained HTML); a pooled release has one per node."""
    release = synthesis.visible_release(db, release_id, user)
    content, media, name = synthesis.download(db, release, user, "report", node)
    db.commit()
    return _file(content, media, name, hashlib.sha256(content).hexdigest())


def _file(content: bytes, media: str, name: str, digest: str) -> Response:
    return Response(
        content,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{name}"', "X-SHA256": digest},
    )


# ---- node agents --------------------------------------------------------------------------


@router.get(
    "/nodes/me/synthesis-jobs",
    tags=["synthesis-jobs"],
    response_model=list[SynthesisJobOut],
    responses=errors(401, 403, 422),
)
async def poll_synthesis_jobs(
    request: Request, node: CurrentNode, wait: float = WaitParam
) -> list[SynthesisJobOut]:
    """This node's new synthesis jobs; with `wait`, a long-poll."""
    node_id = node.id

    def check() -> list[SynthesisJobOut] | None:
        with request.app.state.db.session() as db:
            jobs = synthesis.offer_jobs(db, db.get(Node, node_id))
        return jobs or None

    return await long_poll(request, wait, f"jobs:{node_id}", check) or []


@router.post(
    "/synthesis-jobs/{job_id}/accept", tags=["synthesis-jobs"], response_model=Ack, responses=JOB
)
def accept_synthesis_job(
    job_id: IdPath,
    node: CurrentNode,
    db: SessionDep,
    notifier: NotifierDep,
    body: TaskAccept | None = None,
) -> Any:
    """Take the job. A pooled job's body is required: where the node's MPC party listens and
    this run's certificate (as a query task's acceptance); then wait for the go (`/start`).
    The same acceptance again is answered as the first; another one is a 409."""

    def work() -> SynthesisJob:
        return synthesis.accept(db, node, job_id, body)

    return _job_step(db, notifier, node, job_id, "accept", body, work, {"status": "training"})


@router.get(
    "/synthesis-jobs/{job_id}/start",
    tags=["synthesis-jobs"],
    response_model=TaskStart,
    responses=JOB,
)
async def await_synthesis_job_start(
    request: Request, job_id: IdPath, node: CurrentNode, wait: float = WaitParam
) -> TaskStart:
    """A pooled job's go: `start` false (`pending`) until every node of the request accepted,
    then every party's address in party order; `failed` once the request failed. With `wait`,
    a long-poll."""
    database, node_id = request.app.state.db, node.id
    with database.session() as db:
        me = db.get(Node, node_id)
        assert me is not None
        first = synthesis.start_info(db, me, job_id)
        request_id = synthesis.request_of(db, job_id)
    if first.start or first.status == "failed":
        return first
    last = first

    def check() -> TaskStart | None:
        nonlocal last
        with database.session() as db:
            me = db.get(Node, node_id)
            assert me is not None
            last = synthesis.start_info(db, me, job_id)
        return last if last.start or last.status == "failed" else None

    return await long_poll(request, wait, f"synthesis:{request_id}", check) or last


@router.post(
    "/synthesis-jobs/{job_id}/refuse", tags=["synthesis-jobs"], response_model=Ack, responses=JOB
)
def refuse_synthesis_job(
    job_id: IdPath, body: TaskRefusal, node: CurrentNode, db: SessionDep, notifier: NotifierDep
) -> Any:
    def work() -> SynthesisJob:
        return synthesis.refuse(db, node, job_id, body.reason)

    return _job_step(db, notifier, node, job_id, "refuse", body, work, {"status": "refused"})


@router.post(
    "/synthesis-jobs/{job_id}/progress", tags=["synthesis-jobs"], response_model=Ack, responses=JOB
)
def report_synthesis_progress(
    job_id: IdPath,
    body: SynthesisProgress,
    node: CurrentNode,
    db: SessionDep,
    notifier: NotifierDep,
) -> Any:
    """The same note as the last changes nothing; a newer one is recorded."""

    def work() -> SynthesisJob:
        return synthesis.progress(db, node, job_id, body)

    return _job_step(
        db, notifier, node, job_id, "progress", body, work, {"status": "ok"}, repeatable=True
    )


@router.post(
    "/synthesis-jobs/{job_id}/candidate", tags=["synthesis-jobs"], response_model=Ack, responses=JOB
)
def submit_synthesis_candidate(
    job_id: IdPath,
    body: SynthesisCandidate,
    node: CurrentNode,
    db: SessionDep,
    notifier: NotifierDep,
) -> Any:
    """The candidate's release gates: every one passed, it awaits the stewards; else gated.
    The same candidate again is answered as the first; another one is a 409."""

    def work() -> SynthesisJob:
        return synthesis.candidate(db, node, job_id, body)

    return _job_step(db, notifier, node, job_id, "candidate", body, work, None)


@router.post(
    "/synthesis-jobs/{job_id}/reject", tags=["synthesis-jobs"], response_model=Ack, responses=JOB
)
def reject_synthesis_job(
    job_id: IdPath,
    body: SynthesisRejection,
    node: CurrentNode,
    db: SessionDep,
    notifier: NotifierDep,
) -> Any:
    def work() -> SynthesisJob:
        return synthesis.reject(db, node, job_id, body)

    return _job_step(db, notifier, node, job_id, "reject", body, work, {"status": "rejected"})


@router.post(
    "/synthesis-jobs/{job_id}/fail", tags=["synthesis-jobs"], response_model=Ack, responses=JOB
)
def fail_synthesis_job(
    job_id: IdPath, body: TaskFailure, node: CurrentNode, db: SessionDep, notifier: NotifierDep
) -> Any:
    def work() -> SynthesisJob:
        return synthesis.fail(db, node, job_id, body)

    return _job_step(db, notifier, node, job_id, "fail", body, work, {"status": "failed"})


def _job_step(
    db: Session,
    notifier: Notifier,
    node: Node,
    job_id: IdPath,
    step: str,
    body: BaseModel | None,
    work: Callable[[], SynthesisJob],
    answer: dict[str, Any] | None,
    repeatable: bool = False,
) -> JSONResponse:
    """A node's step on its job, once (`idempotency.node_step`: a retry is answered the first
    answer, under the job's lock), committed, then whoever long-polls on its request woken.
    The answer is `answer`, or (None) the job's status after the step."""

    def run() -> idempotency.Answer:
        job = work()
        return idempotency.Answer(status.HTTP_200_OK, answer or {"status": job.status})

    done = idempotency.node_step(
        db,
        node,
        ("synthesis_job", job_id),
        step,
        None if body is None else body.model_dump(mode="json"),
        lambda: synthesis.lock_own_job(db, node, job_id),
        run,
        repeatable=repeatable,
    )
    request_id = synthesis.request_of(db, job_id)
    db.commit()
    notifier.notify(f"synthesis:{request_id}")
    return idempotency.respond(done)


@router.post(
    "/synthesis-jobs/{job_id}/release",
    tags=["synthesis-jobs"],
    response_model=ReleaseOut,
    responses={
        201: {"model": ReleaseOut, "description": "Pooled: the data published the release."},
        202: {
            "model": PooledApproval,
            "description": "Pooled, without data: the node's approval is recorded.",
        },
        **errors(401, 403, 404, 409, 413, 422),
    },
)
async def upload_release(
    request: Request,
    job_id: IdPath,
    node: CurrentNode,
    card: str = Form(..., description="The ReleaseCard, as JSON"),
    report: UploadFile = File(..., description="The evaluation report (HTML)"),
    data: UploadFile | None = File(
        None, description="The synthetic data (Parquet); a pooled job's approval has none"
    ),
) -> Any:
    """Upload an approved candidate: the card, the data (its hash must match the card's) and
    the report. Publishes the release (200).

    A pooled job's upload without `data` is its node's approval: 202 with `PooledApproval`
    (the nodes still waited for; `data_wanted` once every node approved). With `data`, once
    every node approved, it publishes the request's one release: 201 with the release; 409
    (nothing stored) while a node is waited for."""
    settings = request.app.state.settings
    try:
        parsed = ReleaseCard.model_validate_json(card)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "card"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidRequest(f"invalid release card: {where}: {message}") from None
    content = None if data is None else await _read(data, settings.release_max_bytes, "data")
    page = await _read(report, settings.release_max_bytes, "report")
    node_id = node.id

    def store() -> Any:
        with request.app.state.db.session() as db:
            me = db.get(Node, node_id)
            assert me is not None

            def publish() -> idempotency.Answer:
                done = synthesis.upload(db, me, job_id, parsed, content, page)
                if isinstance(done, PooledApproval):
                    return idempotency.Answer(
                        status.HTTP_202_ACCEPTED, done.model_dump(mode="json")
                    )
                view = ReleaseOut.model_validate(synthesis.release_view(done))
                code = status.HTTP_201_CREATED if done.scope == "pooled" else status.HTTP_200_OK
                return idempotency.Answer(code, view.model_dump(mode="json"))

            if content is None:  # an approval: the same again changes nothing, says what now
                answer = publish()
            else:
                fingerprint = {
                    "card": parsed.model_dump(mode="json"),
                    "data_sha256": hashlib.sha256(content).hexdigest(),
                    "report_sha256": hashlib.sha256(page).hexdigest(),
                }
                answer = idempotency.node_step(
                    db,
                    me,
                    ("synthesis_job", job_id),
                    "release",
                    fingerprint,
                    lambda: synthesis.lock_own_job(db, me, job_id),
                    publish,
                )
            request_id = synthesis.request_of(db, job_id)
            db.commit()
        request.app.state.notifier.notify(f"synthesis:{request_id}")
        return idempotency.respond(answer)

    return await run_in_threadpool(store)


async def _read(upload: UploadFile, limit: int, what: str) -> bytes:
    """An uploaded file's bytes; 413 beyond `limit` (read no further than that)."""
    chunks, size = [], 0
    while chunk := await upload.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise TooLarge(
                f"the {what} is larger than release_max_bytes ({limit} bytes)", {"limit": limit}
            )
        chunks.append(chunk)
    if not size:
        raise InvalidRequest(f"the {what} is empty")
    return b"".join(chunks)
