"""`benchmarks/pooled_synth.py --smoke` runs end to end: one uneven split of gbsg2 over three
parties at epsilon 1 (pooled, central and the sites' own MST) and the measurement's cost at
1 000 rows; it prints both tables and writes the JSON. Scores and timings are not asserted
beyond their ranges."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "pooled_synth.py"


def test_smoke_mode_prints_both_tables(tmp_path: Path) -> None:
    out = tmp_path / "pooled.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARK), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "## Fidelity: pooled MST vs central MST vs the sites' own" in done.stdout
    assert "## The pooled measurement's cost" in done.stdout
    report = json.loads(out.read_text())
    (row,) = report["quality"]
    assert (row["table"], row["parties"], row["epsilon"]) == ("gbsg2", 3, 1.0)
    for key in ("pooled", "central", "sites"):
        assert 0.3 < row[key] <= 1.0
    assert row["pooled_epsilon"] <= 1.0 + 1e-9
    (timed,) = report["timing"]
    assert (timed["rows"], timed["parties"]) == (1000, 3)
    assert timed["cells"] > 0 and timed["rounds"] == 4 and timed["measure_seconds"] > 0
