"""Studies: who may query (members), whose nodes take part (organisations), on what (datasets)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api import audit
from api.models import (
    Dataset,
    Node,
    Organisation,
    Study,
    StudyDataset,
    StudyMember,
    StudyOrganisation,
    User,
)
from api.pagination import PageRequest
from api.services.accounts import find_user
from tessera.errors import Conflict, NotFound


def create_study(
    db: Session,
    name: str,
    description: str,
    organisation_ids: list[int],
    datasets: list[str],
    members: list[int | str],
    actor: str,
) -> Study:
    if db.scalars(select(Study).where(Study.name == name)).first():
        raise Conflict(f"study {name!r} exists already", {"name": name})
    study = Study(name=name, description=description)
    db.add(study)
    db.flush()
    for org_id in organisation_ids:
        add_organisation(db, study, org_id, actor, record=False)
    for dataset in datasets:
        add_dataset(db, study, dataset, actor, record=False)
    for member in members:
        add_member(db, study, member, actor, record=False)
    audit.record(
        db,
        actor,
        "study.created",
        f"study:{name}",
        organisation_ids=organisation_ids,
        datasets=datasets,
        members=[str(m) for m in members],
    )
    return study


def visible_study(db: Session, study_id: int, user: User) -> Study:
    """The study if it exists and the user may see it; 404 otherwise (existence not revealed)."""
    study = db.get(Study, study_id)
    if study is None or not (user.role == "admin" or is_member(db, study.id, user.id)):
        raise NotFound(f"no study {study_id}", {"study_id": study_id})
    return study


def is_member(db: Session, study_id: int, user_id: int) -> bool:
    return db.get(StudyMember, (study_id, user_id)) is not None


def list_studies(db: Session, user: User, page: PageRequest) -> tuple[list[Study], str | None]:
    """A page of the studies the user may see (an admin: all) and the next page's cursor."""
    stmt = select(Study)
    if user.role != "admin":
        stmt = stmt.join(StudyMember, StudyMember.study_id == Study.id).where(
            StudyMember.user_id == user.id
        )
    return page.page(db.scalars(page.apply(stmt, Study.id)).all(), lambda s: s.id)


def add_member(db: Session, study: Study, ref: int | str, actor: str, record: bool = True) -> None:
    user = find_user(db, ref)
    if not is_member(db, study.id, user.id):
        db.add(StudyMember(study_id=study.id, user_id=user.id))
        if record:
            audit.record(db, actor, "study.member_added", f"study:{study.name}", user=user.username)


def add_organisation(
    db: Session, study: Study, org_id: int, actor: str, record: bool = True
) -> None:
    if db.get(Organisation, org_id) is None:
        raise NotFound(f"no organisation {org_id}", {"organisation_id": org_id})
    if db.get(StudyOrganisation, (study.id, org_id)) is None:
        db.add(StudyOrganisation(study_id=study.id, organisation_id=org_id))
        if record:
            audit.record(
                db, actor, "study.organisation_added", f"study:{study.name}", organisation_id=org_id
            )


def add_dataset(db: Session, study: Study, name: str, actor: str, record: bool = True) -> None:
    if db.get(StudyDataset, (study.id, name)) is None:
        db.add(StudyDataset(study_id=study.id, name=name))
        if record:
            audit.record(db, actor, "study.dataset_added", f"study:{study.name}", dataset=name)
    db.flush()


def study_view(db: Session, study: Study) -> dict[str, Any]:
    members = db.scalars(
        select(User.username)
        .join(StudyMember, StudyMember.user_id == User.id)
        .where(StudyMember.study_id == study.id)
        .order_by(User.username)
    )
    orgs = db.scalars(
        select(StudyOrganisation.organisation_id)
        .where(StudyOrganisation.study_id == study.id)
        .order_by(StudyOrganisation.organisation_id)
    )
    datasets = db.scalars(
        select(StudyDataset.name)
        .where(StudyDataset.study_id == study.id)
        .order_by(StudyDataset.name)
    )
    return {
        "id": study.id,
        "name": study.name,
        "description": study.description,
        "members": list(members),
        "organisation_ids": list(orgs),
        "datasets": list(datasets),
        "created_at": study.created_at,
    }


def dataset_nodes(db: Session, study: Study, name: str) -> list[tuple[Node, Dataset]]:
    """The nodes of the study's organisations that registered `name`, in node-id order."""
    rows = db.execute(
        select(Node, Dataset)
        .join(Dataset, Dataset.node_id == Node.id)
        .join(StudyOrganisation, StudyOrganisation.organisation_id == Node.organisation_id)
        .where(StudyOrganisation.study_id == study.id, Dataset.name == name)
        .order_by(Node.id)
    ).all()
    return [(node, dataset) for node, dataset in rows]


def study_datasets(db: Session, study: Study) -> list[str]:
    return list(
        db.scalars(
            select(StudyDataset.name)
            .where(StudyDataset.study_id == study.id)
            .order_by(StudyDataset.name)
        )
    )


def registered_nodes(db: Session, study: Study, name: str) -> list[tuple[Node, Dataset]]:
    """`dataset_nodes` of a dataset that must be one of the study's (404 otherwise)."""
    datasets = study_datasets(db, study)
    if name not in datasets:
        raise NotFound(
            f"dataset {name!r} is not part of study {study.name!r}",
            {"dataset": name, "datasets": datasets},
        )
    return dataset_nodes(db, study, name)


def study_nodes(db: Session, study: Study) -> list[Node]:
    """Every node of the study's organisations, in node-id order."""
    return list(
        db.scalars(
            select(Node)
            .join(StudyOrganisation, StudyOrganisation.organisation_id == Node.organisation_id)
            .where(StudyOrganisation.study_id == study.id)
            .order_by(Node.id)
        )
    )


def datasets_view(db: Session, study: Study) -> list[dict[str, Any]]:
    out = []
    for name in study_view(db, study)["datasets"]:
        registered = dataset_nodes(db, study, name)
        schemas = [d.schema for _, d in registered]
        out.append(
            {
                "name": name,
                "nodes": [
                    {
                        "node": n.name,
                        "organisation_id": n.organisation_id,
                        "schema": d.schema,
                        "updated_at": d.updated_at,
                    }
                    for n, d in registered
                ],
                "schemas_agree": all(s == schemas[0] for s in schemas),
            }
        )
    return out
