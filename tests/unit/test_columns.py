"""The kernel's one schema inference and one frame conformer (`tessera.columns`): the types read
off rows, the refusals, the dtypes of a conformed frame, and error messages that name the
column and rows but never a value."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tessera.columns import MAX_LEVELS, conform, infer_schema
from tessera.errors import DataInvalid, InvalidRequest, QueryInvalid
from tessera.schemas import ColumnSpec, DatasetSchema

SECRET = "Jane Doe 1957"  # a value that must never appear in an error message


def declared() -> DatasetSchema:
    return DatasetSchema(
        columns=[
            ColumnSpec(name="sex", type="categorical", levels=["F", "M"]),
            ColumnSpec(name="icu", type="boolean"),
            ColumnSpec(name="age", type="integer", min=0, max=120),
            ColumnSpec(name="weight", type="float", min=0),
        ]
    )


def spec(schema: DatasetSchema, name: str) -> ColumnSpec:
    column = schema.column(name)
    assert column is not None
    return column


def rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sex": ["F", "M", None, "F"],
            "icu": ["yes", "0", None, "True"],
            "age": [3.0, 45.0, None, 120.0],
            "weight": [14.5, 70, None, 82.25],
        }
    )


# ---- inference ------------------------------------------------------------------------------


def test_each_dtype_gives_its_type() -> None:
    frame = pd.DataFrame(
        {
            "flag": [True, False, True],
            "count": [1, 2, 3],
            "nullable_count": pd.array([1, None, 3], dtype="Int64"),
            "dose": [0.5, 1.0, np.nan],
            "whole_floats": [1.0, 2.0, 3.0],  # a float column stays float
            "ward": ["b", "a", None],
            "object_bools": pd.Series([True, None, False], dtype=object),
            "stage": pd.Categorical(["ii", "i", "ii"], categories=["iii", "ii", "i"]),
        }
    )
    schema = infer_schema([frame])
    assert [(c.name, c.type) for c in schema.columns] == [
        ("flag", "boolean"),
        ("count", "integer"),
        ("nullable_count", "integer"),
        ("dose", "float"),
        ("whole_floats", "float"),
        ("ward", "categorical"),
        ("object_bools", "boolean"),
        ("stage", "categorical"),
    ]
    assert spec(schema, "ward").levels == ["a", "b"]
    # a pandas categorical keeps its categories and their order, unseen ones included
    assert spec(schema, "stage").levels == ["iii", "ii", "i"]
    assert all(c.min is None and c.max is None for c in schema.columns)


def test_several_frames_give_one_schema() -> None:
    frames = [
        pd.DataFrame({"x": [1, 2], "g": ["b", "a"], "mixed": [True, False]}),
        pd.DataFrame({"x": [3, 4], "g": ["c", None], "mixed": [0, 1]}),
    ]
    schema = infer_schema(frames)
    assert spec(schema, "x").type == "integer"
    assert spec(schema, "g").levels == ["a", "b", "c"]
    assert spec(schema, "mixed").type == "float"  # bool + int
    with_bounds = infer_schema(frames, observed_bounds=True)
    x = spec(with_bounds, "x")
    assert (x.min, x.max) == (1, 4)
    assert spec(with_bounds, "g").min is None


def test_levels_are_the_text_the_rows_conform_to() -> None:
    frame = pd.DataFrame(
        {
            "code": pd.Series(["01", " 2 ", None], dtype=object),  # trimmed, "01" stays "01"
            "grade": pd.Categorical([1.0, 2.0, None]),  # whole-number categories as "1", "2"
        }
    )
    schema = infer_schema([frame])
    assert spec(schema, "code").levels == ["01", "2"]
    assert spec(schema, "grade").levels == ["1", "2"]
    typed = conform(frame, schema)
    assert typed["code"].tolist() == ["01", "2", None]
    assert typed["grade"].tolist() == ["1", "2", None]


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([], "no data frames given"),
        ([pd.DataFrame()], "the table has no columns"),
        (
            [pd.DataFrame({"a": [1], "b": [2]}), pd.DataFrame({"a": [1]})],
            r"frame 1 does not have the same columns as frame 0 \(differs in: b\)",
        ),
        (
            [pd.DataFrame({"a": [1], "b": [2]}), pd.DataFrame({"b": [2], "a": [1]})],
            r"\(differs in: column order\)",
        ),
        ([pd.DataFrame({" age": [1]})], "column name ' age' cannot be used"),
        ([pd.DataFrame({"a\tb": [1]})], "column name 'a\\\\tb' cannot be used"),
        ([pd.DataFrame({0: [1]})], "column name '0' cannot be used"),
        (
            [pd.DataFrame({"seen": pd.to_datetime(["2024-01-01"])})],
            "column 'seen' holds dates or times",
        ),
        ([pd.DataFrame({"stay": pd.to_timedelta(["1D"])})], "column 'stay' holds dates or times"),
        (
            [pd.DataFrame({"mrn": [f"p{i}" for i in range(MAX_LEVELS + 1)]})],
            f"column 'mrn' has {MAX_LEVELS + 1} distinct values: an identifier or free text",
        ),
        ([pd.DataFrame({"note": [None, None]}, dtype=object)], "column 'note' has no values"),
    ],
)
def test_what_inference_refuses(frames: list[pd.DataFrame], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        infer_schema(frames)


def test_inference_raises_the_callers_error_class() -> None:
    with pytest.raises(QueryInvalid, match="no data frames"):
        infer_schema([], error=QueryInvalid)


def test_a_text_column_at_the_level_limit_is_still_categorical() -> None:
    frame = pd.DataFrame({"ward": [f"w{i:04d}" for i in range(MAX_LEVELS)]})
    assert len(infer_schema([frame]).columns[0].levels or []) == MAX_LEVELS


# ---- conforming -----------------------------------------------------------------------------


def test_conform_types_each_column_as_declared() -> None:
    frame = rows().set_axis([10, 11, 12, 13])
    typed = conform(frame, declared())
    assert list(typed.columns) == ["sex", "icu", "age", "weight"]
    assert typed.index.tolist() == [10, 11, 12, 13]  # the frame's own index
    assert typed["sex"].dtype == object and typed["sex"].tolist() == ["F", "M", None, "F"]
    assert typed["icu"].dtype == "boolean"
    assert typed["icu"].tolist() == [True, False, pd.NA, True]
    assert typed["age"].dtype == "Int64" and typed["age"].tolist() == [3, 45, pd.NA, 120]
    assert typed["weight"].dtype == "float64"
    np.testing.assert_array_equal(typed["weight"], [14.5, 70.0, np.nan, 82.25])


def test_conform_takes_the_named_columns_in_their_order() -> None:
    typed = conform(rows(), declared(), ["weight", "sex"])
    assert list(typed.columns) == ["weight", "sex"]


def test_conform_reads_every_spelling_of_a_boolean_and_of_a_level() -> None:
    schema = DatasetSchema(
        columns=[
            ColumnSpec(name="b", type="boolean"),
            ColumnSpec(name="c", type="categorical", levels=["1", "2", "x"]),
        ]
    )
    spellings = ["true", " T", "YES", "1", "1.0", "false", "f", "No", "0", "0.0"]
    frame = pd.DataFrame({"b": spellings, "c": ["x"] * 10})
    assert conform(frame, schema)["b"].tolist() == [True] * 5 + [False] * 5
    typed = pd.DataFrame({"b": [True, False], "c": pd.Categorical(["x", "1"])})
    assert conform(typed, schema)["c"].tolist() == ["x", "1"]
    numbers = pd.DataFrame({"b": [1, 0], "c": [1.0, 2.0]})  # whole floats are "1", "2"
    assert conform(numbers, schema)["b"].tolist() == [True, False]
    assert conform(numbers, schema)["c"].tolist() == ["1", "2"]
    padded = pd.DataFrame({"b": [True, None], "c": [" x ", np.nan]})
    assert conform(padded, schema)["c"].tolist() == ["x", None]
    strings = pd.DataFrame({"b": [True, None], "c": pd.array(["x", None], dtype="string")})
    assert conform(strings, schema)["c"].dtype == object
    assert conform(strings, schema)["c"].tolist() == ["x", None]


def test_conformed_data_conforms_again_unchanged() -> None:
    once = conform(rows(), declared())
    pd.testing.assert_frame_equal(conform(once, declared()), once)


def test_inferred_schemas_accept_their_own_rows() -> None:
    frames = [
        pd.DataFrame({"g": ["a", " b"], "n": [1, 2], "f": [True, None]}, dtype=object),
        pd.DataFrame({"g": pd.Categorical(["c", None]), "n": [3, None], "f": [False, True]}),
    ]
    schema = infer_schema(frames)
    for frame in frames:
        conform(frame, schema)


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        (
            "sex",
            ["F", SECRET, "M", SECRET],
            "column 'sex': 2 rows (first: data row 2) not among the declared levels ['F', 'M']",
        ),
        (
            "icu",
            [True, False, SECRET, None],
            "column 'icu': 1 row (first: data row 3) not true/false (or 1/0, yes/no)",
        ),
        (
            "icu",
            [1, 2, 0, 1],
            "column 'icu': 1 row (first: data row 2) not true/false (or 1/0, yes/no)",
        ),
        (
            "age",
            [3, 45, SECRET, 7],
            "column 'age': 1 row (first: data row 3) not numeric in a integer column",
        ),
        ("age", [3, 45.5, 7, 8], "column 'age': 1 row (first: data row 2) not whole numbers"),
        (
            "age",
            [-1, 45, -2, 8],
            "column 'age': 2 rows (first: data row 1) below the declared minimum 0",
        ),
        (
            "age",
            [1, 45, 7, 121],
            "column 'age': 1 row (first: data row 4) above the declared maximum 120",
        ),
        (
            "weight",
            [14.5, SECRET, 70, 1],
            "column 'weight': 1 row (first: data row 2) not numeric in a float column",
        ),
    ],
)
def test_each_refusal_names_the_column_and_rows_never_a_value(
    column: str, values: list[object], message: str
) -> None:
    frame = rows().assign(**{column: values}).set_axis([7, 3, 9, 1])  # positions, not labels
    with pytest.raises(DataInvalid) as caught:
        conform(frame, declared())
    assert caught.value.message == message  # the whole message: no value in it
    assert caught.value.details == {"column": column}
    assert SECRET not in str(caught.value) and SECRET not in str(caught.value.details)


def test_bounds_are_checked_only_when_asked() -> None:
    frame = rows().assign(age=[-5, 200, None, 3])
    with pytest.raises(DataInvalid, match="below the declared minimum"):
        conform(frame, declared())
    typed = conform(frame, declared(), check_bounds=False)
    assert typed["age"].tolist() == [-5, 200, pd.NA, 3]


def test_unknown_and_missing_columns() -> None:
    with pytest.raises(DataInvalid, match=r"^unknown column 'bmi'$"):
        conform(rows(), declared(), ["sex", "bmi"])
    with pytest.raises(
        DataInvalid, match=r"^declared column\(s\) missing from the data: icu, age$"
    ) as caught:
        conform(rows().drop(columns=["icu", "age"]), declared())
    assert caught.value.details == {"columns": ["icu", "age"]}


def test_conform_raises_the_callers_error_class() -> None:
    broken = rows().assign(sex=[SECRET] * 4)
    with pytest.raises(QueryInvalid, match="not among the declared levels"):
        conform(broken, declared(), error=QueryInvalid)
    with pytest.raises(InvalidRequest, match="not among the declared levels"):
        conform(broken, declared(), error=InvalidRequest)


def test_no_rows_conform_to_empty_typed_columns() -> None:
    typed = conform(rows().iloc[:0], declared())
    assert len(typed) == 0
    assert typed.dtypes.astype(str).tolist() == ["object", "boolean", "Int64", "float64"]


def test_column_names_as_data_files_have_them_are_kept() -> None:
    frame = pd.DataFrame({"Age (years)": [1, 2], "weight kg": [3.5, 4.0]})
    schema = infer_schema([frame])
    assert schema.names == ["Age (years)", "weight kg"]
    assert list(conform(frame, schema).columns) == ["Age (years)", "weight kg"]
