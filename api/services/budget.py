"""Differential-privacy budgets as the nodes report them: a study's view, and the check at
submission.

Each node keeps its own ledger and decides (`node_agent.budget`): it refuses a task whose
query would spend more than its study has left there. The coordinator keeps what each node
last reported, to show members what is left and to refuse up front a query that some node
would refuse anyway. The limits come from each node's published policy (its hello), the
spending from its ledger reports (`PUT /nodes/me/budget`, at every registration and after every
charge).

A node keeps two accountants over the same charges and admits a charge when, with it, at least
one of them is within the limit (`tessera.privacy.Composed`): basic composition (the sums of
epsilon and delta, `epsilon_spent` and `delta_spent` in its report) and zCDP (the sum of rho,
`rho_spent`; a query costs epsilon^2 / 2, the limits (epsilon, delta) convert to rho). So what a
limit has left is the better of the two: `epsilon_remaining`, the largest epsilon one more pure
query may have, is max(epsilon_L - sum epsilon (while sum delta <= delta_L, else 0),
sqrt(2 (rho_L - sum rho))). A node that reports no rho (older than this) composes in zCDP only,
its (epsilon, delta) being what its rho amounts to at the limit's delta, from which the rho is
recovered. A dataset's total over all studies is on by default (the study allocation where the
node configures none); a query must fit both the total and the study's allocation at the node
(each by either accountant). A query must be accepted by every node, so what the network has
left for a study on a dataset is the least that any of its nodes has available.

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
    ZERO,
    Composed,
    exact,
    largest_epsilon,
    left,
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
        (b.study_id, b.dataset): (b.epsilon_spent, b.delta_spent, b.charges, b.rho_spent)
        for b in db.scalars(select(NodeBudget).where(NodeBudget.node_id == node.id))
    }
    after = {
        (e.study_id, e.dataset): (e.epsilon_spent, e.delta_spent, e.charges, e.rho_spent)
        for e in kept
    }
    totals_before = {
        t.dataset: (t.epsilon_spent, t.delta_spent, t.charges, t.rho_spent)
        for t in db.scalars(select(NodeDatasetBudget).where(NodeDatasetBudget.node_id == node.id))
    }
    totals_after = {
        t.dataset: (t.epsilon_spent, t.delta_spent, t.charges, t.rho_spent)
        for t in body.dataset_totals
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
                rho_spent=e.rho_spent,
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
                rho_spent=t.rho_spent,
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


def _composed(row: NodeBudget | NodeDatasetBudget | None) -> Composed:
    """What a node reported spent, by each accountant. A report without rho (a node older
    than the better-of-two rule, composing in zCDP only) gave the (epsilon, delta) its rho
    amounts to: the rho is recovered by the inverse of the conversion
    (`tessera.privacy.rho_budget`), and basic composition does not apply."""
    if row is None:
        return Composed()
    if row.rho_spent is None:
        rho = rho_budget(row.epsilon_spent, row.delta_spent) if row.epsilon_spent > 0 else ZERO
        return Composed(rho, None, None)
    return Composed(exact(row.rho_spent), exact(row.epsilon_spent), exact(row.delta_spent))


def _amounts(
    limit: DPBudget | DPTotal | None, row: NodeBudget | NodeDatasetBudget | None
) -> dict[str, Any]:
    """A limit as (epsilon, delta) and as rho, what each accountant has spent of it and what is
    left (never below zero): basic composition's `epsilon_spent` and `delta_spent` (the sums of
    the charges' epsilon and delta), zCDP's `rho_spent`. `basic_epsilon_remaining` is
    epsilon_L - sum epsilon while sum delta <= delta_L (else 0), `zcdp_epsilon_remaining`
    sqrt(2 (rho_L - sum rho)), and `epsilon_remaining`, the largest epsilon one more pure query
    may have, the better of the two; `delta_remaining` is what basic composition has left of
    delta (the most a query may declare and still be admitted by it)."""
    spent = _composed(row)
    rho_limit = None if limit is None or limit.rho is None else float(limit.rho)
    rho_left = 0.0 if rho_limit is None else float(left(rho_limit, spent.rho))
    if limit is None or limit.epsilon is None:
        basic_left, delta_left = 0.0, 0.0
    else:
        basic_left = float(spent.basic_left(limit.epsilon, limit.delta))
        delta_left = float(spent.delta_left(limit.delta))
    zcdp_left = largest_epsilon(rho_left)
    return {
        "rho_limit": rho_limit,
        "rho_spent": float(spent.rho),
        "rho_remaining": rho_left,
        "epsilon_limit": None if limit is None else limit.epsilon,
        "epsilon_spent": row.epsilon_spent if row else 0.0,
        "epsilon_remaining": max(basic_left, zcdp_left),
        "basic_epsilon_remaining": basic_left,
        "zcdp_epsilon_remaining": zcdp_left,
        "delta_limit": None if limit is None else limit.delta,
        "delta_spent": row.delta_spent if row else 0.0,
        "delta_remaining": delta_left,
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
    over_studies = _total_view(total, total_row)
    available = {
        key: own[f"{key}_remaining"]
        if over_studies is None
        else min(own[f"{key}_remaining"], over_studies[f"{key}_remaining"])
        for key in ("rho", "epsilon", "delta")
    }
    return {
        "node": node.name,
        **own,
        "dataset_total": over_studies,
        "rho_available": available["rho"],
        "epsilon_available": available["epsilon"],
        "delta_available": available["delta"],
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
    return {"study_id": study.id, "composition": "basic or zcdp", "datasets": datasets}


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
    rho = query_rho(epsilon)
    # a report's floats stand for the node's exact decimals to about 1e-16
    slack = 1e-12
    short = []
    spent, totals = _spent(db, study, dataset), _dataset_spent(db, dataset)
    for node, view in zip(nodes, _views(db, study, dataset, nodes), strict=True):
        limit, total = _limit(node, dataset), _total(node, dataset)
        assert limit is not None  # refused above
        own = _composed(spent.get(node.id)).plus(rho, epsilon, delta)
        if not own.within(limit.epsilon, limit.delta, limit.rho, slack):
            short.append({"limit": "study", "node": node.name, **_binding(view, view)})
            continue
        if total is None or total.epsilon is None or total.rho is None:
            continue
        everyone = _composed(totals.get(node.id)).plus(rho, epsilon, delta)
        if not everyone.within(total.epsilon, total.delta, total.rho, slack):
            over = view["dataset_total"]
            short.append({"limit": "dataset_total", "node": node.name, **_binding(view, over)})
    if short:
        left_text = "; ".join(_short_text(v) for v in short)
        raise BudgetExceeded(
            f"the query's epsilon {text(epsilon)} (rho {float(rho):.6g}) exceeds what study "
            f"{study.name!r} has left of the differential-privacy budget on dataset {dataset!r} "
            f"by both basic composition and zCDP ({left_text}, as last reported)",
            {
                "dataset": dataset,
                "epsilon": float(epsilon),
                "delta": float(delta),
                "rho": float(rho),
                "nodes": short,
            },
        )


def _binding(view: dict[str, Any], limit: dict[str, Any]) -> dict[str, Any]:
    """What is left of the limit that binds (the study's allocation, or the dataset's total),
    by each accountant."""
    return {
        "epsilon_remaining": limit["epsilon_remaining"],
        "basic_epsilon_remaining": limit["basic_epsilon_remaining"],
        "delta_remaining": limit["delta_remaining"],
        "rho_remaining": limit["rho_remaining"],
        "reported_at": view["reported_at"].isoformat() if view["reported_at"] else None,
    }


def _short_text(short: dict[str, Any]) -> str:
    """'node a: a query of epsilon up to 0.0632 (basic composition: epsilon 0, delta 0 left;
    zCDP: rho 0.002 left)', and where the dataset's total over all studies is what is short,
    the same 'of the dataset's total over all studies'."""
    where = "" if short["limit"] == "study" else " of the dataset's total over all studies"
    return (
        f"node {short['node']}: a query of epsilon up to {short['epsilon_remaining']:.6g} "
        f"(basic composition: epsilon {short['basic_epsilon_remaining']:.6g}, delta "
        f"{short['delta_remaining']:.6g} left; zCDP: rho {short['rho_remaining']:.6g} "
        f"left){where}"
    )
