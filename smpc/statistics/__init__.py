"""The registry of secure statistics: one class a module, registered in one line each.

Everything else follows from the registry: the statistic names (`STATISTICS`, in DESIGN.md's
order), those that take `dp` (`DP_STATISTICS`), the query language as a union discriminated on
`statistic` (`Query`, whose JSON schema the coordinator publishes), the result types
(`result_type()`, published as `QueryResult`), and the parser. Adding a statistic is a new
module under `smpc/statistics/` and its line below.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field, TypeAdapter, ValidationError

if TYPE_CHECKING:
    import pandas as pd

    from smpc.disclosure import AppliedRules

from smpc.cost import QueryCost
from smpc.job import LocalSummary
from smpc.query import QueryBase, applied_threshold, check_query, describe_validation
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
from tessera.errors import QueryInvalid
from tessera.schemas import DatasetSchema, DisclosureRules

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
STATISTICS: tuple[str, ...] = tuple(REGISTRY)
DP_STATISTICS: tuple[str, ...] = tuple(n for n, cls in REGISTRY.items() if cls.supports_dp)

# the query language: a union of the statistics' query models, discriminated on `statistic`
Query: Any = Annotated[
    Union[tuple(cls.query_model for cls in REGISTRY.values())],  # noqa: UP007
    Field(discriminator="statistic"),
]


@functools.cache
def result_type() -> Any:
    """A query's result: one of the statistics' result types (built when first asked for: a
    party process never needs it)."""
    return Union[tuple(cls.result_model() for cls in REGISTRY.values())]  # noqa: UP007


@functools.cache
def _query_adapter() -> TypeAdapter[Any]:
    return TypeAdapter(Query)


def parse_query(raw: Any) -> QueryBase:
    """Validate a query (a dict, as parsed from JSON) into its statistic's model, or raise
    `QueryInvalid` naming every problem."""
    if not isinstance(raw, dict):
        raise QueryInvalid("a query is a JSON object")
    statistic = raw.get("statistic")
    if statistic is None:
        raise QueryInvalid("the query names no 'statistic'", {"known": list(STATISTICS)})
    if statistic not in REGISTRY:
        raise QueryInvalid(
            f"unknown statistic {statistic!r}", {"statistic": statistic, "known": list(STATISTICS)}
        )
    try:
        query: QueryBase = _query_adapter().validate_python(raw)
    except ValidationError as exc:
        raise describe_validation(statistic, exc) from None
    return query


def statistic_for(query: QueryBase, schema: DatasetSchema) -> SecureStatistic:
    """The statistic of a parsed query that passed `check_query`: its own rules run here."""
    return REGISTRY[query.statistic](query, schema)


def checked(query: QueryBase, schema: DatasetSchema) -> SecureStatistic:
    """A parsed query checked against the schema, as the statistic that will run it."""
    check_query(query, schema)
    return statistic_for(query, schema)


def compile_query(raw: dict[str, Any] | QueryBase, schema: DatasetSchema) -> SecureStatistic:
    """Parse, check against the schema and build the statistic, once: what a process does with
    a query before anything else (`QueryInvalid` naming the problem)."""
    query = raw if isinstance(raw, QueryBase) else parse_query(raw)
    return checked(query, schema)


def prepare(raw: dict[str, Any] | QueryBase, schema: DatasetSchema) -> QueryBase:
    """Parse a query and check it against the schema; raise `QueryInvalid` naming the problem."""
    return compile_query(raw, schema).query


def query_cost(
    raw: dict[str, Any] | QueryBase | SecureStatistic, schema: DatasetSchema, parties: int
) -> QueryCost:
    """A query's estimated cost among `parties` parties (`smpc.cost`: cells and secure
    comparisons), from the query and the declared schema alone; `QueryInvalid` for a query the
    schema or the library would refuse."""
    statistic = raw if isinstance(raw, SecureStatistic) else compile_query(raw, schema)
    return statistic.cost(parties)


def local_summary(
    query: QueryBase | SecureStatistic, frame: pd.DataFrame, schema: DatasetSchema
) -> LocalSummary:
    """One party's private input for `query` over its own `frame` (aggregates, never rows)."""
    statistic = query if isinstance(query, SecureStatistic) else statistic_for(query, schema)
    return statistic.local_summary(frame)


def reference(
    query: dict[str, Any] | QueryBase,
    frame: pd.DataFrame,
    schema: DatasetSchema,
    min_count: int = 0,
) -> dict[str, Any]:
    """Plaintext oracle on pooled rows, with the same disclosure rule (tests and the demo)."""
    statistic = compile_query(query, schema)
    return statistic.reference(frame, applied_threshold(statistic.query.min_count, [min_count]))


def reference_parties(
    query: dict[str, Any] | QueryBase,
    frames: Sequence[pd.DataFrame],
    schema: DatasetSchema,
    *,
    min_count_floors: Sequence[int] | None = None,
    rules: DisclosureRules | Sequence[DisclosureRules] | None = None,
    key_secrets: Sequence[str] | None = None,
) -> dict[str, Any]:
    """What `smpc.simulate` must return for these frames, computed in plaintext: the exact
    perturbed result of the `exact` mode (same keys, same rules, same rounding) for the
    statistics whose perturbation has a plaintext twin (`SecureStatistic.plain`), the
    unperturbed pooled `reference` for the others. Tests only."""
    import pandas as pd

    from smpc.disclosure import AppliedRules

    statistic = compile_query(query, schema)
    floors = list(min_count_floors or [0] * len(frames))
    if rules is None or isinstance(rules, DisclosureRules):
        rules = [rules or DisclosureRules()] * len(frames)
    secrets: list[str | None] = list(key_secrets) if key_secrets else [None] * len(frames)
    summaries = []
    for frame, secret in zip(frames, secrets, strict=True):
        statistic.key_secret = secret
        summaries.append(statistic.local_summary(frame))
    applied = AppliedRules.local(statistic.query.min_count, floors, list(rules))
    statistic.rules = applied
    opened = statistic.plain(summaries, list(frames))
    if opened is None:
        return statistic.reference(pd.concat(list(frames), ignore_index=True), applied.threshold)
    return statistic.finish(opened)


def disclosure(
    raw: dict[str, Any] | QueryBase | SecureStatistic,
    schema: DatasetSchema,
    rules: AppliedRules | None = None,
) -> dict[str, Any]:
    """What running `raw` would reveal, without running it (the dry run's answer): what the
    protocol opens, the disclosure rules that apply under `rules` (the strictest of the taking
    part nodes'; default: DataSHIELD's defaults and no floors) and each result key's expected
    error.

    Raises `QueryInvalid` for a query the schema or the library would refuse.
    """
    from smpc.disclosure import AppliedRules

    statistic = raw if isinstance(raw, SecureStatistic) else compile_query(raw, schema)
    query = statistic.query
    if rules is None:
        rules = AppliedRules.local(query.min_count, [], [DisclosureRules()])
    return {
        "statistic": query.statistic,
        "reveals": statistic.reveals(),
        # with dp only noisy values are opened (the `Reveals:` paragraph names them)
        "intermediates": statistic.intermediates if query.dp is None else "",
        "epsilon": query.dp.epsilon if query.dp else 0.0,
        "delta": query.dp.delta if query.dp else 0.0,
        "rules": statistic.rules_applied(rules),
        "expected_error": statistic.expected_error(rules),
    }


__all__ = [
    "DP_STATISTICS",
    "REGISTRY",
    "STATISTICS",
    "Opened",
    "Query",
    "SecureStatistic",
    "checked",
    "compile_query",
    "disclosure",
    "local_summary",
    "parse_query",
    "prepare",
    "query_cost",
    "reference",
    "reference_parties",
    "result_type",
    "statistic_for",
]
