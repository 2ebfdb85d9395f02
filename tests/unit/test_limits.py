"""The edge limits of `tessera.limits`, as the shared models apply them (the coordinator and the
node agent validate the same models)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from smpc.statistics import parse_query
from tessera.errors import QueryInvalid
from tessera.limits import (
    MAX_CONDITIONS,
    MAX_ID,
    MAX_IN_VALUES,
    MAX_JSON_DEPTH,
    NUL_FREE,
    json_problem,
    validation_message,
)
from tessera.rest import MemberRef, NewStudy
from tessera.schemas import (
    BudgetSpent,
    ColumnSpec,
    NodeHello,
    SynthesisSpec,
    TaskFailure,
    TaskResult,
)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_json_depth_is_measured_without_recursion() -> None:
    assert json_problem({"a": nested(MAX_JSON_DEPTH - 1)}) is None
    assert json_problem({"a": nested(MAX_JSON_DEPTH)}) == "nested more than 32 levels deep"
    # far deeper than Python's recursion limit: measured all the same
    assert json_problem(nested(50_000)) == "nested more than 32 levels deep"


def test_json_values_are_counted_and_nul_bytes_found() -> None:
    assert json_problem({"a": list(range(2_000_001))}) == "more than 2000000 values"
    assert json_problem({"a\x00": 1}) == "a key contains a NUL byte"
    assert json_problem({"a": ["fine", {"b": "x\x00"}]}) == "a string contains a NUL byte"
    assert json_problem({"a": [1.5, None, True, "text"]}) is None


def test_free_form_json_fields_are_bounded() -> None:
    with pytest.raises(ValidationError, match="nested more than 32 levels deep"):
        SynthesisSpec(dataset="cohort", rows=10, params={"a": nested(40)})
    with pytest.raises(ValidationError, match="NUL"):
        TaskResult(result={"count": "1\x00"}, min_count_applied=0, seconds=1)
    with pytest.raises(ValidationError, match="at most 100 items"):
        SynthesisSpec(dataset="cohort", rows=10, params={f"p{i}": i for i in range(101)})
    assert SynthesisSpec(dataset="cohort", rows=10, params={"epochs": 5}).params == {"epochs": 5}


@pytest.mark.parametrize("value", [0, MAX_ID + 1, 2**63])
def test_ids_outside_the_database_range_are_refused(value: int) -> None:
    with pytest.raises(ValidationError):
        NewStudy(name="s", organisation_ids=[value])
    with pytest.raises(ValidationError):
        MemberRef(user_id=value)
    with pytest.raises(ValidationError):
        BudgetSpent(study_id=value, dataset="d", epsilon_spent=0, delta_spent=0, charges=0)


def test_ids_inside_the_range_pass() -> None:
    assert NewStudy(name="s", organisation_ids=[1, MAX_ID]).organisation_ids == [1, MAX_ID]


def test_strings_refuse_nul_bytes_with_a_plain_message() -> None:
    for build in (
        lambda: NewStudy(name="a\x00"),
        lambda: NewStudy(name="a", description="\x00"),
        lambda: TaskFailure(code="c", message="m\x00"),
        lambda: NodeHello(agent_version="1.0\x00"),
        lambda: ColumnSpec(name="sex", type="categorical", levels=["F", "M\x00"]),
    ):
        with pytest.raises(ValidationError) as caught:
            build()
        assert [validation_message(e) for e in caught.value.errors()] == ["contains a NUL byte"]


def test_texts_and_lists_have_lengths() -> None:
    with pytest.raises(ValidationError, match="at most 10000 characters"):
        NewStudy(name="s", description="x" * 10_001)
    with pytest.raises(ValidationError, match="at most 1000 items"):
        NewStudy(name="s", members=[f"user{i}" for i in range(1001)])
    with pytest.raises(ValidationError, match="at most 64 characters"):
        NodeHello(agent_version="v" * 65)
    assert NUL_FREE == r"^[^\x00]*$"


def query(**extra: Any) -> dict[str, Any]:
    return {"statistic": "count", "dataset": "cohort", **extra}


def test_where_is_counted_before_a_condition_is_parsed() -> None:
    parse_query(query(where=[["age", ">=", i] for i in range(MAX_CONDITIONS)]))
    # not even a triple: the count refuses it first
    with pytest.raises(QueryInvalid, match=f"at most {MAX_CONDITIONS} conditions, not 2000000"):
        parse_query(query(where=[None] * 2_000_000))
    with pytest.raises(QueryInvalid, match="'in' takes at most 1000 values, not 1001"):
        parse_query(query(where=[["age", "in", list(range(MAX_IN_VALUES + 1))]]))
    for value in ("F\x00", ["F", "M\x00"], "x" * 257):
        with pytest.raises(QueryInvalid, match="at most 256 characters, without NUL"):
            parse_query(query(where=[["sex", "==" if isinstance(value, str) else "in", value]]))


def test_group_by_names_each_column_once() -> None:
    with pytest.raises(QueryInvalid, match="more than once: sex"):
        parse_query(query(group_by=["sex", "sex", "sex", "sex"]))
    assert parse_query(query(group_by=["sex", "icu"])).group_by == ["sex", "icu"]
    # a quantile level listed twice is one key of the result, computed once (as always)
    assert parse_query(
        {"statistic": "quantile", "dataset": "d", "column": "a", "q": [0.5, 0.50]}
    ).q == [0.5, 0.5]
