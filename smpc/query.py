"""The query language: one pydantic model per statistic, discriminated by ``statistic``.

Every statistic of DESIGN.md validates here. `check_query` checks a query against a dataset's
declared schema (columns exist, have the right type, levels are known) and against the
statistics a caller supports (a node may run an older library: those are refused with a clear
"not supported yet" error).
A query with `dp` is accepted for the statistics of `smpc.dp.DP_STATISTICS` only, and a dp
sum or mean only on a column with declared bounds (booleans are bounded by [0, 1]).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from smpc.dp import DP_STATISTICS, column_bounds
from tessera.errors import QueryInvalid
from tessera.schemas import ColumnSpec, DatasetSchema, Name

Scalar = float | int | str | bool
Op = Literal["==", "!=", "<", "<=", ">", ">=", "in"]


class Condition(BaseModel):
    """One `[column, op, value]` filter; a query's conditions are combined with AND."""

    model_config = ConfigDict(extra="forbid")

    column: Name
    op: Op
    value: Scalar | list[Scalar]

    @classmethod
    def from_triple(cls, raw: Any) -> Condition:
        if isinstance(raw, Condition):
            return raw
        if isinstance(raw, dict):
            return cls.model_validate(raw)
        if not isinstance(raw, list | tuple) or len(raw) != 3:
            raise ValueError("each where condition is a [column, op, value] triple")
        column, op, value = raw
        cond = cls.model_validate({"column": column, "op": op, "value": value})
        if cond.op == "in" and not isinstance(cond.value, list):
            raise ValueError(f"'in' on {column!r} needs a list of values")
        if cond.op != "in" and isinstance(cond.value, list):
            raise ValueError(f"{op!r} on {column!r} needs a single value, not a list")
        return cond


class DPSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epsilon: float = Field(gt=0, le=100)
    delta: float = Field(0.0, ge=0, lt=1)


class QueryBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    statistic: str
    dataset: Name
    where: list[Condition] = []
    group_by: list[Name] = Field(default_factory=list, max_length=4)
    min_count: int | None = Field(None, ge=0)
    dp: DPSpec | None = None

    @field_validator("where", mode="before")
    @classmethod
    def _conditions(cls, raw: Any) -> Any:
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise ValueError("where is a list of [column, op, value] triples")
        return [Condition.from_triple(c) for c in raw]

    @field_validator("group_by", mode="before")
    @classmethod
    def _group_by(cls, raw: Any) -> Any:
        if raw is None:
            return []
        if isinstance(raw, str):
            return [raw]
        return raw

    def referenced_columns(self) -> list[str]:
        """Every column the query reads (filters, grouping and the statistic's own)."""
        cols = [c.column for c in self.where] + list(self.group_by) + self.statistic_columns()
        return list(dict.fromkeys(cols))

    def statistic_columns(self) -> list[str]:
        return []

    def to_json(self) -> dict[str, Any]:
        out = self.model_dump(mode="json", exclude_none=True)
        out["where"] = [[c.column, c.op, c.value] for c in self.where]
        return out


class CountQuery(QueryBase):
    statistic: Literal["count"]


class _ColumnQuery(QueryBase):
    column: Name

    def statistic_columns(self) -> list[str]:
        return [self.column]


class SumQuery(_ColumnQuery):
    statistic: Literal["sum"]


class MeanQuery(_ColumnQuery):
    statistic: Literal["mean"]


class VarianceQuery(_ColumnQuery):
    statistic: Literal["variance"]


class MinQuery(_ColumnQuery):
    statistic: Literal["min"]


class MaxQuery(_ColumnQuery):
    statistic: Literal["max"]


class QuantileQuery(_ColumnQuery):
    statistic: Literal["quantile"]
    q: list[float] = Field(min_length=1, max_length=99)

    @field_validator("q")
    @classmethod
    def _in_unit_interval(cls, q: list[float]) -> list[float]:
        if any(not 0 <= v <= 1 for v in q):
            raise ValueError("quantile levels q must lie in [0, 1]")
        return q


class HistogramQuery(_ColumnQuery):
    statistic: Literal["histogram"]
    bins: list[float] = Field(min_length=2, max_length=1001)

    @field_validator("bins")
    @classmethod
    def _increasing(cls, bins: list[float]) -> list[float]:
        if any(b >= a for a, b in zip(bins[1:], bins[:-1], strict=False)):
            raise ValueError("histogram bin edges must be strictly increasing")
        return bins


class CrosstabQuery(QueryBase):
    statistic: Literal["crosstab"]
    rows: Name
    columns: Name

    def statistic_columns(self) -> list[str]:
        return [self.rows, self.columns]


class Chi2Query(CrosstabQuery):
    statistic: Literal["chi2"]  # type: ignore[assignment]


class CorrelationQuery(QueryBase):
    statistic: Literal["correlation"]
    columns: list[Name] = Field(min_length=2, max_length=50)

    def statistic_columns(self) -> list[str]:
        return list(self.columns)


class LinearRegressionQuery(QueryBase):
    statistic: Literal["linear_regression"]
    outcome: Name
    predictors: list[Name] = Field(min_length=1, max_length=50)

    def statistic_columns(self) -> list[str]:
        return [self.outcome, *self.predictors]


class LogisticRegressionQuery(LinearRegressionQuery):
    statistic: Literal["logistic_regression"]  # type: ignore[assignment]


class KaplanMeierQuery(QueryBase):
    statistic: Literal["kaplan_meier"]
    time: Name
    event: Name
    group: Name | None = None

    def statistic_columns(self) -> list[str]:
        return [self.time, self.event] + ([self.group] if self.group else [])


class TTestQuery(_ColumnQuery):
    statistic: Literal["ttest"]
    group: Name

    def statistic_columns(self) -> list[str]:
        return [self.column, self.group]


Query = Annotated[
    CountQuery
    | SumQuery
    | MeanQuery
    | VarianceQuery
    | MinQuery
    | MaxQuery
    | QuantileQuery
    | HistogramQuery
    | CrosstabQuery
    | CorrelationQuery
    | LinearRegressionQuery
    | LogisticRegressionQuery
    | KaplanMeierQuery
    | TTestQuery
    | Chi2Query,
    Field(discriminator="statistic"),
]

STATISTICS = (
    "count", "sum", "mean", "variance", "min", "max", "quantile", "histogram", "crosstab",
    "correlation", "linear_regression", "logistic_regression", "kaplan_meier", "ttest", "chi2",
)  # fmt: skip

_ADAPTER: TypeAdapter[Any] = TypeAdapter(Query)


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int) or True)
    msg = str(err.get("msg", "invalid"))
    msg = msg.removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def parse_query(raw: Any) -> QueryBase:
    """Validate a query (a dict, as parsed from JSON) into its model, or raise `QueryInvalid`."""
    if not isinstance(raw, dict):
        raise QueryInvalid("a query is a JSON object")
    statistic = raw.get("statistic")
    if statistic is None:
        raise QueryInvalid("the query names no 'statistic'", {"known": list(STATISTICS)})
    if statistic not in STATISTICS:
        raise QueryInvalid(
            f"unknown statistic {statistic!r}", {"statistic": statistic, "known": list(STATISTICS)}
        )
    try:
        query: QueryBase = _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        errors = [
            {"loc": [p for p in e["loc"] if p != statistic], "msg": e["msg"]} for e in exc.errors()
        ]
        message = "; ".join(_describe(e) for e in errors)
        raise QueryInvalid(f"invalid {statistic} query: {message}", {"errors": errors}) from None
    return query


def _check_value(spec: ColumnSpec, op: str, value: Any) -> None:
    values = value if isinstance(value, list) else [value]
    if spec.type == "categorical":
        if op not in ("==", "!=", "in"):
            raise QueryInvalid(
                f"where: {op!r} does not apply to categorical column {spec.name!r}",
                {"column": spec.name},
            )
        unknown = [v for v in values if str(v) not in (spec.levels or [])]
        if unknown:
            raise QueryInvalid(
                f"where: {unknown[0]!r} is not a level of {spec.name!r}",
                {"column": spec.name, "levels": spec.levels},
            )
    elif spec.type == "boolean":
        if op not in ("==", "!=", "in") or any(
            not isinstance(v, bool) and v not in (0, 1) for v in values
        ):
            raise QueryInvalid(
                f"where: boolean column {spec.name!r} compares with ==, != or in to true/false",
                {"column": spec.name},
            )
    else:
        if any(isinstance(v, str | bool) for v in values):
            raise QueryInvalid(
                f"where: numeric column {spec.name!r} compares with numbers",
                {"column": spec.name},
            )


def check_query(query: QueryBase, schema: DatasetSchema, supported: tuple[str, ...]) -> None:
    """Check a parsed query against a dataset schema, or raise `QueryInvalid` naming the problem."""
    statistic = query.statistic
    if statistic not in supported:
        raise QueryInvalid(
            f"statistic {statistic!r} is not supported yet",
            {"statistic": statistic, "supported": list(supported)},
        )
    if query.dp is not None and statistic not in DP_STATISTICS:
        raise QueryInvalid(
            f"differential privacy ('dp') is available for {', '.join(DP_STATISTICS)}; "
            f"not for {statistic!r}",
            {"field": "dp", "statistic": statistic, "supported": list(DP_STATISTICS)},
        )
    for name in query.referenced_columns():
        if schema.column(name) is None:
            raise QueryInvalid(
                f"unknown column {name!r} in dataset {query.dataset!r}",
                {"column": name, "columns": schema.names},
            )
    for cond in query.where:
        spec = schema.column(cond.column)
        assert spec is not None
        _check_value(spec, cond.op, cond.value)
    for name in query.group_by:
        spec = schema.column(name)
        assert spec is not None
        if spec.type not in ("categorical", "boolean"):
            raise QueryInvalid(
                f"group_by: column {name!r} is {spec.type}; only categorical or boolean columns "
                "can be grouped by",
                {"column": name},
            )
    for name in query.statistic_columns():
        spec = schema.column(name)
        assert spec is not None
        if statistic in ("sum", "mean", "variance", "min", "max", "histogram", "quantile") and (
            not spec.is_numeric
        ):
            raise QueryInvalid(
                f"{statistic}: column {name!r} is {spec.type}, not numeric", {"column": name}
            )
        if query.dp is not None and statistic in ("sum", "mean") and column_bounds(spec) is None:
            raise QueryInvalid(
                f"dp {statistic} of {name!r} needs the column's bounds: declare finite 'min' and "
                f"'max' for {name!r} in the dataset schema (they set the noise's sensitivity, "
                "and values are clipped to them)",
                {"column": name, "field": "dp"},
            )
