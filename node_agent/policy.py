"""The node's own decision on a task. The coordinator plans with the published policy summary,
but only this decides: a task the policy forbids is refused with the reason."""

from __future__ import annotations

from typing import Any

from node_agent.config import NodeSettings
from tessera.errors import QueryInvalid


def refusal(settings: NodeSettings, dataset: str, query: dict[str, Any]) -> str | None:
    """None if the task may run; otherwise the reason to refuse it."""
    from smpc import prepare

    policy = settings.policy
    ds = settings.dataset(dataset)
    if ds is None:
        return f"dataset {dataset!r} is not served by this node"
    if policy.allowed_datasets is not None and dataset not in policy.allowed_datasets:
        return f"policy does not allow queries on dataset {dataset!r}"
    statistic = query.get("statistic")
    if policy.allowed_statistics is not None and statistic not in policy.allowed_statistics:
        return f"policy does not allow {statistic!r} queries"
    try:
        prepare(query, ds.schema_)
    except QueryInvalid as exc:
        return f"query invalid against this node's declared schema: {exc.message}"
    return None
