"""The query language's common part: filters, grouping, `min_count`, `dp`.

Each statistic's own query model (its parameters, a subclass of `QueryBase` with a literal
`statistic`) lives in its module under `smpc.statistics`, with its column rules and whether it
supports `dp`; the registry there derives the discriminated union, the list of names and the
parser. `check_query` checks what every query shares against a dataset's declared schema:
columns exist, `where` values fit their column's type and levels, `group_by` columns can be
grouped by.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from tessera.errors import QueryInvalid
from tessera.limits import MAX_CONDITIONS, MAX_IN_VALUES, MAX_VALUE_LENGTH, NUL_FREE
from tessera.schemas import (
    COLUMN_PATTERN,
    MAX_THRESHOLD,
    ColumnName,
    ColumnSpec,
    DatasetSchema,
    Name,
)

Value = Annotated[str, Field(pattern=NUL_FREE, max_length=MAX_VALUE_LENGTH)]
Scalar = float | int | Value | bool
Op = Literal["==", "!=", "<", "<=", ">", ">=", "in"]


class Condition(BaseModel):
    """One `[column, op, value]` filter; a query's conditions are combined with AND."""

    model_config = ConfigDict(extra="forbid")

    column: ColumnName
    op: Op
    value: Scalar | Annotated[list[Scalar], Field(max_length=MAX_IN_VALUES)]

    @classmethod
    def from_triple(cls, raw: Any) -> Condition:
        if isinstance(raw, Condition):
            return raw
        if isinstance(raw, dict):
            return cls.model_validate(raw)
        if not isinstance(raw, list | tuple) or len(raw) != 3:
            raise ValueError("each where condition is a [column, op, value] triple")
        column, op, value = raw
        values = value if isinstance(value, list) else [value]
        if len(values) > MAX_IN_VALUES:
            raise ValueError(f"'in' takes at most {MAX_IN_VALUES} values, not {len(values)}")
        if any(isinstance(v, str) and ("\x00" in v or len(v) > MAX_VALUE_LENGTH) for v in values):
            raise ValueError(
                f"a where value is a text of at most {MAX_VALUE_LENGTH} characters, without NUL"
            )
        cond = cls.model_validate({"column": column, "op": op, "value": value})
        if cond.op == "in" and not isinstance(cond.value, list):
            raise ValueError(f"'in' on {column!r} needs a list of values")
        if cond.op != "in" and isinstance(cond.value, list):
            raise ValueError(f"{op!r} on {column!r} needs a single value, not a list")
        return cond


_SCALAR_SCHEMA = {
    "anyOf": [
        {"type": ["number", "boolean"]},
        {"type": "string", "pattern": NUL_FREE, "maxLength": MAX_VALUE_LENGTH},
    ]
}
WHERE_SCHEMA = {
    "type": "array",
    "default": [],
    "maxItems": MAX_CONDITIONS,
    "description": "Filters, combined with AND: each a [column, op, value] triple; `in` takes "
    "a list of values. Categorical columns compare with ==, != and in to their levels, boolean "
    "columns with ==, != and in to true/false.",
    "items": {
        "type": "array",
        "minItems": 3,
        "maxItems": 3,
        "prefixItems": [
            {"type": "string", "pattern": COLUMN_PATTERN, "maxLength": 128},
            {"enum": list(get_args(Op))},
            {
                "anyOf": [
                    _SCALAR_SCHEMA,
                    {"type": "array", "items": _SCALAR_SCHEMA, "maxItems": MAX_IN_VALUES},
                ]
            },
        ],
    },
}


class DPSpec(BaseModel):
    """Differential privacy for a query: noise drawn inside MPC, charged to the budget."""

    model_config = ConfigDict(extra="forbid")

    epsilon: float = Field(gt=0, le=100)
    delta: float = Field(0.0, ge=0, lt=1)


class QueryBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    statistic: str
    dataset: Name
    where: Annotated[list[Condition], WithJsonSchema(WHERE_SCHEMA)] = []
    group_by: list[ColumnName] = Field(
        default_factory=list,
        max_length=4,
        description="Categorical or boolean columns, each once: the result is given per group.",
        json_schema_extra={"uniqueItems": True},
    )
    min_count: int | None = Field(
        None,
        ge=0,
        le=MAX_THRESHOLD,
        description="Suppress every cell with fewer rows (raised to node floors).",
    )
    dp: DPSpec | None = None

    @field_validator("where", mode="before")
    @classmethod
    def _conditions(cls, raw: Any) -> Any:
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise ValueError("where is a list of [column, op, value] triples")
        if len(raw) > MAX_CONDITIONS:  # before a single condition is parsed
            raise ValueError(f"where has at most {MAX_CONDITIONS} conditions, not {len(raw)}")
        return [Condition.from_triple(c) for c in raw]

    @field_validator("group_by", mode="before")
    @classmethod
    def _group_by(cls, raw: Any) -> Any:
        if raw is None:
            return []
        if isinstance(raw, str):
            return [raw]
        return raw

    @field_validator("group_by")
    @classmethod
    def _each_once(cls, names: list[str]) -> list[str]:
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"group_by names a column more than once: {', '.join(repeated)}")
        return names

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


class ColumnQuery(QueryBase):
    """A query of one `column` (sum, mean, variance, min, max, quantile, histogram, ttest)."""

    column: ColumnName

    def statistic_columns(self) -> list[str]:
        return [self.column]


def applied_threshold(query_min_count: int | None, floors: Iterable[int]) -> int:
    """The disclosure threshold every party applies: the query's `min_count` raised to every
    node's policy floor, so that no query can lower a node's floor. The coordinator predicts
    it with the floors nodes publish; the parties apply it with the floors they open."""
    return max([query_min_count or 0, *(int(f) for f in floors)])


def describe_validation(statistic: str, exc: ValidationError) -> QueryInvalid:
    """A query's validation errors as one `QueryInvalid`: each error's location (without the
    union's tag) and message, joined; `details.errors` lists them."""
    errors = [
        {"loc": [p for p in e["loc"] if p != statistic], "msg": _message(e)} for e in exc.errors()
    ]
    message = "; ".join(_describe(e) for e in errors)
    return QueryInvalid(f"invalid {statistic} query: {message}", {"errors": errors})


def _message(err: Any) -> str:
    return str(err.get("msg", "invalid")).removeprefix("Value error, ")


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{loc}: {err['msg']}" if loc else str(err["msg"])


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


def check_query(query: QueryBase, schema: DatasetSchema) -> None:
    """Check what every query shares against a dataset schema, or raise `QueryInvalid` naming
    the problem (the statistic's own rules are its class's: `smpc.statistics`)."""
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
