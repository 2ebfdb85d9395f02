"""The node's own decision on a task.

The coordinator plans with the policy summary a node publishes, but only the node decides: a
task its policy forbids is refused with the reason, whatever the coordinator says. The floor
`min_count` goes into every party job; the protocol applies the largest floor of all parties
and the query's own `min_count`, so no query can lower it. A query with `dp` needs a privacy
budget for its dataset (none configured: refused); the spend itself is charged against the
ledger when the node accepts (`node_agent.budget`), within the study's budget and, where the
policy sets one, the dataset's total over all studies.
"""

from __future__ import annotations

from node_agent.config import DatasetConfig, PolicyConfig
from tessera.errors import QueryInvalid
from tessera.schemas import DPBudget, DPTotal, NodePolicySummary, SynthesisJobOut, TaskOut

MIN_PARTIES = 3  # Shamir sharing with an honest majority: t < m/2 needs m >= 3 for t >= 1


class Policy:
    def __init__(self, config: PolicyConfig, datasets: list[DatasetConfig]) -> None:
        self.config = config
        self._datasets = {d.name: d for d in datasets}

    @property
    def min_count(self) -> int:
        """The disclosure floor this node imposes on every result it takes part in."""
        return self.config.min_count

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

    def decide(self, task: TaskOut) -> str | None:
        """None if the task may run; otherwise the reason to refuse it (sent to the
        coordinator, so it names the rule, never data)."""
        from smpc import prepare

        statistic = task.query.get("statistic")
        allowed = self.config.allowed_statistics
        if allowed is not None and statistic not in allowed:
            return f"policy does not allow {statistic!r} queries (allowed: {', '.join(allowed)})"
        ds = self._datasets.get(task.dataset)
        if ds is None:
            return f"dataset {task.dataset!r} is not served by this node"
        if not self.serves(task.dataset):
            return f"policy does not allow queries on dataset {task.dataset!r}"
        if task.query.get("dataset", task.dataset) != task.dataset:
            return "the task's dataset and its query's dataset differ"
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
        try:
            prepare(task.query, ds.schema_)
        except QueryInvalid as exc:
            return f"query invalid against this node's declared schema: {exc.message}"
        return None

    def decide_synthesis(self, job: SynthesisJobOut) -> str | None:
        """None if this node may train for the synthesis job; otherwise why not (sent to the
        coordinator: it names the rule, never data)."""
        from synth import generator_class

        rules = self.config.synthesis
        spec = job.spec
        if rules is None:
            return "this node's policy allows no synthesis ([policy.synthesis] is not set)"
        ds = self._datasets.get(spec.dataset)
        if ds is None or not self.serves(spec.dataset):
            return f"dataset {spec.dataset!r} is not served by this node"
        if spec.generator not in rules.generators:
            return (
                f"policy does not allow generator {spec.generator!r} "
                f"(allowed: {', '.join(rules.generators)})"
            )
        if rules.dp_required and not spec.differentially_private:
            return "policy requires a differentially private generator"
        limit = rules.max_epsilon
        if spec.epsilon is not None and limit is not None and spec.epsilon > limit:
            return f"policy allows epsilon up to {limit:g}, not {spec.epsilon:g}"
        if rules.max_rows is not None and spec.rows > rules.max_rows:
            return f"policy allows up to {rules.max_rows} synthetic rows, not {spec.rows}"
        if spec.holdout < rules.holdout_min:
            return f"policy holds out at least {rules.holdout_min:.0%} of the rows for evaluation"
        if spec.target is not None and ds.schema_.column(spec.target) is None:
            return f"target {spec.target!r} is not a declared column of {spec.dataset!r}"
        cls = generator_class(spec.generator)
        unknown = sorted(set(spec.params) - set(cls.param_names) - {"epsilon", "delta"})
        if unknown or {"epsilon", "delta"} & set(spec.params):
            known = ", ".join(p for p in cls.param_names if p not in ("epsilon", "delta"))
            return (
                f"generator {spec.generator!r} takes no parameter(s) "
                f"{', '.join(unknown or sorted({'epsilon', 'delta'} & set(spec.params)))} "
                f"(known: {known or 'none'}; epsilon and delta are the request's own fields)"
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
