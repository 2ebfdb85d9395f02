"""`tessera demo` as a new user runs it: exits 0, every pooled result matches plaintext, every
differentially private one lies within its noise, the study's remaining budget is shown, and
each hospital publishes a synthetic release approved by the demo steward, who says so."""

from __future__ import annotations

import subprocess
import sys

import pytest

from demo.scenario import DP_EPSILON_BUDGET, DP_EPSILON_TOTAL, QUERIES, show
from tessera.privacy import epsilon_of, largest_epsilon, query_rho, rho_budget

pytestmark = pytest.mark.slow  # the demo: make test runs it, make test-fast does not


def test_the_demo_runs_end_to_end_and_everything_matches() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "demo"],
        capture_output=True,
        text=True,
        timeout=480,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "MISMATCH" not in out
    assert out.count("succeeded") == len(QUERIES)
    assert "all pooled results match" in out
    assert "suppressed" in out, "the histogram and group queries show suppression"
    assert "every process stopped" in out
    dp_queries = [body for _, body in QUERIES if "dp" in body]
    assert dp_queries, "the demo shows differential privacy"
    assert "within noise (|error| = " in out and "BEYOND" not in out
    assert "== Privacy budget of study #1 on paediatric_cohort" in out
    # zCDP: each dp query costs rho = epsilon^2 / 2 of every hospital's allocation to the study
    # and of its total over all studies, both limits converted at delta 1e-6; what the study can
    # still spend is the largest epsilon one more query may have at every hospital
    rho = sum(query_rho(body["dp"]["epsilon"]) for body in dp_queries)
    room = min(rho_budget(DP_EPSILON_BUDGET, None), rho_budget(DP_EPSILON_TOTAL, None)) - rho
    left = largest_epsilon(room)
    assert f"the study can still spend epsilon {show(left)} on it" in out
    spent = show(epsilon_of(rho, None))
    for hospital in ("hospital_a", "hospital_b", "hospital_c"):
        row = (
            f"   {hospital:<11}  {spent:>6}  {show(DP_EPSILON_BUDGET):>6}  {show(left):>6}  "
            f"{spent} of {show(DP_EPSILON_TOTAL)} spent"
        )
        assert row in out.splitlines(), row
    for hospital in ("hospital_a", "hospital_b", "hospital_c"):
        assert hospital in out
        assert f"{hospital}: gates passed; auto-approved by the demo steward" in out
        assert f"from {hospital}: paediatric_cohort, 500 synthetic rows" in out
    assert out.count("dcr_not_below_holdout passed") == 3
    assert out.count("downloaded as CSV:") == 3 and "sha256 matches" in out
    assert "DIFFERS" not in out and "no release" not in out
    assert "3 synthetic releases published" in out
