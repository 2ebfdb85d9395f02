"""Studies, their datasets, and the queries statisticians submit in them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, status
from fastapi import Query as QueryParam
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.deps import (
    AdminUser,
    CurrentUser,
    IdPath,
    NotifierDep,
    PageDep,
    SessionDep,
    SettingsDep,
    WaitParam,
    label_query,
)
from api.models import Query as QueryRecord
from api.notify import long_poll
from api.openapi import errors
from api.services import budget, idempotency, queries, studies
from tessera.errors import InvalidRequest
from tessera.limits import MAX_JSON_DEPTH, NUL_FREE
from tessera.rest import (
    DatasetRef,
    DryRun,
    MemberRef,
    NewStudy,
    OrganisationRef,
    QueryOut,
    QueryPage,
    StudyBudget,
    StudyDataset,
    StudyOut,
    StudyPage,
)
from tessera.schemas import QueryStatus

router = APIRouter()
STUDY = errors(401, 403, 404, 422)  # what a route on one study can answer
EXAMPLE = {
    "statistic": "mean",
    "dataset": "paediatric_cohort",
    "column": "weight_kg",
    "where": [["age_months", ">=", 24]],
    "group_by": ["sex"],
    "min_count": 10,
}
QUERY_BODY = {
    "requestBody": {
        "required": True,
        "description": "A query of the query language (docs/queries.md): `statistic` picks the "
        "statistic and its parameters.",
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/Query"},
                "example": EXAMPLE,
            }
        },
    }
}
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Send the same key with a retried POST: it answers what the first did and "
        "creates, or spends, nothing twice.",
        max_length=255,
        pattern=NUL_FREE,
    ),
]


async def query_body(request: Request) -> Any:
    """The raw JSON body of a query: the statistics registry validates it (`QueryInvalid` with
    every problem named), not FastAPI, so the spec documents it by the `Query` component."""
    try:
        return await request.json()
    except ValueError:
        raise InvalidRequest("the request body is not valid JSON") from None
    except RecursionError:
        raise InvalidRequest(
            f"the request body is nested too deeply (a query needs {MAX_JSON_DEPTH} levels at most)"
        ) from None


QueryBody = Annotated[Any, Depends(query_body)]


@router.post(
    "/studies",
    status_code=status.HTTP_201_CREATED,
    tags=["studies"],
    response_model=StudyOut,
    responses=errors(401, 403, 404, 409, 422),
)
def create_study(body: NewStudy, admin: AdminUser, db: SessionDep) -> dict[str, Any]:
    """Create a study (admin): its organisations, datasets and members."""
    study = studies.create_study(
        db,
        body.name,
        body.description,
        body.organisation_ids,
        body.datasets,
        body.members,
        f"user:{admin.username}",
    )
    db.commit()
    return studies.study_view(db, study)


@router.get("/studies", tags=["studies"], response_model=StudyPage, responses=errors(401, 403, 422))
def list_studies(user: CurrentUser, db: SessionDep, page: PageDep) -> dict[str, Any]:
    """The studies this user is a member of (an admin: every study), a page at a time."""
    found, cursor = studies.list_studies(db, user, page)
    return {"items": [studies.study_view(db, s) for s in found], "next_cursor": cursor}


@router.get("/studies/{study_id}", tags=["studies"], response_model=StudyOut, responses=STUDY)
def get_study(study_id: IdPath, user: CurrentUser, db: SessionDep) -> dict[str, Any]:
    return studies.study_view(db, studies.visible_study(db, study_id, user))


@router.post(
    "/studies/{study_id}/members", tags=["studies"], response_model=StudyOut, responses=STUDY
)
def add_study_member(
    study_id: IdPath, body: MemberRef, admin: AdminUser, db: SessionDep
) -> dict[str, Any]:
    """Add a member by user id or username (admin)."""
    study = studies.visible_study(db, study_id, admin)
    ref = body.user_id if body.user_id is not None else body.username
    if ref is None:
        raise InvalidRequest(
            "give user_id or username",
            {"errors": [{"loc": [f], "msg": "one of the two"} for f in ("user_id", "username")]},
        )
    studies.add_member(db, study, ref, f"user:{admin.username}")
    db.commit()
    return studies.study_view(db, study)


@router.post(
    "/studies/{study_id}/organisations",
    tags=["studies"],
    response_model=StudyOut,
    responses=STUDY,
)
def add_study_organisation(
    study_id: IdPath, body: OrganisationRef, admin: AdminUser, db: SessionDep
) -> dict[str, Any]:
    """Add an organisation, whose nodes then take part (admin)."""
    study = studies.visible_study(db, study_id, admin)
    studies.add_organisation(db, study, body.organisation_id, f"user:{admin.username}")
    db.commit()
    return studies.study_view(db, study)


@router.post(
    "/studies/{study_id}/datasets", tags=["studies"], response_model=StudyOut, responses=STUDY
)
def add_study_dataset(
    study_id: IdPath, body: DatasetRef, admin: AdminUser, db: SessionDep
) -> dict[str, Any]:
    """Add a dataset the study may query (admin)."""
    study = studies.visible_study(db, study_id, admin)
    studies.add_dataset(db, study, body.name, f"user:{admin.username}")
    db.commit()
    return studies.study_view(db, study)


@router.get(
    "/studies/{study_id}/datasets",
    tags=["datasets"],
    response_model=list[StudyDataset],
    response_model_exclude_none=True,  # each schema as its node registered it
    responses=STUDY,
)
def list_study_datasets(
    study_id: IdPath, user: CurrentUser, db: SessionDep
) -> list[dict[str, Any]]:
    """Each dataset of the study: which nodes registered it, their declared schemas."""
    return studies.datasets_view(db, studies.visible_study(db, study_id, user))


@router.get(
    "/studies/{study_id}/budget", tags=["studies"], response_model=StudyBudget, responses=STUDY
)
def get_study_budget(study_id: IdPath, user: CurrentUser, db: SessionDep) -> dict[str, Any]:
    """Per dataset of the study, each node's differential-privacy budget: limit, spent and
    remaining epsilon and delta, as the node last reported; and the least remaining of all."""
    return budget.study_budget(db, studies.visible_study(db, study_id, user))


@router.post(
    "/studies/{study_id}/queries",
    status_code=status.HTTP_201_CREATED,
    tags=["queries"],
    response_model=QueryOut,
    responses=errors(401, 403, 404, 409, 422, 429),
    openapi_extra=QUERY_BODY,
)
def submit_query(
    study_id: IdPath,
    user: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    notifier: NotifierDep,
    body: QueryBody,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Submit a query (the JSON of docs/queries.md); it runs as soon as every node accepts."""
    study = studies.visible_study(db, study_id, user)
    nodes: list[int] = []

    def work() -> idempotency.Answer:
        query = queries.submit(db, study, user, body, settings)
        nodes.extend(queries.node_ids(db, query.id))
        view = QueryOut.model_validate(queries.query_view(db, query))
        return idempotency.Answer(status.HTTP_201_CREATED, view.model_dump(mode="json"))

    answer = idempotency.once(
        db, user, idempotency_key, f"POST /studies/{study_id}/queries", body, work
    )
    db.commit()
    notifier.notify(*(f"node:{n}" for n in nodes))
    return idempotency.respond(answer)


@router.post(
    "/studies/{study_id}/queries/dry-run",
    tags=["queries"],
    response_model=DryRun,
    responses=errors(401, 403, 404, 409, 422),
    openapi_extra=QUERY_BODY,
)
def dry_run_query(
    study_id: IdPath, user: CurrentUser, db: SessionDep, settings: SettingsDep, body: QueryBody
) -> Any:
    """Check a query as submission would, and say what running it would reveal, which nodes
    would take part, the threshold they would apply, what it would cost (cells, secure
    comparisons) and the limits; nothing is created. An invalid query, or one beyond the
    per-query limits, gets the very error its submission would."""
    study = studies.visible_study(db, study_id, user)
    answer = queries.dry_run(db, study, user, body, settings)
    db.commit()
    return answer


@router.get(
    "/studies/{study_id}/queries", tags=["queries"], response_model=QueryPage, responses=STUDY
)
def list_queries(
    study_id: IdPath,
    user: CurrentUser,
    db: SessionDep,
    page: PageDep,
    status: Annotated[QueryStatus | None, QueryParam(description="Only this status.")] = None,
    statistic: Annotated[str | None, label_query("Only this statistic.")] = None,
) -> dict[str, Any]:
    """The study's queries, oldest first, a page at a time."""
    study = studies.visible_study(db, study_id, user)
    found, cursor = queries.list_queries(db, study, page, status, statistic)
    return {"items": [queries.query_view(db, q) for q in found], "next_cursor": cursor}


@router.get("/queries/{query_id}", tags=["queries"], response_model=QueryOut, responses=STUDY)
async def get_query(
    request: Request, query_id: IdPath, user: CurrentUser, wait: float = WaitParam
) -> dict[str, Any]:
    """A query's status, per-node progress and, once succeeded, its result. With `wait`, a
    long-poll that answers as soon as the query ends."""
    database = request.app.state.db

    def view() -> dict[str, Any]:
        with database.session() as db:
            return queries.query_view(db, queries.visible_query(db, query_id, user))

    first = await run_in_threadpool(view)
    if first["status"] in queries.TERMINAL or wait <= 0:
        return first

    def ended() -> dict[str, Any] | None:
        # while waiting, the status alone: the whole view, with every node's progress, on each
        # re-check and wake was 7 % of the coordinator's CPU under load
        with database.session() as db:
            status = db.scalar(select(QueryRecord.status).where(QueryRecord.id == query_id))
            if status not in queries.TERMINAL:
                return None
            return queries.query_view(db, queries.visible_query(db, query_id, user))

    answer = await long_poll(request, wait, f"query:{query_id}", ended)
    return answer if answer is not None else await run_in_threadpool(view)
