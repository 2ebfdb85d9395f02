"""`benchmarks/statistics.py --quick` runs end to end and writes the JSON it documents.

It runs the real protocol (party processes over TLS) and the naive record-level baseline at
1 000 rows with 3 parties. Timings are not asserted; shapes and the secure results' agreement
with their plaintext twins are: exactly the cell-key perturbed result of `reference_parties`
for count, mean and quantile (and a perturbation within the documented bounds of the exact
answer), the pooled reference within 1e-6 for the regression and Kaplan-Meier.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a benchmark smoke run: make test runs it, make test-fast does not

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "statistics.py"
QUICK = {"count", "mean", "quantile", "linear_regression", "kaplan_meier"}
CELL_KEY = {"count", "mean", "quantile"}  # the exact mode perturbs them (docs/disclosure.md)
# a cell-key pseudo-row on the Gram matrix; Kaplan–Meier's curves from perturbed node sums (the
# log-rank statistic rounded to 2**-48)
MODELS = {"linear_regression", "kaplan_meier"}
CRP_RANGE = 500.0  # the quantile's column, crp, is declared on [0, 500]


def test_quick_mode_writes_the_table_as_json(tmp_path: Path) -> None:
    out = tmp_path / "statistics.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "max rel err" in done.stdout and "naive baseline" in done.stdout
    assert "perturbation" in done.stdout and "MISMATCH" not in done.stdout
    report = json.loads(out.read_text())

    assert set(report) >= {"machine", "seed", "repeat", "targets", "skipped", "rows", "naive"}
    assert report["twin_tolerance"] == {"cell-key": 0.0, "model": 1e-5, "pooled": 1e-6}
    assert set(report["perturbed_statistics"]) >= CELL_KEY
    assert report["naive_bits"] == 96
    ran = {row["statistic"] for row in report["rows"]}
    assert ran | set(report["skipped"]) == QUICK
    for row in report["rows"]:
        assert (row["parties"], row["rows"]) == (3, 1000)
        assert sum(row["rows_per_party"]) == 1000
        assert len(set(row["rows_per_party"])) == 3  # split unevenly
        assert row["secure_s"] > 0 and row["reference_s"] > 0
        assert row["ratio"] == row["secure_s"] / row["reference_s"]
        assert row["target_s"] is None and row["target_met"] is None  # targets: 100 k, 5 parties
        assert row["matches"], (row["statistic"], row["max_rel_error"], row["error_at"])
        if row["statistic"] in CELL_KEY:  # exactly the plaintext twin's perturbed numbers
            assert row["twin"] == "cell-key" and row["max_rel_error"] == 0
            assert row["perturbation_rel_error"] >= 0 and row["perturbation_abs"] >= 0
        elif row["statistic"] in MODELS:  # the perturbed model, rounded to 25 bits
            assert row["twin"] == "model" and 0 <= row["max_rel_error"] <= 1e-5
            assert row["perturbation_rel_error"] > 0
        else:  # no twin: the pooled reference, as before
            assert row["twin"] == "pooled" and 0 <= row["max_rel_error"] <= 1e-6
            assert row["perturbation_rel_error"] is None and row["perturbation_at"] is None

    # the perturbation against the exact answer: within the documented bounds, and there
    by_name = {row["statistic"]: row for row in report["rows"]}
    count = by_name["count"]
    assert count["perturbation_abs"] <= 3  # a count moves by at most ±3
    assert count["perturbation_at"] in ("", "n")
    mean = by_name["mean"]
    assert mean["perturbation_at"] == "mean" and 0 < mean["perturbation_rel_error"] < 0.01
    quantile = by_name["quantile"]
    assert quantile["perturbation_at"].startswith("quantiles.")
    assert 0 < quantile["perturbation_abs"] <= 0.25 * CRP_RANGE + 2**-16  # noise · declared range

    naive = {entry["kind"]: entry for entry in report["naive"]}
    assert set(naive) == {"mean", "ols"}
    for entry in naive.values():
        assert (entry["parties"], entry["rows"]) == (3, 1000)
        assert entry["naive_wall_s"] >= entry["naive_protocol_s"] >= entry["naive_input_s"] > 0
        assert entry["summary_s"] > 0
        assert entry["naive_bytes_sent"] > 0
        assert entry["naive_max_rel_error"] < 1e-6  # 96-bit secure fixed point
