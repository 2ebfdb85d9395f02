"""`tessera demo` as a new user runs it: exits 0, every pooled result matches plaintext, every
differentially private one lies within its noise, the study's remaining budget is shown, each
hospital publishes a synthetic release approved by the demo steward, who says so, and one
pooled synthetic cohort of all three hospitals is published, approved at each."""

from __future__ import annotations

import subprocess
import sys

import pytest

from demo.scenario import (
    DP_DELTA_BUDGET,
    DP_EPSILON_BUDGET,
    DP_EPSILON_TOTAL,
    POOLED_SYNTHESIS,
    QUERIES,
    show,
)
from tessera.privacy import ZERO, largest_epsilon, query_rho, rho_budget

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
    # Each hospital admits a charge while basic composition (sum epsilon <= epsilon_L, sum
    # delta <= delta_L) or zCDP (sum rho <= rho_L, a query's rho = epsilon^2 / 2, the limit
    # converted at the delta limit) is within its limit, for the study's allocation
    # (DP_EPSILON_BUDGET) and for the total over all studies (DP_EPSILON_TOTAL) alike.
    assert "basic composition (the sums of epsilon and delta) or" in out
    assert "zCDP (the sum of rho = epsilon^2 / 2;" in out
    epsilons = [body["dp"]["epsilon"] for body in dp_queries]
    spent = sum(epsilons)  # basic composition: 1 + 0.5 = 1.5, delta 0 + 0
    rho = sum(query_rho(e) for e in epsilons)  # zCDP: 1/2 + 1/8 = 0.625
    rho_limit, rho_total = (
        rho_budget(e, DP_DELTA_BUDGET) for e in (DP_EPSILON_BUDGET, DP_EPSILON_TOTAL)
    )
    # what is left is the largest epsilon of one more query, the better of the accountants:
    # basic composition's epsilon_L - sum epsilon, zCDP's sqrt(2 (rho_L - sum rho)) (0 here:
    # rho 0.625 is past both rho 0.17 of epsilon 3 and rho 0.45 of epsilon 5 at delta 1e-5)
    basic_left = DP_EPSILON_BUDGET - spent
    zcdp_left = largest_epsilon(max(ZERO, rho_limit - rho))
    left = max(basic_left, zcdp_left)
    total_left = max(DP_EPSILON_TOTAL - spent, largest_epsilon(max(ZERO, rho_total - rho)))
    assert (spent, rho, left, total_left) == (1.5, 0.625, 1.5, 3.5), "the demo's intent"
    # the study can still spend what every hospital admits of both its limits
    assert f"the study can still spend epsilon {show(min(left, total_left))} on it" in out
    for hospital in ("hospital_a", "hospital_b", "hospital_c"):
        row = (
            f"   {hospital:<11}  {f'{show(spent)} / {show(DP_EPSILON_BUDGET)}':>21}  "
            f"{f'0 / {show(DP_DELTA_BUDGET)}':>19}  "
            f"{f'{show(float(rho))} / {show(float(rho_limit))}':>19}  "
            f"{f'{show(left)} ({show(basic_left)}, {show(zcdp_left)})':<18}  "
            f"epsilon {show(spent)} of {show(DP_EPSILON_TOTAL)} spent, {show(total_left)} left"
        )
        assert row in out.splitlines(), row
    for hospital in ("hospital_a", "hospital_b", "hospital_c"):
        assert hospital in out
        assert f"{hospital}: gates passed; auto-approved by the demo steward" in out
        assert f"from {hospital}: paediatric_cohort, 500 synthetic rows" in out
    assert out.count("dcr_not_below_holdout passed") == 3
    assert out.count("downloaded as CSV:") == 4 and "sha256 matches" in out  # 3 local, 1 pooled
    assert "DIFFERS" not in out and "no release" not in out
    assert "3 synthetic releases published" in out
    # the pooled cohort: measured by MPC over the three, approved at each, one release whose
    # card lists every hospital's own evaluation
    assert "== Pooled synthetic cohort: mst at epsilon 1" in out
    assert "pooled over hospital_a, hospital_b, hospital_c" in out
    assert f"{POOLED_SYNTHESIS['rows']} synthetic rows" in out
    for hospital in ("hospital_a", "hospital_b", "hospital_c"):
        line = next(
            x for x in out.splitlines() if x.startswith(f"   {hospital}  ") and "fidelity" in x
        )
        assert "gates passed; approved by demo-steward" in line
    assert "a pooled synthetic cohort published" in out
