"""Studies, their datasets, and the queries statisticians submit in them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request, status
from pydantic import BaseModel, ConfigDict, Field

from api.deps import AdminUser, CurrentUser, NotifierDep, SessionDep, SettingsDep, WaitParam
from api.notify import long_poll
from api.services import budget, queries, studies
from tessera.errors import InvalidRequest
from tessera.schemas import Name

router = APIRouter()


class NewStudy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    organisation_ids: list[int] = []
    datasets: list[Name] = []
    members: list[int | str] = []


class MemberRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int | None = None
    username: str | None = None


class OrganisationRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    organisation_id: int


class DatasetRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name


@router.post("/studies", status_code=status.HTTP_201_CREATED, tags=["studies"])
def create_study(body: NewStudy, admin: AdminUser, db: SessionDep) -> dict[str, Any]:
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


@router.get("/studies", tags=["studies"])
def list_studies(user: CurrentUser, db: SessionDep) -> list[dict[str, Any]]:
    return [studies.study_view(db, s) for s in studies.list_studies(db, user)]


@router.get("/studies/{study_id}", tags=["studies"])
def get_study(study_id: int, user: CurrentUser, db: SessionDep) -> dict[str, Any]:
    return studies.study_view(db, studies.visible_study(db, study_id, user))


@router.post("/studies/{study_id}/members", tags=["studies"])
def add_member(study_id: int, body: MemberRef, admin: AdminUser, db: SessionDep) -> dict[str, Any]:
    study = studies.visible_study(db, study_id, admin)
    ref = body.user_id if body.user_id is not None else body.username
    if ref is None:
        raise InvalidRequest("give user_id or username", {"fields": ["user_id", "username"]})
    studies.add_member(db, study, ref, f"user:{admin.username}")
    db.commit()
    return studies.study_view(db, study)


@router.post("/studies/{study_id}/organisations", tags=["studies"])
def add_organisation(
    study_id: int, body: OrganisationRef, admin: AdminUser, db: SessionDep
) -> dict[str, Any]:
    study = studies.visible_study(db, study_id, admin)
    studies.add_organisation(db, study, body.organisation_id, f"user:{admin.username}")
    db.commit()
    return studies.study_view(db, study)


@router.post("/studies/{study_id}/datasets", tags=["studies"])
def add_dataset(
    study_id: int, body: DatasetRef, admin: AdminUser, db: SessionDep
) -> dict[str, Any]:
    study = studies.visible_study(db, study_id, admin)
    studies.add_dataset(db, study, body.name, f"user:{admin.username}")
    db.commit()
    return studies.study_view(db, study)


@router.get("/studies/{study_id}/datasets", tags=["studies"])
def study_datasets(study_id: int, user: CurrentUser, db: SessionDep) -> list[dict[str, Any]]:
    """Each dataset of the study: which nodes registered it, their declared schemas."""
    return studies.datasets_view(db, studies.visible_study(db, study_id, user))


@router.get("/studies/{study_id}/budget", tags=["studies"])
def study_budget(study_id: int, user: CurrentUser, db: SessionDep) -> dict[str, Any]:
    """Per dataset of the study, each node's differential-privacy budget: limit, spent and
    remaining epsilon and delta, as the node last reported; and the least remaining of all."""
    return budget.study_budget(db, studies.visible_study(db, study_id, user))


@router.post("/studies/{study_id}/queries", status_code=status.HTTP_201_CREATED, tags=["queries"])
def submit_query(
    study_id: int,
    user: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    notifier: NotifierDep,
    body: Any = Body(
        ...,
        examples=[
            {
                "statistic": "mean",
                "dataset": "paediatric_cohort",
                "column": "weight_kg",
                "where": [["age_months", ">=", 24]],
                "group_by": ["sex"],
                "min_count": 10,
            }
        ],
    ),
) -> dict[str, Any]:
    """Submit a query (the JSON of docs/queries.md); it runs as soon as every node accepts."""
    study = studies.visible_study(db, study_id, user)
    query = queries.submit(db, study, user, body, settings)
    view = queries.query_view(db, query)
    nodes = queries.node_ids(db, query.id)
    db.commit()
    notifier.notify(*(f"node:{n}" for n in nodes))
    return view


@router.post("/studies/{study_id}/queries/dry-run", tags=["queries"])
def dry_run_query(
    study_id: int,
    user: CurrentUser,
    db: SessionDep,
    body: Any = Body(..., examples=[{"statistic": "mean", "dataset": "cohort", "column": "x"}]),
) -> dict[str, Any]:
    """Check a query as submission would, and say what running it would reveal, which nodes
    would take part and the threshold they would apply; nothing is created. An invalid query
    gets the very error its submission would."""
    study = studies.visible_study(db, study_id, user)
    answer = queries.dry_run(db, study, user, body)
    db.commit()
    return answer


@router.get("/studies/{study_id}/queries", tags=["queries"])
def list_queries(study_id: int, user: CurrentUser, db: SessionDep) -> list[dict[str, Any]]:
    study = studies.visible_study(db, study_id, user)
    return [queries.query_view(db, q) for q in queries.list_queries(db, study)]


@router.get("/queries/{query_id}", tags=["queries"])
async def get_query(
    request: Request, query_id: int, user: CurrentUser, wait: float = WaitParam
) -> dict[str, Any]:
    """A query's status, per-node progress and, once succeeded, its result. With `wait`, a
    long-poll that answers as soon as the query ends."""
    database = request.app.state.db
    last: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        with database.session() as db:
            last.update(queries.query_view(db, queries.visible_query(db, query_id, user)))
        return dict(last) if last["status"] in queries.TERMINAL else None

    return await long_poll(request, wait, f"query:{query_id}", check) or last
