"""`benchmarks/peer_checks.py` runs end to end over TLS with node-key certificates and prints
its table (timings are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a benchmark smoke run: make test runs it, make test-fast does not

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "peer_checks.py"


def test_one_run_of_each_statistic_and_party_count() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARK), "--repeat", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    medians = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(medians) == {"count/3", "count/5", "mean/3", "mean/5"}
    for protocol, wall in medians.values():
        assert 0 < protocol <= wall
