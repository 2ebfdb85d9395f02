"""`tessera simulate` from the shell: results as JSON, bad input as one line and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cli.simulate import read_frame
from demo.cohort import HOSPITALS, cohort
from smpc.frames import infer_schema
from smpc.statistics import reference_parties


def tessera(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("sites")
    paths = []
    for i, hospital in enumerate(HOSPITALS):
        frame = cohort(hospital)
        path = root / f"{hospital.name}.{'parquet' if i == 1 else 'csv'}"
        if i == 1:
            frame.to_parquet(path)
        else:
            frame.to_csv(path, index=False)
        paths.append(path)
    return paths


def write_query(tmp_path: Path, query: object) -> Path:
    path = tmp_path / "query.json"
    path.write_text(json.dumps(query))
    return path


def test_simulate_prints_the_pooled_result(tmp_path: Path, files: list[Path]) -> None:
    query = {
        "statistic": "mean",
        "dataset": "demo",
        "column": "weight_kg",
        "where": [["age_months", ">=", 24]],
        "group_by": ["sex"],
    }
    done = tessera("simulate", write_query(tmp_path, query), *files)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # the exact mode's result (cell-key perturbation), integer for integer, from the same files
    frames = [read_frame(path) for path in files]
    assert result == reference_parties(query, frames, infer_schema(frames))
    # within the perturbation of pandas: n ± 3, each mean's n'·mean' within 0.25·max|x| of Σx
    pooled = pd.concat([cohort(h) for h in HOSPITALS])
    rows = pooled[(pooled.age_months >= 24) & pooled.weight_kg.notna()]
    assert abs(result["n"] - len(rows)) <= 3
    for entry in result["groups"]:
        group = rows[rows.sex == entry["group"]["sex"]].weight_kg
        assert abs(entry["n"] - len(group)) <= 3
        bound = 0.25 * (group.abs().max() + 1 / 256) + 2**-16
        assert abs(entry["mean"] * entry["n"] - group.sum()) <= bound + 1e-9
        assert entry["mean"] == pytest.approx(group.mean(), rel=0.01)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"statistic": "mean", "dataset": "demo", "column": "bmi"}, "unknown column 'bmi'"),
        ({"statistic": "mean", "dataset": "demo", "column": "sex"}, "'sex' is categorical"),
        ({"statistic": "mode", "dataset": "demo"}, "unknown statistic 'mode'"),
        (
            {"statistic": "count", "dataset": "demo", "where": [["age_months", ">", "x"]]},
            "compares with numbers",
        ),
        (
            {"statistic": "quantile", "dataset": "demo", "column": "age_months", "q": [1.5]},
            "must lie in [0, 1]",
        ),
    ],
)
def test_bad_queries_exit_2_with_one_line(
    tmp_path: Path, files: list[Path], query: object, message: str
) -> None:
    done = tessera("simulate", write_query(tmp_path, query), *files)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_bad_files_exit_2(tmp_path: Path, files: list[Path]) -> None:
    good = write_query(tmp_path, {"statistic": "count", "dataset": "demo"})
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    cases = [
        (("simulate", broken, *files), "not valid JSON"),
        (("simulate", good, tmp_path / "missing.csv", *files[1:]), "data file not found"),
        (("simulate", good, *files[:2]), "at least 3 parties"),
    ]
    for args, message in cases:
        done = tessera(*args)
        assert done.returncode == 2, args
        assert message in done.stderr and "Traceback" not in done.stderr


def test_help_is_there() -> None:
    done = tessera("simulate", "--help")
    assert done.returncode == 0 and "one party process per data file" in done.stdout
