"""Attack 8, budgets: "DP is opt-in per query, so the same count is answered exactly without
dp; the total over studies is off by default, so a new study starts with a fresh budget; DP
synthesis never enters the ledger". Each test plays the attack against the node's own decision
(its policy and ledger, in process) and shows it refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from node_agent.agent import NodeAgent
from node_agent.budget import PrivacyLedger
from node_agent.config import NodeSettings
from node_agent.policy import Policy
from tessera.errors import BudgetExceeded
from tessera.privacy import rho_budget
from tessera.schemas import SynthesisJobOut, SynthesisSpec, TaskOut

COLUMNS = """columns = [
  { name = "age", type = "integer", min = 0, max = 120 },
  { name = "sex", type = "categorical", levels = ["F", "M"] },
]"""


def settings(tmp_path: Path, policy: str) -> NodeSettings:
    (tmp_path / "cohort.csv").write_text("age,sex\n3,F\n10,M\n45,F\n")
    path = tmp_path / "node.toml"
    path.write_text(
        'name = "node-a"\ncoordinator_url = "http://127.0.0.1:8000"\napi_key = "key-123"\n'
        f'mpc_ports = "21000-21009"\nwork_dir = "state"\n[policy]\n{policy}\n\n'
        f'[[datasets]]\nname = "cohort"\nsource = "csv"\npath = "cohort.csv"\n{COLUMNS}\n'
    )
    return NodeSettings.load(path)


def task(query: dict[str, Any], study_id: int = 1) -> TaskOut:
    return TaskOut(
        id=1,
        query_id=1,
        study_id=study_id,
        party_id=0,
        n_parties=3,
        dataset="cohort",
        query={"dataset": "cohort", **query},
        deadline=datetime.now(UTC) + timedelta(seconds=60),
    )


def synthesis(job_id: int, study_id: int = 1, **spec: Any) -> SynthesisJobOut:
    return SynthesisJobOut(
        id=job_id,
        request_id=job_id,
        study_id=study_id,
        requested_by="mallory",
        spec=SynthesisSpec(dataset="cohort", rows=10, **spec),
        deadline=datetime.now(UTC) + timedelta(seconds=60),
    )


class Stub:
    """A coordinator client that is never called (the charge is the node's own)."""

    on_reconnect = None


SAM = "ed25519:82Kfgyj9sP6AzunyERvWyt/BiU8K/XxhwDF31RaAzEc="  # a steward's public key
SYNTHESIS = (
    '[policy.synthesis]\ngenerators = ["cart", "mst"]\n'
    f'[policy.synthesis.stewards]\nsam = "{SAM}"\n'
)


def test_the_same_count_is_not_answered_exactly_beside_its_dp_version(tmp_path: Path) -> None:
    """In the 'dp' mode the exact twin of a noisy count is refused, and so is every statistic
    that cannot carry dp, and a generator that is not private."""
    policy = 'dp_epsilon_budget = 1.0\n[policy.disclosure]\nmode = "dp"\n' + SYNTHESIS
    s = settings(tmp_path, policy)
    p = Policy(s.policy, s.datasets)
    noisy = {"statistic": "count", "dp": {"epsilon": 0.1}}
    assert p.decide(task(noisy)).refusal is None
    exact = p.decide(task({"statistic": "count"})).refusal
    assert exact == "dataset 'cohort' is in the 'dp' disclosure mode: every query must carry 'dp'"
    for query in (
        {"statistic": "quantile", "column": "age", "q": [0.5]},
        {"statistic": "min", "column": "age"},
        {"statistic": "crosstab", "rows": "sex", "columns": "sex"},
    ):
        assert p.decide(task(query)).refusal == exact, query["statistic"]
    assert "disclosure mode" in (p.decide_synthesis(synthesis(1, generator="cart")) or "")


def test_a_new_study_does_not_start_with_a_fresh_budget(tmp_path: Path) -> None:
    """Only a per-study budget is configured: the dataset's total is that same budget, so
    study after study cannot each spend it again on the same patients."""
    s = settings(tmp_path, "dp_epsilon_budget = 1.0\ndp_delta_budget = 1e-6")
    p = Policy(s.policy, s.datasets)
    ledger = PrivacyLedger(s.ledger_path)
    limit, total = p.dp_budget("cohort"), p.dp_total("cohort")
    assert limit is not None and total is not None
    ledger.charge_query(1, "cohort", 0.95, 0.0, limit, total)  # nearly all of the budget
    for study in range(2, 12):  # 0.95 + 0.1 > 1, and rho 0.95^2 / 2 alone is beyond zCDP's
        with pytest.raises(BudgetExceeded, match="over all studies") as refused:
            ledger.charge_query(study, "cohort", 0.1, 0.0, limit, total)
        assert refused.value.details["limit"] == "dataset_total"
    assert ledger.dataset_spent("cohort").charges == 1


def test_dp_synthesis_enters_the_ledger_and_a_second_one_beyond_the_total_is_refused(
    tmp_path: Path,
) -> None:
    """An MST job is charged its rho (synth's own accounting) to the dataset's ledger before
    training; a second job in another study that the total cannot afford is refused, and so
    is a query once the synthesis spent the budget."""
    from synth.accounting import rho_for

    s = settings(tmp_path, "dp_epsilon_budget = 2.0\ndp_delta_budget = 1e-6\n" + SYNTHESIS)
    agent = NodeAgent(s, client=Stub())  # type: ignore[arg-type]
    service = agent.synthesis
    assert service._charge(synthesis(1, study_id=1, generator="mst", epsilon=1.5)) is None
    charged = agent.ledger.spent(1, "cohort")
    assert float(charged.rho) == pytest.approx(rho_for(1.5, 1e-6))  # the policy's default delta
    assert service._charge(synthesis(1, study_id=1, generator="mst", epsilon=1.5)) is None
    assert agent.ledger.spent(1, "cohort").charges == 1, "offered again: charged once"

    refused = service._charge(synthesis(2, study_id=2, generator="mst", epsilon=1.5))
    assert refused is not None and "over all studies" in refused
    assert agent.ledger.dataset_spent("cohort").charges == 1, "refused: nothing charged"
    # what is left for queries: basic composition's 2 - 1.5, or zCDP's sqrt(2 (rho_L - rho))
    left = float(rho_budget(2.0, 1e-6)) - rho_for(1.5, 1e-6)
    largest = max(2.0 - 1.5, (2 * left) ** 0.5)
    with pytest.raises(BudgetExceeded):
        agent.ledger.charge_query(
            3, "cohort", largest * 1.01, 0.0, *_limits(agent)
        )  # the synthesis spent it for queries too
    agent.ledger.charge_query(3, "cohort", largest * 0.99, 0.0, *_limits(agent))
    assert service._charge(synthesis(4, study_id=1, generator="cart")) is None, "no DP: free"


def _limits(agent: NodeAgent) -> tuple[Any, Any]:
    return agent.policy.dp_budget("cohort"), agent.policy.dp_total("cohort")


def test_dp_synthesis_without_a_budget_is_refused(tmp_path: Path) -> None:
    s = settings(tmp_path, SYNTHESIS)
    job = synthesis(1, generator="mst", epsilon=1.0)
    assert Policy(s.policy, s.datasets).decide_synthesis(job) == (
        "this node has no differential-privacy budget for dataset 'cohort' "
        "(policy.dp_epsilon_budget): it trains no differentially private generator on it"
    )
    agent = NodeAgent(s, client=Stub())  # type: ignore[arg-type]
    refused = agent.synthesis._charge(job)
    assert refused == "no differential-privacy budget applies to this job"
