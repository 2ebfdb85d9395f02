"""Differential-privacy budgets as the nodes report them: a study's view, and the check at
submission.

Each node keeps its own ledger and decides (`node_agent.budget`): it refuses a task whose
query would spend more than its study has left there. The coordinator keeps what each node
last reported, to show members what is left and to refuse up front a query that some node
would refuse anyway. The limits come from each node's published policy (its hello), the
spending from its ledger reports (`PUT /nodes/me/budget`, at every registration and after every
charge). A query must be accepted by every node, so what the network has left for a study on a
dataset is the least that any of its nodes has left.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from api import audit
from api.db import write_lock
from api.models import Node, NodeBudget, Study, utcnow
from api.services.studies import dataset_nodes, study_view
from tessera.errors import BudgetExceeded, InvalidRequest, PolicyDenied
from tessera.privacy import exact, left, text
from tessera.schemas import DPBudget, NodeBudgetReport, NodePolicySummary


def report(db: Session, node: Node, body: NodeBudgetReport) -> dict[str, Any]:
    """Replace what the node reported before with its whole ledger. Entries for studies this
    coordinator does not know (a node's ledger outlives a coordinator restored from an older
    backup) are left out and named in the answer."""
    keys = [(e.study_id, e.dataset) for e in body.entries]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise InvalidRequest(
            "each study and dataset may appear once in a budget report",
            {"repeated": [{"study_id": s, "dataset": d} for s, d in repeated]},
        )
    write_lock(db)
    db.scalars(select(Node).where(Node.id == node.id).with_for_update()).one()
    studies = {e.study_id for e in body.entries}
    known = set(db.scalars(select(Study.id).where(Study.id.in_(studies)))) if studies else set()
    kept = [e for e in body.entries if e.study_id in known]
    before = {
        (b.study_id, b.dataset): (b.epsilon_spent, b.delta_spent, b.charges)
        for b in db.scalars(select(NodeBudget).where(NodeBudget.node_id == node.id))
    }
    after = {(e.study_id, e.dataset): (e.epsilon_spent, e.delta_spent, e.charges) for e in kept}
    if after != before:
        db.execute(delete(NodeBudget).where(NodeBudget.node_id == node.id))
        db.add_all(
            NodeBudget(
                node_id=node.id,
                study_id=e.study_id,
                dataset=e.dataset,
                epsilon_spent=e.epsilon_spent,
                delta_spent=e.delta_spent,
                charges=e.charges,
            )
            for e in kept
        )
        audit.record(
            db,
            f"node:{node.name}",
            "node.budget_reported",
            f"node:{node.name}",
            entries=[e.model_dump() for e in kept],
        )
    node.budget_reported_at = utcnow()
    db.flush()
    ignored = sorted(studies - known)
    return {"entries": len(kept), "ignored_study_ids": ignored}


def _limit(node: Node, dataset: str) -> DPBudget | None:
    """The node's budget per study on `dataset`, from its published policy (None: no DP)."""
    try:
        return NodePolicySummary.model_validate(node.policy or {}).dp_limit(dataset)
    except ValidationError:
        return None


def _spent(db: Session, study: Study, dataset: str) -> dict[int, NodeBudget]:
    rows = db.scalars(
        select(NodeBudget).where(NodeBudget.study_id == study.id, NodeBudget.dataset == dataset)
    )
    return {row.node_id: row for row in rows}


def _node_view(node: Node, limit: DPBudget | None, row: NodeBudget | None) -> dict[str, Any]:
    eps_spent, dlt_spent = (row.epsilon_spent, row.delta_spent) if row else (0.0, 0.0)
    return {
        "node": node.name,
        "epsilon_limit": limit.epsilon if limit else None,
        "epsilon_spent": eps_spent,
        "epsilon_remaining": float(left(limit.epsilon, eps_spent)) if limit else 0.0,
        "delta_limit": limit.delta if limit else None,
        "delta_spent": dlt_spent,
        "delta_remaining": float(left(limit.delta, dlt_spent)) if limit else 0.0,
        "charges": row.charges if row else 0,
        "reported_at": node.budget_reported_at,
    }


def study_budget(db: Session, study: Study) -> dict[str, Any]:
    """Per dataset of the study: each node's limit, spend and what is left, and what the
    network has left (the least of its nodes)."""
    datasets = []
    for name in study_view(db, study)["datasets"]:
        spent = _spent(db, study, name)
        nodes = [
            _node_view(node, _limit(node, name), spent.get(node.id))
            for node, _ in dataset_nodes(db, study, name)
        ]
        datasets.append(
            {
                "dataset": name,
                "epsilon_remaining": min((n["epsilon_remaining"] for n in nodes), default=None),
                "delta_remaining": min((n["delta_remaining"] for n in nodes), default=None),
                "nodes": nodes,
            }
        )
    return {"study_id": study.id, "composition": "basic", "datasets": datasets}


def check_affordable(
    db: Session, study: Study, dataset: str, epsilon: float, delta: float, nodes: list[Node]
) -> None:
    """Refuse a DP query up front that some node cannot afford by its last report: 403
    `policy_denied` if a node has no DP budget on the dataset, 409 `budget_exceeded` naming
    each node short of epsilon or delta. The nodes still decide when the query comes."""
    without = [n.name for n in nodes if _limit(n, dataset) is None]
    if without:
        phrase = (
            f"node {without[0]} has" if len(without) == 1 else f"nodes {', '.join(without)} have"
        )
        raise PolicyDenied(
            f"{phrase} no differential-privacy budget for dataset {dataset!r}: "
            "it takes part in no query with 'dp'",
            {"nodes": without, "dataset": dataset},
        )
    eps, dlt = exact(epsilon), exact(delta)
    spent = _spent(db, study, dataset)
    short = []
    for node in nodes:
        view = _node_view(node, _limit(node, dataset), spent.get(node.id))
        if eps > exact(view["epsilon_remaining"]) or dlt > exact(view["delta_remaining"]):
            short.append(view)
    if short:
        left_text = "; ".join(
            f"node {v['node']}: epsilon {text(v['epsilon_remaining'])}, "
            f"delta {text(v['delta_remaining'])}"
            for v in short
        )
        raise BudgetExceeded(
            f"the query's epsilon {text(eps)}, delta {text(dlt)} exceeds what study "
            f"{study.name!r} has left of the differential-privacy budget on dataset {dataset!r} "
            f"({left_text}, as last reported)",
            {
                "dataset": dataset,
                "epsilon": float(eps),
                "delta": float(dlt),
                "nodes": [
                    {
                        "node": v["node"],
                        "epsilon_remaining": v["epsilon_remaining"],
                        "delta_remaining": v["delta_remaining"],
                        "reported_at": v["reported_at"].isoformat() if v["reported_at"] else None,
                    }
                    for v in short
                ],
            },
        )
