"""The registry of secure statistics: one class a module, registered in one line each."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from smpc.job import LocalSummary
from smpc.query import QueryBase, check_query, parse_query
from smpc.statistics.base import Opened, SecureStatistic
from smpc.statistics.chi2 import Chi2
from smpc.statistics.correlation import Correlation
from smpc.statistics.count import Count
from smpc.statistics.crosstab import Crosstab
from smpc.statistics.extrema import Max, Min
from smpc.statistics.histogram import Histogram
from smpc.statistics.kaplan_meier import KaplanMeier
from smpc.statistics.linear_regression import LinearRegression
from smpc.statistics.logistic_regression import LogisticRegression
from smpc.statistics.mean import Mean
from smpc.statistics.quantile import Quantile
from smpc.statistics.sum import Sum
from smpc.statistics.ttest import TTest
from smpc.statistics.variance import Variance
from tessera.schemas import DatasetSchema

REGISTRY: dict[str, type[SecureStatistic]] = {
    cls.name: cls
    for cls in (
        Count,
        Sum,
        Mean,
        Variance,
        Min,
        Max,
        Quantile,
        Histogram,
        Crosstab,
        Correlation,
        LinearRegression,
        LogisticRegression,
        KaplanMeier,
        TTest,
        Chi2,
    )
}
SUPPORTED: tuple[str, ...] = tuple(REGISTRY)


def prepare(raw: dict[str, Any] | QueryBase, schema: DatasetSchema) -> QueryBase:
    """Parse a query and check it against the schema; raise `QueryInvalid` naming the problem."""
    query = raw if isinstance(raw, QueryBase) else parse_query(raw)
    check_query(query, schema, SUPPORTED)
    statistic_for(query, schema)  # statistic-specific checks
    return query


def statistic_for(query: QueryBase, schema: DatasetSchema) -> SecureStatistic:
    return REGISTRY[query.statistic](query, schema)


def local_summary(query: QueryBase, frame: pd.DataFrame, schema: DatasetSchema) -> LocalSummary:
    """One party's private input for `query` over its own `frame` (aggregates, never rows)."""
    return statistic_for(query, schema).local_input(frame)


def reference(
    query: dict[str, Any] | QueryBase,
    frame: pd.DataFrame,
    schema: DatasetSchema,
    min_count: int = 0,
) -> dict[str, Any]:
    """Plaintext oracle on pooled rows, with the same disclosure rule (tests and the demo)."""
    parsed = prepare(query, schema)
    threshold = max(min_count, parsed.min_count or 0)
    return statistic_for(parsed, schema).reference(frame, threshold)


def disclosure(raw: dict[str, Any] | QueryBase, schema: DatasetSchema) -> dict[str, Any]:
    """What running `raw` would reveal, without running it (the dry run's answer).

    Raises `QueryInvalid` for a query the schema or the library would refuse.
    """
    query = prepare(raw, schema)
    cls = REGISTRY[query.statistic]
    return {
        "statistic": query.statistic,
        "reveals": cls.reveals(),
        "intermediates": cls.intermediates,
        "epsilon": query.dp.epsilon if query.dp else 0.0,
        "delta": query.dp.delta if query.dp else 0.0,
    }


__all__ = [
    "REGISTRY",
    "SUPPORTED",
    "Opened",
    "SecureStatistic",
    "disclosure",
    "local_summary",
    "prepare",
    "reference",
    "statistic_for",
]
