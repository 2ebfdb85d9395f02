"""Data sources: CSV, Parquet and SQL tables load typed, break loudly, and are read once."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import sqlalchemy

from node_agent.datasets import DatasetCache, load
from tessera.errors import ConfigInvalid

WHERE = {
    "csv": 'path = "cohort.csv"',
    "parquet": 'path = "cohort.parquet"',
    "sql": 'url = "sqlite:///cohort.db"\ntable = "admissions"',
}


def write_source(configs, frame: pd.DataFrame, source: str) -> str:
    """The rows as a CSV file, a Parquet file or an SQLite table; returns its config lines."""
    if source == "csv":
        frame.to_csv(configs.root / "cohort.csv", index=False)
    elif source == "parquet":
        frame.to_parquet(configs.root / "cohort.parquet", index=False)
    else:
        engine = sqlalchemy.create_engine(f"sqlite:///{configs.root / 'cohort.db'}")
        with engine.begin() as conn:
            frame.to_sql("admissions", conn, index=False, if_exists="replace")
        engine.dispose()
    return WHERE[source]


def dataset(configs, source: str, where: str, columns: str | None = None):  # type: ignore[no-untyped-def]
    text = configs.node_toml(configs.dataset(source, where, columns=columns or configs.columns))
    return configs.settings(text).datasets[0]


@pytest.mark.parametrize("source", ["csv", "parquet", "sql"])
def test_each_source_loads_the_declared_columns_typed(configs, source) -> None:
    where = write_source(configs, configs.cohort(), source)
    frame = load(dataset(configs, source, where))

    assert list(frame.columns) == ["age", "sex", "weight", "icu"]  # "name" is never kept
    assert str(frame["age"].dtype) == "Int64"
    assert frame["sex"].tolist() == ["F", "M", "F", None, "M", "F"]
    assert str(frame["weight"].dtype) == "float64"
    assert frame["weight"].isna().sum() == 1
    assert str(frame["icu"].dtype) == "boolean"
    assert frame["icu"].tolist() == [True, False, False, True, False, False]
    assert frame["age"].sum() == 137


def test_the_local_summary_works_on_a_loaded_frame(configs) -> None:
    from smpc import local_summary, prepare, reference

    where = write_source(configs, configs.cohort(), "csv")
    ds = dataset(configs, "csv", where)
    frame = load(ds)
    query = prepare({"statistic": "mean", "dataset": "cohort", "column": "weight"}, ds.schema_)
    summary = local_summary(query, frame, ds.schema_)
    assert summary.counts == [5]
    expected = reference(query, configs.cohort(), ds.schema_)
    assert expected["mean"] == pytest.approx(configs.cohort()["weight"].mean())


def test_categorical_codes_keep_their_text(configs) -> None:
    frame = pd.DataFrame({"ward": ["01", "02", "10", None]})
    frame.to_csv(configs.root / "w.csv", index=False)
    columns = 'columns = [{ name = "ward", type = "categorical", levels = ["01", "02", "10"] }]'
    loaded = load(dataset(configs, "csv", 'path = "w.csv"', columns))
    assert loaded["ward"].tolist() == ["01", "02", "10", None]


def test_booleans_in_words_and_numbers(configs) -> None:
    frame = pd.DataFrame({"icu": ["yes", "No", "TRUE", "false", "1", "0", None]})
    frame.to_csv(configs.root / "b.csv", index=False)
    loaded = load(
        dataset(configs, "csv", 'path = "b.csv"', 'columns = [{name="icu", type="boolean"}]')
    )
    assert loaded["icu"].tolist()[:6] == [True, False, True, False, True, False]
    assert loaded["icu"].isna().tolist()[-1]


@pytest.mark.parametrize(
    ("column", "values", "expected"),
    [
        (
            "sex",
            ["F", "M", "X", "F", "x", "M"],
            "column 'sex': 2 rows (first: data row 3) not among the declared levels ['F', 'M']",
        ),
        (
            "age",
            [3, 10, 450, 7, 60, 12],
            "column 'age': 1 row (first: data row 3) above the declared maximum 120",
        ),
        (
            "age",
            [3, -1, 45, 7, 60, 12],
            "column 'age': 1 row (first: data row 2) below the declared minimum 0",
        ),
        (
            "age",
            [3, 10, 45.5, 7, 60, 12],
            "column 'age': 1 row (first: data row 3) not whole numbers",
        ),
        (
            "weight",
            [14.5, "heavy", 70, 1, 82.5, 41],
            "column 'weight': 1 row (first: data row 2) not numeric in a float column",
        ),
        (
            "icu",
            [True, False, "maybe", True, False, False],
            "column 'icu': 1 row (first: data row 3) not true/false (or 1/0, yes/no)",
        ),
    ],
)
@pytest.mark.parametrize("source", ["csv", "parquet", "sql"])
def test_schema_violations_name_the_column_never_the_value(
    configs, source, column, values, expected
) -> None:
    frame = configs.cohort()
    mixed = any(isinstance(v, str) for v in values) and column != "sex"
    frame[column] = [str(v) for v in values] if mixed else values  # one type per column
    where = write_source(configs, frame, source)
    with pytest.raises(ConfigInvalid) as caught:
        load(dataset(configs, source, where))
    message = caught.value.message
    assert message == f"dataset 'cohort', {expected}"
    assert caught.value.details == {"dataset": "cohort", "column": column}
    for value in values:
        if isinstance(value, str) and value not in ("F", "M"):
            assert repr(value) not in message and f" {value} " not in message


def test_missing_columns_are_listed(configs) -> None:
    configs.cohort().drop(columns=["sex", "icu"]).to_csv(configs.root / "c.csv", index=False)
    with pytest.raises(
        ConfigInvalid, match=r"declared column\(s\) missing from the data: sex, icu"
    ):
        load(dataset(configs, "csv", 'path = "c.csv"'))


def test_unreadable_sources(configs) -> None:
    with pytest.raises(ConfigInvalid, match=r"dataset 'cohort': file not found: .*absent\.csv"):
        load(dataset(configs, "csv", 'path = "absent.csv"'))
    write_source(configs, configs.cohort(), "sql")
    with pytest.raises(ConfigInvalid, match="dataset 'cohort': no table 'nope'"):
        load(dataset(configs, "sql", 'url = "sqlite:///cohort.db"\ntable = "nope"'))
    (configs.root / "bad.parquet").write_text("not parquet")
    with pytest.raises(ConfigInvalid, match="cannot read its parquet source"):
        load(dataset(configs, "parquet", 'path = "bad.parquet"'))


def test_the_cache_reads_a_file_once_until_it_changes(configs) -> None:
    where = write_source(configs, configs.cohort(), "csv")
    ds = dataset(configs, "csv", where)
    cache = DatasetCache()
    first = cache.get(ds)
    for _ in range(5):
        assert cache.get(ds) is first
    assert cache.reads == 1

    bigger = pd.concat([configs.cohort()] * 2)
    bigger.to_csv(configs.root / "cohort.csv", index=False)
    stat = os.stat(configs.root / "cohort.csv")
    os.utime(configs.root / "cohort.csv", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert len(cache.get(ds)) == 12
    assert cache.reads == 2


def test_the_cache_rereads_an_sql_table_after_its_reload_interval(configs) -> None:
    where = write_source(configs, configs.cohort(), "sql") + "\nreload_after_s = 60"
    ds = dataset(configs, "sql", where)
    now = [1000.0]
    cache = DatasetCache(clock=lambda: now[0])
    cache.get(ds)
    now[0] += 59
    cache.get(ds)
    assert cache.reads == 1
    now[0] += 2
    cache.get(ds)
    assert cache.reads == 2


def test_a_broken_file_is_not_cached_as_good(configs) -> None:
    where = write_source(configs, configs.cohort(), "csv")
    ds = dataset(configs, "csv", where)
    cache = DatasetCache()
    cache.get(ds)
    broken = configs.cohort()
    broken.loc[0, "sex"] = "U"
    broken.to_csv(configs.root / "cohort.csv", index=False)
    stat = os.stat(configs.root / "cohort.csv")
    os.utime(configs.root / "cohort.csv", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(ConfigInvalid, match="column 'sex'"):
        cache.get(ds)
