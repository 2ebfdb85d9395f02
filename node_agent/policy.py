"""The node's own decision on a task.

The coordinator plans with the policy summary a node publishes, but only the node decides: a
task its policy forbids is refused with the reason, whatever the coordinator says. The floor
`min_count` goes into every party job; the protocol applies the largest floor of all parties
and the query's own `min_count`, so no query can lower it. A query with `dp` needs a privacy
budget for its dataset (none configured: refused), and so does a differentially private
synthesis; the spend itself is charged against the ledger when the node accepts
(`node_agent.budget`), within the study's allocation and the dataset's total over all studies.
A dataset in the `dp` disclosure mode refuses every query without `dp` and every synthesis by a
generator that is not differentially private (`NodePolicySummary.disclosure_refusal`, the rule
the coordinator predicts with).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from node_agent.config import DatasetConfig, PolicyConfig
from tessera.errors import InvalidRequest, QueryInvalid
from tessera.schemas import (
    DisclosureRules,
    DPBudget,
    DPTotal,
    NodePolicySummary,
    SynthesisJobOut,
    TaskOut,
)

if TYPE_CHECKING:
    from smpc.statistics import SecureStatistic

MIN_PARTIES = 3  # Shamir sharing with an honest majority: t < m/2 needs m >= 3 for t >= 1


@dataclass(frozen=True)
class Decision:
    """The node's answer to a task: why it refuses, or the query as the statistic that will run
    it (parsed and checked against the declared schema once, here)."""

    refusal: str | None
    statistic: SecureStatistic | None = None


class Policy:
    def __init__(self, config: PolicyConfig, datasets: list[DatasetConfig]) -> None:
        self.config = config
        self._datasets = {d.name: d for d in datasets}

    @property
    def min_count(self) -> int:
        """The disclosure floor this node imposes on every result it takes part in."""
        return self.config.min_count

    def rules(self, dataset: str) -> DisclosureRules:
        """The disclosure mode and rules this node applies to `dataset` (`smpc.disclosure`)."""
        return self.config.summary().rules(dataset)

    def summary(self) -> NodePolicySummary:
        """What the coordinator may know of the policy, to plan (it does not decide)."""
        return self.config.summary()

    def dp_budget(self, dataset: str) -> DPBudget | None:
        """What each study may spend on `dataset` (epsilon, delta); None: no DP query on it."""
        return self.config.summary().dp_limit(dataset)

    def dp_total(self, dataset: str) -> DPTotal | None:
        """What all studies together may spend on `dataset`; None: no cap besides each
        study's own budget."""
        return self.config.summary().dp_total_limit(dataset)

    def serves(self, dataset: str) -> bool:
        """Whether the node offers this dataset at all (only those are registered)."""
        allowed = self.config.allowed_datasets
        return dataset in self._datasets and (allowed is None or dataset in allowed)

    def decide(self, task: TaskOut) -> Decision:
        """The statistic to run, or the reason to refuse the task (sent to the coordinator,
        so it names the rule, never data)."""
        return Decision(reason) if (reason := self._refusal(task)) else self._compile(task)

    def _refusal(self, task: TaskOut) -> str | None:
        """Why the policy refuses the task before its query is read, or None."""
        reason = self.summary().statistic_refusal(str(task.query.get("statistic")))
        if reason is not None:
            return f"policy {reason}"
        if task.dataset not in self._datasets:
            return f"dataset {task.dataset!r} is not served by this node"
        if not self.serves(task.dataset):
            return f"policy does not allow queries on dataset {task.dataset!r}"
        if task.query.get("dataset", task.dataset) != task.dataset:
            return "the task's dataset and its query's dataset differ"
        reason = self.summary().disclosure_refusal(task.dataset, task.query.get("dp") is not None)
        if reason is not None:
            return reason
        if task.query.get("dp") is not None:
            if self.dp_budget(task.dataset) is None:
                return (
                    f"this node has no differential-privacy budget for dataset {task.dataset!r} "
                    "(policy.dp_epsilon_budget): it takes part in no query with 'dp'"
                )
            if task.study_id is None:
                return "the task names no study, so its privacy spend cannot be charged"
        if task.n_parties < MIN_PARTIES:
            return (
                f"{task.n_parties} part{'y' if task.n_parties == 1 else 'ies'}: secure "
                f"computation needs at least {MIN_PARTIES} to keep this node's summary secret"
            )
        return None

    def _compile(self, task: TaskOut) -> Decision:
        from smpc import compile_query

        schema = self._datasets[task.dataset].schema_
        try:
            return Decision(None, compile_query(task.query, schema))
        except QueryInvalid as exc:
            return Decision(f"query invalid against this node's declared schema: {exc.message}")

    def decide_synthesis(self, job: SynthesisJobOut) -> str | None:
        """None if this node may train for the synthesis job; otherwise why not (sent to the
        coordinator: it names the rule, never data)."""
        from synth import check_request

        rules = self.config.synthesis
        spec = job.spec
        if rules is None:
            return "this node's policy allows no synthesis ([policy.synthesis] is not set)"
        ds = self._datasets.get(spec.dataset)
        if ds is None or not self.serves(spec.dataset):
            return f"dataset {spec.dataset!r} is not served by this node"
        try:
            cls = check_request(spec.generator, spec.epsilon, spec.delta)
        except InvalidRequest as exc:
            return exc.message
        reason = rules.summary().refusal(spec) or self.summary().disclosure_refusal(
            spec.dataset, spec.differentially_private, "synthesis"
        )
        if reason is not None:
            return reason
        if spec.holdout < rules.holdout_min:
            return f"policy holds out at least {rules.holdout_min:.0%} of the rows for evaluation"
        if spec.scope == "pooled" and (
            job.party_id is None or job.n_parties is None or job.n_parties < MIN_PARTIES
        ):
            return (
                f"a pooled synthesis needs at least {MIN_PARTIES} parties and this node's "
                "party id in the job"
            )
        if spec.target is not None and ds.schema_.column(spec.target) is None:
            return f"target {spec.target!r} is not a declared column of {spec.dataset!r}"
        unknown = sorted(set(spec.params) - set(cls.param_names) - {"epsilon", "delta"})
        if unknown or {"epsilon", "delta"} & set(spec.params):
            known = ", ".join(p for p in cls.param_names if p not in ("epsilon", "delta"))
            return (
                f"generator {spec.generator!r} takes no parameter(s) "
                f"{', '.join(unknown or sorted({'epsilon', 'delta'} & set(spec.params)))} "
                f"(known: {known or 'none'}; epsilon and delta are the request's own fields)"
            )
        if spec.differentially_private and self.dp_budget(spec.dataset) is None:
            return (
                f"this node has no differential-privacy budget for dataset {spec.dataset!r} "
                "(policy.dp_epsilon_budget): it trains no differentially private generator on it"
            )
        if spec.differentially_private:
            undeclared = [
                c.name
                for c in ds.columns
                if c.type in ("integer", "float") and (c.min is None or c.max is None)
            ]
            if undeclared:
                return (
                    "a differentially private generator needs declared bounds; not declared "
                    f"here: {', '.join(undeclared)}"
                )
        return None
