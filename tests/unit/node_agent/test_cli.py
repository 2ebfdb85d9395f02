"""`tessera node check` and `--help`: local checks, one-line errors, nothing sent."""

from __future__ import annotations

import subprocess
import sys

import pytest


def node(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tessera.cli.main", "node", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_reports_every_dataset_without_a_coordinator(configs) -> None:
    configs.cohort().to_csv(configs.root / "cohort.csv", index=False)
    configs.cohort().to_parquet(configs.root / "labs.parquet", index=False)
    text = configs.node_toml(
        configs.dataset() + configs.dataset("parquet", 'path = "labs.parquet"', name="labs"),
        policy="min_count = 9",
    )
    # Port 9 (discard) on loopback: nothing answers there, and check must not need it.
    text = text.replace("http://127.0.0.1:8000", "http://127.0.0.1:9")
    done = node("check", "--config", str(configs.write(text)))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("cohort: 6 rows, 4 columns, 2 missing values; schema ok (csv file")
    assert lines[1].startswith("labs: 6 rows, 4 columns, 2 missing values; schema ok (parquet")
    assert lines[2] == "policy: min_count 9, statistics: all"


def test_check_names_the_broken_column_in_one_line(configs) -> None:
    frame = configs.cohort()
    frame.loc[4, "sex"] = "unknown"
    frame.to_csv(configs.root / "cohort.csv", index=False)
    done = node("check", "--config", str(configs.write(configs.node_toml(configs.dataset()))))
    assert done.returncode == 2
    assert done.stderr == (
        "error: dataset 'cohort', column 'sex': 1 row (first: data row 5) not among the "
        "declared levels ['F', 'M']\n"
    )
    assert "unknown" not in done.stderr


@pytest.mark.parametrize("command", [[], ["run"], ["check"], ["audit-verify"]])
def test_help(command) -> None:
    done = node(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert "--config" in done.stdout or "Commands" in done.stdout
