"""Differential-privacy budgets as the nodes report them: a study's view, and the check at
submission.

Each node keeps its own ledger and decides (`node_agent.budget`): it refuses a task whose
query would spend more than its study has left there. The coordinator keeps what each node
last reported, to show members what is left and to refuse up front a query that some node
would refuse anyway. The limits come from each node's published policy (its hello), the
spending from its ledger reports (`PUT /nodes/me/budget`, at every registration and after every
charge). Each node composes in zCDP: a query costs rho = epsilon^2 / 2, a DP synthesis the rho
of its generator; the limits are (epsilon, delta) converted to rho (`tessera.privacy`). A
dataset's total over all studies is on by default (the study allocation where the node
configures none); a query must fit both the total and the study's allocation at the node. A
node reports what is spent as the (epsilon, delta) it amounts to, from which the rho is
recovered. A query must be accepted by every node, so what the network has left for a study on
a dataset is the least that any of its nodes has available ("epsilon_remaining": the largest
epsilon one more query may have).

What other studies spent is theirs: a study's members see of a node's total only as much as
they need to know what they can spend.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from api import audit, clock
from api.db import write_lock
from api.models import Node, NodeBudget, NodeDatasetBudget, Study
from api.services.network import published_policy
from api.services.studies import dataset_nodes, study_view
from tessera.errors import BudgetExceeded, InvalidRequest, PolicyDenied
from tessera.privacy import (
    conversion_delta,
    largest_epsilon,
    query_rho,
    rho_budget,
    text,
)
from tessera.schemas import DPBudget, DPTotal, NodeBudgetReport


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
    names = [t.dataset for t in body.dataset_totals]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InvalidRequest(
            "each dataset may appear once in a budget report's dataset_totals",
            {"repeated": twice},
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
    totals_before = {
        t.dataset: (t.epsilon_spent, t.delta_spent, t.charges)
        for t in db.scalars(select(NodeDatasetBudget).where(NodeDatasetBudget.node_id == node.id))
    }
    totals_after = {
        t.dataset: (t.epsilon_spent, t.delta_spent, t.charges) for t in body.dataset_totals
    }
    if after != before or totals_after != totals_before:
        db.execute(delete(NodeBudget).where(NodeBudget.node_id == node.id))
        db.execute(delete(NodeDatasetBudget).where(NodeDatasetBudget.node_id == node.id))
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
        db.add_all(
            NodeDatasetBudget(
                node_id=node.id,
                dataset=t.dataset,
                epsilon_spent=t.epsilon_spent,
                delta_spent=t.delta_spent,
                charges=t.charges,
            )
            for t in body.dataset_totals
        )
        audit.record(
            db,
            f"node:{node.name}",
            "node.budget_reported",
            f"node:{node.name}",
            entries=[e.model_dump() for e in kept],
            dataset_totals=[t.model_dump() for t in body.dataset_totals],
        )
    node.budget_reported_at = clock.now(db)
    db.flush()
    ignored = sorted(studies - known)
    return {"entries": len(kept), "ignored_study_ids": ignored}


def _limit(node: Node, dataset: str) -> DPBudget | None:
    """The node's budget per study on `dataset`, from its published policy (None: no DP)."""
    return published_policy(node).dp_limit(dataset)


def _total(node: Node, dataset: str) -> DPTotal | None:
    """The node's cap on all studies together on `dataset` (None: none)."""
    return published_policy(node).dp_total_limit(dataset)


def _spent(db: Session, study: Study, dataset: str) -> dict[int, NodeBudget]:
    rows = db.scalars(
        select(NodeBudget).where(NodeBudget.study_id == study.id, NodeBudget.dataset == dataset)
    )
    return {row.node_id: row for row in rows}


def _dataset_spent(db: Session, dataset: str) -> dict[int, NodeDatasetBudget]:
    rows = db.scalars(select(NodeDatasetBudget).where(NodeDatasetBudget.dataset == dataset))
    return {row.node_id: row for row in rows}


def _rho_of(row: NodeBudget | NodeDatasetBudget | None) -> float:
    """The rho a node reported spent: stored as the (epsilon, delta) it amounts to, so
    recovered by the inverse of the conversion (`tessera.privacy.rho_budget`)."""
    if row is None or row.epsilon_spent <= 0:
        return 0.0
    return float(rho_budget(row.epsilon_spent, row.delta_spent))


def _amounts(
    limit: DPBudget | DPTotal | None, row: NodeBudget | NodeDatasetBudget | None
) -> dict[str, Any]:
    """A limit's rho and (epsilon, delta), what is spent of it and what is left (never below
    zero): `epsilon_remaining` is the largest epsilon one more query may have (its rho,
    epsilon^2 / 2, fits what is left)."""
    rho_limit = None if limit is None or limit.rho is None else float(limit.rho)
    rho_spent = _rho_of(row)
    rho_left = 0.0 if rho_limit is None else max(0.0, rho_limit - rho_spent)
    return {
        "rho_limit": rho_limit,
        "rho_spent": rho_spent,
        "rho_remaining": rho_left,
        "epsilon_limit": None if limit is None else limit.epsilon,
        "epsilon_spent": row.epsilon_spent if row else 0.0,
        "epsilon_remaining": largest_epsilon(rho_left),
        "delta_limit": None if limit is None else limit.delta,
        "delta_spent": row.delta_spent if row else 0.0,
        "delta_remaining": None if limit is None else conversion_delta(limit.delta),
        "charges": row.charges if row else 0,
    }


def _total_view(total: DPTotal | None, row: NodeDatasetBudget | None) -> dict[str, Any] | None:
    """The dataset's total over all studies at a node; None where the node has no DP budget."""
    return None if total is None else _amounts(total, row)


def _node_view(
    node: Node,
    limit: DPBudget | None,
    row: NodeBudget | None,
    total: DPTotal | None = None,
    total_row: NodeDatasetBudget | None = None,
) -> dict[str, Any]:
    own = _amounts(limit, row)
    if limit is None:
        own["delta_remaining"] = 0.0
    over_studies = _total_view(total, total_row)
    rho_available = own["rho_remaining"]
    if over_studies is not None:
        rho_available = min(rho_available, over_studies["rho_remaining"])
    return {
        "node": node.name,
        **own,
        "dataset_total": over_studies,
        "rho_available": rho_available,
        "epsilon_available": largest_epsilon(rho_available),
        "delta_available": own["delta_remaining"],
        "reported_at": node.budget_reported_at,
    }


def _views(db: Session, study: Study, dataset: str, nodes: list[Node]) -> list[dict[str, Any]]:
    spent, totals = _spent(db, study, dataset), _dataset_spent(db, dataset)
    return [
        _node_view(
            node,
            _limit(node, dataset),
            spent.get(node.id),
            _total(node, dataset),
            totals.get(node.id),
        )
        for node in nodes
    ]


def study_budget(db: Session, study: Study) -> dict[str, Any]:
    """Per dataset of the study: each node's limit, spend and what is left (of the study's
    budget, and of the dataset's total over all studies where the node caps it), and what the
    network has available (the least of its nodes)."""
    datasets = []
    for name in study_view(db, study)["datasets"]:
        nodes = _views(db, study, name, [node for node, _ in dataset_nodes(db, study, name)])
        datasets.append(
            {
                "dataset": name,
                "rho_remaining": min((n["rho_available"] for n in nodes), default=None),
                "epsilon_remaining": min((n["epsilon_available"] for n in nodes), default=None),
                "delta_remaining": min((n["delta_available"] for n in nodes), default=None),
                "nodes": nodes,
            }
        )
    return {"study_id": study.id, "composition": "zcdp", "datasets": datasets}


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
    rho = float(query_rho(epsilon))
    slack = 1e-12  # the reported (epsilon, delta) converts back to rho to about 1e-16
    short = []
    for view in _views(db, study, dataset, nodes):
        if rho > view["rho_remaining"] + slack:
            short.append({**view, "limit": "study"})
        elif rho > view["rho_available"] + slack:
            short.append({**view, "limit": "dataset_total"})
    if short:
        left_text = "; ".join(_short_text(v) for v in short)
        raise BudgetExceeded(
            f"the query's epsilon {text(epsilon)} (rho {rho:.6g}) exceeds what study "
            f"{study.name!r} has left of the differential-privacy budget on dataset {dataset!r} "
            f"({left_text}, as last reported)",
            {
                "dataset": dataset,
                "epsilon": float(epsilon),
                "delta": float(delta),
                "rho": rho,
                "nodes": [
                    {
                        "node": v["node"],
                        "limit": v["limit"],
                        "rho_remaining": v[_which(v, "rho")],
                        "epsilon_remaining": v[_which(v, "epsilon")],
                        "reported_at": v["reported_at"].isoformat() if v["reported_at"] else None,
                    }
                    for v in short
                ],
            },
        )


def _which(view: dict[str, Any], amount: str) -> str:
    """The key of what is left of the limit that binds: the study's, or what is available."""
    return f"{amount}_remaining" if view["limit"] == "study" else f"{amount}_available"


def _short_text(view: dict[str, Any]) -> str:
    """'node a: rho 0.002 (a query of epsilon up to 0.0632)' (the study's allocation) or, where
    the dataset's total over all studies is what is short, the same 'of the dataset's total
    over all studies'."""
    which = "remaining" if view["limit"] == "study" else "available"
    where = "" if view["limit"] == "study" else " of the dataset's total over all studies"
    return (
        f"node {view['node']}: rho {view[f'rho_{which}']:.6g} (a query of epsilon up to "
        f"{view[f'epsilon_{which}']:.6g}){where}"
    )
