"""`tessera synth fit` from the shell: a synthetic table, its report and JSON, progress on
stderr; bad input as one line on stderr and exit code 2, with nothing written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from demo.cohort import HOSPITALS, cohort, schema


def tessera(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "cohort.csv"
    cohort(HOSPITALS[2]).to_csv(path, index=False)
    return path


def test_fit_writes_the_table_the_report_and_its_json(data: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "synthetic.parquet", tmp_path / "report.html"
    done = tessera(
        "synth",
        "fit",
        data,
        "--rows",
        "300",
        "--out",
        out,
        "--report",
        report,
        "--target",
        "icu_admission",
        "--seed",
        "4",
        "--save-model",
        tmp_path / "m.zip",
    )
    assert done.returncode == 0, done.stderr
    synthetic = pd.read_parquet(out)
    assert len(synthetic) == 300 and list(synthetic.columns) == schema().names
    assert re.search(r"^generator +cart \(Apache-2.0\)$", done.stdout, re.M)
    assert "TSTR" in done.stdout and "exact copies" in done.stdout
    assert "training on 360, holding out 90" in done.stderr
    assert "training: column 8/8: readmitted_30d" in done.stderr
    document = json.loads(report.with_suffix(".json").read_text())
    assert document["card"]["generator"] == "cart" and document["card"]["rows"] == 300
    assert document["evaluation"]["utility"]["target"] == "icu_admission"
    assert report.read_text().startswith("<!doctype html>")
    assert (tmp_path / "m.zip").stat().st_size > 0


@pytest.mark.slow  # trains mst in a fresh process
def test_dp_fit_with_a_declared_schema_reports_its_epsilon(data: Path, tmp_path: Path) -> None:
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(schema().model_dump_json())
    done = tessera(
        "synth",
        "fit",
        data,
        "--generator",
        "mst",
        "--epsilon",
        "2",
        "--schema",
        schema_file,
        "--out",
        tmp_path / "dp.csv",
        "--json",
        "--param",
        "iters=100",
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["card"]["epsilon"] == pytest.approx(2.0) and answer["card"]["delta"] == 1e-6
    assert 0 <= answer["evaluation"]["fidelity"]["score"] <= 1
    assert len(pd.read_csv(tmp_path / "dp.csv")) == 450


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--generator", "gan"], "unknown generator 'gan'"),
        (["--target", "nope"], "--target 'nope' is not a column"),
        (["--generator", "mst", "--epsilon", "1"], "mst needs a declared domain"),
        (["--param", "depth"], "--param takes key=value"),
        (["--holdout", "0.9"], "Invalid value for '--holdout'"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    data: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "never.csv"
    done = tessera("synth", "fit", data, "--out", out, *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    done = tessera("synth", "fit", tmp_path / "none.csv", "--out", tmp_path / "o.csv")
    assert done.returncode == 2 and "Traceback" not in done.stderr
