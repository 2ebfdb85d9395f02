"""`benchmarks/synth.py --smoke` runs end to end and writes the JSON it documents.

Every generator on gbsg2 with one seed, ctgan/tvae for 2 epochs and mst with 100 iterations
(about a minute on two cores). Timings and scores are not asserted beyond their ranges; the
shape of the report and the target lines are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a benchmark smoke run: make test runs it, make test-fast does not

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "synth.py"
GENERATORS = {
    "cart",
    "gaussian_copula",
    "ctgan",
    "tvae",
    "mst_e1",
    "mst_e5",
    "sdv_gaussian_copula",
}


def test_smoke_mode_benchmarks_every_generator(tmp_path: Path) -> None:
    out = tmp_path / "synth.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARK), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for line in ("target (a)", "target (b)", "target (c)"):
        assert line in done.stdout
    assert "| generator |" in done.stdout and "### gbsg2" in done.stdout
    assert out.with_suffix(".md").exists()

    report = json.loads(out.read_text())
    assert set(report) >= {"code", "machine", "config", "tables", "summary", "runs", "targets"}
    assert report["partial"] is False
    assert len(report["code"]["start"]["synth_sha256"]) == 64
    assert report["config"]["smoke"] is True
    assert report["config"]["default_generator"] == "cart"
    assert set(report["tables"]) == {"gbsg2"}

    rows = {(r["table"], r["generator"]): r for r in report["summary"]}
    assert set(rows) == {("gbsg2", g) for g in GENERATORS}
    for (_, generator), row in rows.items():
        assert row["succeeded"] == row["runs"] == 1, (generator, row["errors"])
        m = row["metrics"]
        assert m["fit_s"]["mean"] > 0
        assert 0 <= m["fidelity"]["mean"] <= 1
        if generator != "sdv_gaussian_copula":  # the baseline reports fit and fidelity only
            assert 0 <= m["mia_auc"]["mean"] <= 1
            assert m["dcr_holdout_median"]["mean"] >= 0
            assert m["tstr"] is not None and m["trtr"] is not None
    assert abs(rows[("gbsg2", "mst_e1")]["metrics"]["epsilon"]["mean"] - 1.0) < 1e-6
    assert abs(rows[("gbsg2", "mst_e5")]["metrics"]["epsilon"]["mean"] - 5.0) < 1e-6
    for generator in ("ctgan", "tvae"):
        assert rows[("gbsg2", generator)]["device"] in (["cpu"], ["cuda"])

    assert len(report["runs"]) == len(GENERATORS)
    for key in ("a", "b", "c"):
        target = report["targets"][key]
        assert target["met"] in (True, False)
        assert target["line"] in done.stdout
    assert set(report["targets"]["b"]["fidelity"]) == {"gbsg2"}
    assert set(report["targets"]["c"]["comparisons"]) == {"gbsg2"}


def test_the_evaluation_timing_benchmark_prints_its_table(tmp_path: Path) -> None:
    out = tmp_path / "evaluate.json"
    script = str(BENCHMARK.with_name("synth_evaluate.py"))
    done = subprocess.run(
        [sys.executable, script, "--rows", "400,800", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| training rows |" in done.stdout and "| 800 |" in done.stdout
    results = json.loads(out.read_text())["results"]
    assert [r["rows"] for r in results] == [400, 800]
    for r in results:
        assert set(r["parts"]) == {"fidelity", "utility", "privacy"}
        assert r["sizes"]["fidelity_rows"] == [r["rows"], r["rows"]]
        assert 0 <= r["fidelity"] <= 1
    bad = subprocess.run(
        [sys.executable, script, "--rows", "ten"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "comma-separated whole numbers" in bad.stderr
