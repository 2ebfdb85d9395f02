"""Local summaries equal plaintext aggregates of the party's own rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from smpc import local_summary, parse_query, prepare
from smpc.encoding import decode_moment, encode_moment
from smpc.frames import infer_schema, select
from tessera.errors import QueryInvalid
from tessera.schemas import DatasetSchema


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = 500
    out = pd.DataFrame(
        {
            "x": rng.normal(10, 3, n),
            "age": rng.integers(0, 200, n),
            "sex": rng.choice(["F", "M"], n),
            "dx": rng.choice(["a", "b", "c"], n),
            "flag": rng.random(n) < 0.3,
        }
    )
    out.loc[::17, "x"] = np.nan
    return out


def test_grouped_counts_and_moments_match_pandas(frame: pd.DataFrame) -> None:
    schema = infer_schema([frame])
    query = prepare(
        {
            "statistic": "variance",
            "dataset": "d",
            "column": "x",
            "group_by": ["sex", "dx"],
            "where": [["age", ">=", 24]],
        },
        schema,
    )
    summary = local_summary(query, frame, schema)
    rows = frame[(frame.age >= 24) & frame.x.notna()]
    expected = rows.groupby(["sex", "dx"])["x"]
    cells = [(s, d) for s in ["F", "M"] for d in ["a", "b", "c"]]
    assert summary.counts == [int(expected.size().get(c, 0)) for c in cells]
    for c, key in enumerate(cells):
        values = rows.set_index(["sex", "dx"]).sort_index().loc[key, "x"]
        assert float(decode_moment(summary.moments["sum"][c])) == pytest.approx(
            values.sum(), rel=1e-12
        )
        assert float(decode_moment(summary.moments["sumsq"][c])) == pytest.approx(
            (values**2).sum(), rel=1e-12
        )


def test_histogram_cells_follow_numpy(frame: pd.DataFrame) -> None:
    schema = infer_schema([frame])
    bins = [0, 12, 24.5, 100, 199]  # 199 is the maximum possible age: the last bin is closed
    query = prepare(
        {"statistic": "histogram", "dataset": "d", "column": "age", "bins": bins}, schema
    )
    summary = local_summary(query, frame, schema)
    assert summary.counts == np.histogram(frame.age, bins=bins)[0].tolist()


def test_extremes_are_local_fixed_point_and_empty_cells_send_a_sentinel(
    frame: pd.DataFrame,
) -> None:
    raw = infer_schema([frame]).model_dump()
    for column in raw["columns"]:  # an extreme is moved by noise × the declared range
        if column["name"] == "x":
            column["min"], column["max"] = float(frame.x.min()) - 1, float(frame.x.max()) + 1
    schema = DatasetSchema.model_validate(raw)
    query = prepare(
        {
            "statistic": "min",
            "dataset": "d",
            "column": "x",
            "group_by": ["flag"],
            "where": [["sex", "==", "F"], ["flag", "==", True]],
        },
        schema,
    )
    summary = local_summary(query, frame, schema)
    rows = frame[(frame.sex == "F") & frame.flag & frame.x.notna()].x
    assert summary.counts == [0, len(rows)]
    # the local extremes travel as fixed-point moments; an empty cell sends a sentinel beyond
    # every encodable value (so it never wins the secure comparison)
    # an empty cell sends the declared maximum (for a minimum: it never wins)
    high = schema.column("x").max
    assert summary.vectors["extreme"] == [encode_moment(high), encode_moment(rows.min())]
    assert float(decode_moment(summary.vectors["extreme"][1])) == pytest.approx(
        rows.min(), abs=1e-12
    )
    # the cell's largest |x| (for the noise's scale), rounded up to 1/256; 0 for an empty cell
    top = summary.vectors["largest"]
    assert top[0] == 0 and rows.abs().max() <= top[1] / 256 < rows.abs().max() + 1 / 256
    # two key sums per cell (fields A then B), each below 2**24; an empty cell's are 0
    keys = summary.vectors["keys"]
    assert len(keys) == 4 and keys[0] == keys[2] == 0
    assert all(0 <= k < 2**24 for k in keys)


def test_where_filters_match_pandas_expressions(frame: pd.DataFrame) -> None:
    schema = infer_schema([frame])
    cases = [
        ([["age", "<", 50]], frame.age < 50),
        ([["age", "<=", 50], ["sex", "!=", "M"]], (frame.age <= 50) & (frame.sex != "M")),
        ([["dx", "in", ["a", "c"]]], frame.dx.isin(["a", "c"])),
        ([["x", ">", 10]], frame.x > 10),
        ([["flag", "==", False]], ~frame.flag),
        ([["x", "!=", 10]], frame.x.notna() & (frame.x != 10)),
    ]
    from smpc.frames import conform

    data = conform(frame, schema, list(frame.columns))
    for where, expected in cases:
        query = parse_query({"statistic": "count", "dataset": "d", "where": where})
        assert select(data, query.where, schema).tolist() == expected.tolist(), where


def test_a_column_of_the_wrong_type_is_a_clear_error(frame: pd.DataFrame) -> None:
    schema = infer_schema([frame])
    broken = frame.assign(x=["n/a"] * len(frame))
    query = prepare({"statistic": "mean", "dataset": "d", "column": "x"}, schema)
    message = r"column 'x': 500 rows \(first: data row 1\) not numeric in a float column"
    with pytest.raises(QueryInvalid, match=message):
        local_summary(query, broken, schema)


def test_sums_beyond_the_fixed_point_range_are_refused(frame: pd.DataFrame) -> None:
    schema = infer_schema([frame])
    huge = frame.assign(x=frame.x * 1e13)
    query = prepare({"statistic": "variance", "dataset": "d", "column": "x"}, schema)
    with pytest.raises(QueryInvalid, match="fixed-point range"):
        local_summary(query, huge, schema)
    assert math.isfinite(huge.x.sum())
