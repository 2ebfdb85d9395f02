"""The node's own decision: what its policy forbids is refused, with the rule as the reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from node_agent.policy import Policy
from tessera.schemas import DPBudget, DPTotal, SynthesisJobOut, SynthesisSpec, TaskOut


def task(query: dict[str, Any], dataset: str = "cohort", n_parties: int = 3) -> TaskOut:
    return TaskOut(
        id=7,
        query_id=3,
        party_id=1,
        n_parties=n_parties,
        dataset=dataset,
        query={"dataset": dataset, **query},
        deadline=datetime.now(UTC) + timedelta(seconds=60),
    )


def policy(configs, policy_toml: str = "", extra: str = "") -> Policy:
    text = configs.node_toml(
        configs.dataset() + extra + configs.dataset(where='path = "b.csv"', name="labs"),
        policy=policy_toml,
    )
    settings = configs.settings(text)
    return Policy(settings.policy, settings.datasets)


def test_an_allowed_valid_query_runs(configs) -> None:
    p = policy(configs, "min_count = 8")
    decision = p.decide(task({"statistic": "mean", "column": "weight"}))
    assert decision.refusal is None
    assert decision.statistic is not None and decision.statistic.query.column == "weight"
    assert p.decide(task({"statistic": "count", "where": [["sex", "==", "F"]]})).refusal is None
    assert p.min_count == 8
    assert p.summary().min_count == 8


def test_a_statistic_the_policy_does_not_allow_is_refused(configs) -> None:
    p = policy(configs, 'allowed_statistics = ["count"]')
    assert p.decide(task({"statistic": "count"})).refusal is None
    assert p.decide(task({"statistic": "mean", "column": "weight"})).refusal == (
        "policy does not allow 'mean' queries (allowed: count)"
    )
    assert p.summary().allowed_statistics == ["count"]


def test_datasets_the_node_does_not_serve_or_allow(configs) -> None:
    p = policy(configs, 'allowed_datasets = ["cohort"]')
    assert p.decide(task({"statistic": "count"}, dataset="genomes")).refusal == (
        "dataset 'genomes' is not served by this node"
    )
    assert p.decide(task({"statistic": "count"}, dataset="labs")).refusal == (
        "policy does not allow queries on dataset 'labs'"
    )
    assert p.serves("cohort") and not p.serves("labs") and not p.serves("genomes")


def test_a_query_invalid_against_our_declared_schema_is_refused(configs) -> None:
    p = policy(configs)
    reason = p.decide(task({"statistic": "mean", "column": "height"})).refusal
    assert reason == (
        "query invalid against this node's declared schema: unknown column 'height' in dataset "
        "'cohort'"
    )
    reason = p.decide(task({"statistic": "count", "where": [["sex", "==", "X"]]})).refusal
    assert reason is not None and "'X' is not a level of 'sex'" in reason
    reason = p.decide(task({"statistic": "mean", "column": "sex"})).refusal
    assert reason is not None and "not numeric" in reason


def test_a_mismatched_dataset_is_refused(configs) -> None:
    t = task({"statistic": "count"})
    t.query["dataset"] = "labs"
    assert policy(configs).decide(t).refusal == "the task's dataset and its query's dataset differ"


@pytest.mark.parametrize("n_parties", [1, 2])
def test_too_few_parties_to_keep_a_summary_secret(configs, n_parties) -> None:
    reason = policy(configs).decide(task({"statistic": "count"}, n_parties=n_parties)).refusal
    assert reason is not None and "needs at least 3" in reason


def test_a_dp_budget_per_study_with_a_dataset_of_its_own(configs) -> None:
    p = policy(
        configs,
        "dp_epsilon_budget = 1.0\ndp_delta_budget = 1e-6\n[policy.dp_budgets.labs]\nepsilon = 3",
    )
    assert p.dp_budget("cohort") == DPBudget(epsilon=1.0, delta=1e-6)
    assert p.dp_budget("labs") == DPBudget(epsilon=3.0, delta=0.0), "delta defaults to 0"
    summary = p.summary()
    assert summary.dp_budget == DPBudget(epsilon=1.0, delta=1e-6)
    assert summary.dp_dataset_budgets == {"labs": DPBudget(epsilon=3.0)}


def test_totals_over_all_studies_per_dataset_fall_back_amount_by_amount(configs) -> None:
    p = policy(
        configs,
        "dp_epsilon_budget = 1.0\ndp_epsilon_total = 4\ndp_delta_total = 1e-5\n"
        "[policy.dp_budgets.labs]\nepsilon_total = 2",
    )
    assert p.dp_total("cohort") == DPTotal(epsilon=4.0, delta=1e-5)
    assert p.dp_total("labs") == DPTotal(epsilon=2.0, delta=1e-5), "delta: the policy's total"
    assert p.dp_budget("labs") == DPBudget(epsilon=1.0), "no epsilon of its own: the default"
    summary = p.summary()
    assert summary.dp_total == DPTotal(epsilon=4.0, delta=1e-5)
    assert summary.dp_dataset_totals == {"labs": DPTotal(epsilon=2.0, delta=1e-5)}
    assert summary.dp_dataset_budgets == {}

    on_by_default = policy(configs, "dp_epsilon_budget = 1.0\ndp_delta_budget = 1e-6")
    assert on_by_default.dp_total("cohort") == DPTotal(epsilon=1.0, delta=1e-6), "the budget"
    only_delta = policy(configs, "dp_epsilon_budget = 1.0\ndp_delta_total = 1e-6")
    assert only_delta.dp_total("labs") == DPTotal(epsilon=1.0, delta=1e-6), "epsilon: the budget"
    assert policy(configs).dp_total("cohort") is None, "no budget at all: no DP"


def test_without_a_budget_no_dp_query_is_taken(configs) -> None:
    p = policy(configs, "[policy.dp_budgets.labs]\nepsilon = 2")
    assert p.summary().dp_budget is None and p.dp_budget("cohort") is None
    assert p.decide(task({"statistic": "count", "dp": {"epsilon": 0.5}})).refusal == (
        "this node has no differential-privacy budget for dataset 'cohort' "
        "(policy.dp_epsilon_budget): it takes part in no query with 'dp'"
    )
    assert p.decide(task({"statistic": "count"})).refusal is None, "other queries are unaffected"


DP_MODE = """dp_epsilon_budget = 1.0
dp_delta_budget = 1e-6
[policy.synthesis]
generators = ["cart", "mst"]
[policy.synthesis.stewards]
sam = "ed25519:82Kfgyj9sP6AzunyERvWyt/BiU8K/XxhwDF31RaAzEc="
[policy.dataset_disclosure.cohort]
mode = "dp"
"""


def synthesis_job(dataset: str = "cohort", **spec: Any) -> SynthesisJobOut:
    return SynthesisJobOut(
        id=4,
        request_id=2,
        study_id=1,
        requested_by="ann",
        spec=SynthesisSpec(dataset=dataset, rows=10, **spec),
        deadline=datetime.now(UTC) + timedelta(seconds=60),
    )


def test_a_dp_mode_dataset_refuses_every_query_without_dp(configs) -> None:
    p = policy(configs, DP_MODE)
    assert p.rules("cohort").mode == "dp" and p.rules("labs").mode == "exact"
    refused = "dataset 'cohort' is in the 'dp' disclosure mode: every query must carry 'dp'"
    assert p.decide(task({"statistic": "count"})).refusal == refused
    assert p.decide(task({"statistic": "variance", "column": "weight"})).refusal == refused
    dp = {"epsilon": 0.5, "delta": 0.0}
    taken = p.decide(task({"statistic": "count", "dp": dp}).model_copy(update={"study_id": 1}))
    assert taken.refusal is None
    extreme = p.decide(  # a statistic with no DP version: refused in the dp mode, dp or not
        task({"statistic": "max", "column": "weight", "dp": dp}).model_copy(update={"study_id": 1})
    ).refusal
    assert extreme is not None and "differential privacy" in extreme, "no dp: refused too"
    assert p.decide(task({"statistic": "count"}, dataset="labs")).refusal is None
    # The coordinator predicts it from the published summary, by the same rule.
    assert p.summary().disclosure_refusal("cohort", private=False) == refused
    assert p.summary().disclosure_refusal("cohort", private=True) is None


def test_a_dp_mode_dataset_refuses_a_synthesis_that_is_not_private(configs) -> None:
    p = policy(configs, DP_MODE)
    refused = (
        "dataset 'cohort' is in the 'dp' disclosure mode: a synthesis must use a "
        "differentially private generator (with epsilon)"
    )
    assert p.decide_synthesis(synthesis_job(generator="cart")) == refused
    assert p.summary().disclosure_refusal("cohort", False, "synthesis") == refused
    assert p.decide_synthesis(synthesis_job(dataset="labs", generator="cart")) is None
