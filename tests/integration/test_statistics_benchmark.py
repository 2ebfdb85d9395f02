"""`benchmarks/statistics.py --quick` runs end to end and writes the JSON it documents.

It runs the real protocol (party processes over TLS) and the naive record-level baseline at
1 000 rows with 3 parties. Timings are not asserted; shapes and the secure results' agreement
with the plaintext reference are.
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
    report = json.loads(out.read_text())

    assert set(report) >= {"machine", "seed", "repeat", "targets", "skipped", "rows", "naive"}
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
        assert 0 <= row["max_rel_error"] <= 1e-6

    naive = {entry["kind"]: entry for entry in report["naive"]}
    assert set(naive) == {"mean", "ols"}
    for entry in naive.values():
        assert (entry["parties"], entry["rows"]) == (3, 1000)
        assert entry["naive_wall_s"] >= entry["naive_protocol_s"] >= entry["naive_input_s"] > 0
        assert entry["summary_s"] > 0
        assert entry["naive_bytes_sent"] > 0
        assert entry["naive_max_rel_error"] < 1e-6  # 96-bit secure fixed point
