"""Message schemas shared by the coordinator, the node agent and the libraries.

These are the JSON shapes that cross a process or site boundary. Nothing here holds a patient
row: a `DatasetSchema` describes columns (names, types, categorical levels, declared bounds)
and optionally a declared row count, never values.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tessera.limits import (
    LABEL_LENGTH,
    MAX_ID,
    MESSAGE_LENGTH,
    NAME_LENGTH,
    Id,
    JsonObject,
    Text,
)
from tessera.privacy import rho_budget

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"  # a dataset's name (it appears in URLs)
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
# A column's name, as data files have them ("Age (years)"): 1 to 128 characters, no control
# characters, no spaces around it.
COLUMN_PATTERN = r"^[^\x00-\x1f\x7f\s](?:[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f\s])?$"
ColumnName = Annotated[str, Field(pattern=COLUMN_PATTERN, max_length=128)]
ColumnType = Literal["float", "integer", "boolean", "categorical"]
Level = Annotated[str, Field(pattern=r"^[^\x00]*$", max_length=256)]  # a categorical level
MAX_COLUMNS = 5000
MAX_LEVELS = 10_000
# A steward's Ed25519 public key in its one-line text form (tessera.stewards)
StewardKey = Annotated[str, Field(pattern=r"^ed25519:[A-Za-z0-9+/]{43}=$")]


Label = Annotated[Text, Field(max_length=LABEL_LENGTH)]  # a generator's, a statistic's name
MAX_POLICY_ENTRIES = 1000  # statistics or datasets named in a node's policy
MAX_PARAMS = 100  # a generator's parameters
MAX_GATES = 100  # release gates of a candidate


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ColumnSpec(Strict):
    """One declared column of a dataset.

    `levels` lists a categorical column's levels (as strings, in the order results use);
    `min`/`max` are declared bounds for numeric columns (values outside are a data error at the
    node, and the bounds later calibrate differential privacy).
    """

    name: ColumnName
    type: ColumnType
    levels: list[Level] | None = Field(None, max_length=MAX_LEVELS)
    min: float | None = Field(None, allow_inf_nan=False)
    max: float | None = Field(None, allow_inf_nan=False)
    description: Text = Field("", max_length=MESSAGE_LENGTH)

    @model_validator(mode="after")
    def _levels_for_categoricals(self) -> ColumnSpec:
        if self.type == "categorical":
            if not self.levels:
                raise ValueError(f"categorical column {self.name!r} needs its levels")
            if len(set(self.levels)) != len(self.levels):
                raise ValueError(f"categorical column {self.name!r} has repeated levels")
        elif self.levels is not None:
            raise ValueError(f"only categorical columns have levels ({self.name!r} is {self.type})")
        if self.type in ("categorical", "boolean") and (
            self.min is not None or self.max is not None
        ):
            raise ValueError(f"bounds apply to numeric columns only ({self.name!r})")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"column {self.name!r}: min > max")
        return self

    @property
    def is_numeric(self) -> bool:
        return self.type in ("float", "integer", "boolean")

    def group_levels(self) -> list[str]:
        """The levels a `group_by` on this column produces (categorical or boolean)."""
        if self.type == "categorical":
            assert self.levels is not None
            return list(self.levels)
        if self.type == "boolean":
            return ["False", "True"]
        raise ValueError(f"column {self.name!r} ({self.type}) cannot be grouped by")


# The most rows a site may hold in one dataset: the secure comparisons of per-site counts are
# sized for counts below 2**30 (`smpc.protocol.SITE_COUNT_BITS`).
MAX_ROWS = (1 << 30) - 1


class DatasetSchema(Strict):
    """The declared schema of a dataset as a node registers it: columns, never rows.

    `rows` is the dataset's row count as the node declares it (None: undeclared). Inside MPC
    every site's selected rows and per-cell counts are checked against its own declaration
    before anything is opened (`smpc.disclosure.prelude`, `smpc.protocol.release`)."""

    columns: list[ColumnSpec] = Field(min_length=1, max_length=MAX_COLUMNS)
    rows: int | None = Field(None, ge=0, le=MAX_ROWS)

    @model_validator(mode="after")
    def _unique_names(self) -> DatasetSchema:
        names = [c.name for c in self.columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"repeated column names: {', '.join(dupes)}")
        return self

    def column(self, name: str) -> ColumnSpec | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


class DPBudget(Strict):
    """A study's allocation of differential privacy on one dataset at one node, as (epsilon,
    delta): its queries and DP syntheses compose in zCDP up to the rho it converts to
    (`tessera.privacy.rho_budget`; a delta of 0 converts at `CONVERSION_DELTA`)."""

    epsilon: float = Field(ge=0, allow_inf_nan=False)
    delta: float = Field(0.0, ge=0, lt=1)

    @property
    def rho(self) -> Decimal:
        return rho_budget(self.epsilon, self.delta)


class DPTotal(Strict):
    """What all studies together may spend on one dataset at one node, as (epsilon, delta),
    composed in zCDP like a study's `DPBudget`. An amount left None is the study allocation's
    (`NodePolicySummary.dp_total_limit` fills it in): a dataset always has a total."""

    epsilon: float | None = Field(None, ge=0, allow_inf_nan=False)
    delta: float | None = Field(None, ge=0, lt=1)

    @model_validator(mode="after")
    def _caps_something(self) -> DPTotal:
        if self.epsilon is None and self.delta is None:
            raise ValueError("a total over all studies caps epsilon, delta or both")
        return self

    @property
    def rho(self) -> Decimal | None:
        """The rho budget of the total (None while its epsilon is not filled in)."""
        return None if self.epsilon is None else rho_budget(self.epsilon, self.delta)


class SynthesisPolicySummary(Strict):
    """What a node publishes of its synthesis policy, so the coordinator can refuse early (the
    node still decides)."""

    generators: list[Label] = Field(max_length=64)  # the generators it allows
    dp_required: bool = False
    # a DP generator's epsilon may not exceed this
    max_epsilon: float | None = Field(None, allow_inf_nan=False)
    max_rows: int | None = Field(None, ge=0, le=MAX_ID)
    approvals_required: int = Field(1, ge=1, le=64)
    pooled: bool = False  # takes part in pooled syntheses (its rows measured by MPC)
    # Each steward's name and public key (`ed25519:<base64>`): the coordinator verifies the
    # signed approvals of a release against these, and counts one key once.
    stewards: dict[Label, StewardKey] = Field(default_factory=dict, max_length=64)

    def refusal(self, spec: SynthesisSpec) -> str | None:
        """Why this policy refuses `spec` ("policy does not allow generator ..."), or None.

        The one statement of these rules: the node applies it to its own policy, the
        coordinator to the summary the node published (to refuse early)."""
        if spec.generator not in self.generators:
            allowed = ", ".join(self.generators) or "none"
            return f"policy does not allow generator {spec.generator!r} (allowed: {allowed})"
        if self.dp_required and not spec.differentially_private:
            return "policy requires a differentially private generator"
        limit = self.max_epsilon
        if spec.epsilon is not None and limit is not None and spec.epsilon > limit:
            return f"policy allows epsilon up to {limit:g}, not {spec.epsilon:g}"
        if self.max_rows is not None and spec.rows > self.max_rows:
            return f"policy allows up to {self.max_rows} synthetic rows, not {spec.rows}"
        if spec.scope == "pooled" and not self.pooled:
            return "policy takes no pooled synthesis (synthesis.pooled is false)"
        return None


# The largest threshold a query or a node may set: a million rows. Every secure comparison
# with a threshold has ample headroom above it (counts are 66-bit secure integers), so a
# threshold can never wrap around the comparison (a min_count of 2**67 once released every
# cell); a larger one would suppress everything any hospital network holds anyway.
MAX_THRESHOLD = 1_000_000

Mode = Literal["exact", "dp"]
MODES: tuple[str, ...] = ("exact", "dp")


class DisclosureRules(Strict):
    """One node's disclosure rules for one dataset: public policy, opened to every party at the
    start of each protocol, which applies the strictest of every party's (`smpc.disclosure`)."""

    mode: Mode = "exact"
    subset_min: int = Field(3, ge=0, le=MAX_THRESHOLD)
    glm_ratio: float = Field(0.33, gt=0, le=1)
    levels_max: int = Field(40, ge=2, le=MAX_THRESHOLD)
    levels_density: float = Field(0.33, gt=0, le=1)
    noise: float = Field(0.25, ge=0.01, le=1)
    magnitude: float = Field(0.25, ge=0.01, le=1)

    def vector(self) -> list[int]:
        """The rules as integers, to be opened in one round (ratios in millionths)."""
        return [
            self.subset_min,
            round(self.glm_ratio * 1_000_000),
            self.levels_max,
            round(self.levels_density * 1_000_000),
            round(self.noise * 1_000_000),
            round(self.magnitude * 1_000_000),
        ]


class NodePolicySummary(Strict):
    """What a node publishes of its policy so the coordinator can plan (the node still decides)."""

    min_count: int = Field(0, ge=0, le=MAX_THRESHOLD)
    # None: every statistic
    allowed_statistics: list[Label] | None = Field(None, max_length=MAX_POLICY_ENTRIES)
    disclosure: DisclosureRules = DisclosureRules()  # every dataset's, unless its own is set
    dataset_disclosure: dict[Name, DisclosureRules] = Field({}, max_length=MAX_POLICY_ENTRIES)
    dp_budget: DPBudget | None = None  # per study and dataset; None: no DP query is accepted
    # a dataset's own budget, instead of dp_budget
    dp_dataset_budgets: dict[Name, DPBudget] = Field({}, max_length=MAX_POLICY_ENTRIES)
    dp_total: DPTotal | None = None  # per dataset, over all studies; None: no such cap
    # a dataset's own total, instead of dp_total
    dp_dataset_totals: dict[Name, DPTotal] = Field({}, max_length=MAX_POLICY_ENTRIES)
    synthesis: SynthesisPolicySummary | None = None  # None: this node trains no generator

    def dp_limit(self, dataset: str) -> DPBudget | None:
        """The budget of each study on `dataset`; None if this node accepts no DP query on it."""
        return self.dp_dataset_budgets.get(dataset, self.dp_budget)

    def rules(self, dataset: str) -> DisclosureRules:
        """The disclosure mode and rules this node applies to `dataset`."""
        return self.dataset_disclosure.get(dataset, self.disclosure)

    def dp_total_limit(self, dataset: str) -> DPTotal | None:
        """What all studies together may spend on `dataset`: its own total, else the policy's,
        each amount not given being the study allocation's. On by default: with no total
        configured it is the allocation itself, so a new study does not start with a fresh
        budget on the same patients. None only where there is no DP budget at all."""
        total = self.dp_dataset_totals.get(dataset, self.dp_total)
        allocation = self.dp_limit(dataset)
        if allocation is None:
            return total
        if total is None:
            return DPTotal(epsilon=allocation.epsilon, delta=allocation.delta)
        return DPTotal(
            epsilon=allocation.epsilon if total.epsilon is None else total.epsilon,
            delta=allocation.delta if total.delta is None else total.delta,
        )

    def disclosure_refusal(
        self, dataset: str, private: bool, what: Literal["query", "synthesis"] = "query"
    ) -> str | None:
        """Why the disclosure mode of `dataset` refuses a query (`private`: it carries `dp`)
        or a synthesis request (`private`: its generator is differentially private), or None.
        In the `dp` mode nothing is released but under differential privacy: a query without
        `dp` (so also every statistic that does not support it) and a generator that is not
        differentially private are refused. The one statement of the rule: the node refuses
        with it, the coordinator predicts the refusal with the summary the node published."""
        if private or self.rules(dataset).mode != "dp":
            return None
        need = (
            "every query must carry 'dp'"
            if what == "query"
            else "a synthesis must use a differentially private generator (with epsilon)"
        )
        return f"dataset {dataset!r} is in the 'dp' disclosure mode: {need}"

    def statistic_refusal(self, statistic: str) -> str | None:
        """Why this policy refuses a `statistic` query ("does not allow 'mean' queries
        (allowed: count)"), or None. The one statement of the rule: the node refuses with it,
        the coordinator predicts the refusal with the summary the node published."""
        allowed = self.allowed_statistics
        if allowed is None or statistic in allowed:
            return None
        return f"does not allow {statistic!r} queries (allowed: {', '.join(allowed) or 'none'})"


# ---- node <-> coordinator task messages -------------------------------------------------

TaskStatus = Literal[
    "pending", "offered", "accepted", "running", "done", "refused", "failed", "cancelled"
]
QueryStatus = Literal["pending", "running", "succeeded", "failed"]


class NodeHello(Strict):
    """Sent by a node agent when it starts: its version and published policy."""

    agent_version: Text = Field(max_length=LABEL_LENGTH)
    policy: NodePolicySummary = NodePolicySummary()
    identity_certificate: Text | None = Field(
        None,
        max_length=8192,
        description="PEM certificate of the node's long-term key (registered once; a node "
        "that later shows another is refused until an administrator resets its identity)",
    )
    enrolment_token: Text | None = Field(
        None,
        max_length=128,
        description="The one-time token the administrator received with the node (or with a "
        "reset of its identity): needed only to register the long-term key",
    )


class TaskOut(BaseModel):
    """A task as a node receives it: its share of the work for one query, and the coordinator's
    signature of its statement (`tessera.signing.task_statement`: these fields and who asked)."""

    id: int
    query_id: int
    study_id: int | None = None  # None from a coordinator that predates privacy budgets
    party_id: int
    n_parties: int
    dataset: str
    query: dict[str, Any]
    deadline: datetime
    researcher_id: int | None = None  # the researcher the coordinator authenticated
    researcher: str | None = None  # ... their username
    submitted_at: datetime | None = None
    signature: str | None = None  # Ed25519 by the coordinator key, base64; None: unsigned

    def statement(self) -> dict[str, Any]:
        """The statement the signature must cover, rebuilt from this task's own fields."""
        from tessera.signing import task_statement

        return task_statement(
            query_id=self.query_id,
            task_id=self.id,
            party_id=self.party_id,
            n_parties=self.n_parties,
            study_id=self.study_id,
            dataset=self.dataset,
            query=self.query,
            researcher_id=self.researcher_id,
            researcher=self.researcher,
            submitted_at=self.submitted_at,
            deadline=self.deadline,
        )


class TaskAccept(Strict):
    """A node accepts a task and says where its MPC party will listen."""

    mpc_host: Text = Field(min_length=1, max_length=255)
    mpc_port: int = Field(ge=1, le=65535)
    mpc_certificate: Text | None = Field(
        None, max_length=8192, description="PEM certificate of this run's MPC identity"
    )


class PartyAddress(BaseModel):
    party_id: int
    node: str
    host: str
    port: int
    certificate: str | None = None  # this run's TLS certificate, issued by the node's key
    identity_certificate: str | None = None  # the node's long-term certificate (its key)


class TaskStart(BaseModel):
    """Answer to a node waiting for the go: all parties accepted (start) or not yet."""

    start: bool
    status: QueryStatus
    parties: list[PartyAddress] = []
    deadline: datetime | None = None


class TaskAccepted(BaseModel):
    """Answer to an acceptance: `accepted`, and with `wait`, the go if every node accepted
    within it (`start`; null when not waited for or not yet given: long-poll
    `GET /tasks/{id}/start`)."""

    status: str
    start: TaskStart | None = None


class TaskRefusal(Strict):
    reason: Text = Field(min_length=1, max_length=MESSAGE_LENGTH)


class TaskProgress(Strict):
    stage: Text = Field(min_length=1, max_length=LABEL_LENGTH)
    message: Text = Field("", max_length=MESSAGE_LENGTH)


class TaskResult(Strict):
    """A party's opened, pooled result: the same for every party of a successful run."""

    result: JsonObject
    min_count_applied: int = Field(ge=0, le=MAX_THRESHOLD)
    seconds: float = Field(ge=0, allow_inf_nan=False)


class TaskFailure(Strict):
    code: Text = Field(min_length=1, max_length=LABEL_LENGTH)
    message: Text = Field(min_length=1, max_length=MESSAGE_LENGTH)
    # with code `peer_lost`: the other nodes of the run this node lost (`smpc.liveness`)
    lost_nodes: list[Label] = Field(default_factory=list, max_length=64)


# ---- privacy budget -----------------------------------------------------------------------


class BudgetSpent(Strict):
    """What a node's ledger holds for one study and dataset, by both of its accountants:
    basic composition's sums of the charges' epsilon and delta (`epsilon_spent`,
    `delta_spent`) and zCDP's sum of their rho (`rho_spent`; None from an older node, whose
    epsilon and delta were rho converted)."""

    study_id: Id
    dataset: Name
    epsilon_spent: float = Field(ge=0, allow_inf_nan=False)
    delta_spent: float = Field(ge=0, allow_inf_nan=False)
    charges: int = Field(ge=0, le=MAX_ID)
    rho_spent: float | None = Field(None, ge=0, allow_inf_nan=False)  # None: an older node


class DatasetSpent(Strict):
    """What all studies together spent on one dataset at a node, as `BudgetSpent` (at the delta
    of the dataset's total)."""

    dataset: Name
    epsilon_spent: float = Field(ge=0, allow_inf_nan=False)
    delta_spent: float = Field(ge=0, allow_inf_nan=False)
    charges: int = Field(ge=0, le=MAX_ID)
    rho_spent: float | None = Field(None, ge=0, allow_inf_nan=False)


class NodeBudgetReport(Strict):
    """A node's whole privacy ledger (`PUT /nodes/me/budget`): it replaces the last report.
    `dataset_totals` sums every study the node has charged, including studies this coordinator
    does not know. The limits are in the node's policy summary (its hello)."""

    entries: list[BudgetSpent] = Field(default_factory=list, max_length=100_000)
    dataset_totals: list[DatasetSpent] = Field(default_factory=list, max_length=10_000)


# ---- synthetic data -----------------------------------------------------------------------

POOLED_GENERATORS = ("mst",)  # the generators a pooled synthesis can measure by MPC

SynthesisJobStatus = Literal[
    "pending",  # created, not yet offered to its node
    "offered",  # the node took it from its long-poll
    "training",  # the node accepted it: holding out, training, sampling, evaluating
    "awaiting_review",  # the candidate passed every release gate: the stewards decide
    "approved",  # pooled: this node's stewards approved; waiting for every other node's
    "gated",  # the candidate failed a release gate: never offered, nothing uploaded
    "released",  # approved by enough stewards: data and report uploaded, a release published
    "rejected",  # a steward rejected it: nothing uploaded
    "refused",  # the node's policy refused the request
    "failed",  # an error or a missed deadline
]
SynthesisRequestStatus = Literal["running", "done"]


class SynthesisSpec(Strict):
    """What a researcher asks each node to synthesise (`POST /studies/{id}/synthesis`)."""

    dataset: Name
    generator: Label = "cart"
    rows: int = Field(ge=1, le=1_000_000)
    # the generator's own (epochs, ...)
    params: JsonObject = Field(default_factory=dict, max_length=MAX_PARAMS)
    epsilon: float | None = Field(None, gt=0, le=100, allow_inf_nan=False)  # DP generators
    delta: float | None = Field(None, gt=0, lt=1e-3)  # DP generators; None: the node's default
    holdout: float = Field(0.2, ge=0.05, le=0.5)  # share of rows held out for evaluation
    target: ColumnName | None = None  # the column the utility metric predicts
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    # "local": each node trains on its own rows and releases its own dataset; "pooled": one
    # generator measured by MPC over every participating node's rows (`synth.pooled`), one
    # dataset released when every node's stewards approved it
    scope: Literal["local", "pooled"] = "local"

    @model_validator(mode="after")
    def _pooled(self) -> SynthesisSpec:
        if self.scope == "pooled":
            if self.generator not in POOLED_GENERATORS:
                raise ValueError(
                    f"a pooled synthesis uses generator {', '.join(POOLED_GENERATORS)}, "
                    f"not {self.generator!r}"
                )
            if self.epsilon is None:
                raise ValueError("a pooled synthesis is differentially private: give epsilon")
        return self

    @property
    def differentially_private(self) -> bool:
        """Whether the request is for a differentially private generator: it gives epsilon
        exactly then (`synth.check_request`, applied where a request is made and where it is
        run, holds a request to its generator's registry entry)."""
        return self.epsilon is not None


class SynthesisJobOut(BaseModel):
    """One node's part of a synthesis request, as the node receives it."""

    id: int
    request_id: int
    study_id: int
    requested_by: str
    spec: SynthesisSpec
    deadline: datetime  # training, sampling and evaluation must be done by then
    # pooled: this node's party id in the measurement and the number of parties
    party_id: int | None = None
    n_parties: int | None = None
    # the coordinator's Ed25519 signature over `statement()` (`tessera.signing`)
    signature: str | None = None

    def statement(self) -> dict[str, Any]:
        """The statement the signature must cover, rebuilt from this job's own fields."""
        from tessera.signing import synthesis_statement

        return synthesis_statement(
            job_id=self.id,
            request_id=self.request_id,
            study_id=self.study_id,
            requested_by=self.requested_by,
            spec=self.spec.model_dump(mode="json"),
            deadline=self.deadline,
            party_id=self.party_id,
            n_parties=self.n_parties,
        )


class SynthesisProgress(Strict):
    """Training progress (`POST /synthesis-jobs/{id}/progress`): a stage, and for generators
    trained in epochs, the epoch and its loss. Never a value of the data."""

    stage: Text = Field(min_length=1, max_length=LABEL_LENGTH)
    message: Text = Field("", max_length=MESSAGE_LENGTH)
    epoch: int | None = Field(None, ge=0, le=MAX_ID)
    epochs: int | None = Field(None, ge=0, le=MAX_ID)
    loss: float | None = Field(None, allow_inf_nan=False)


class GateOutcome(Strict):
    """One release gate applied to a candidate: the metric, its value, the threshold."""

    name: Text = Field(min_length=1, max_length=LABEL_LENGTH)
    passed: bool
    value: float | None = Field(None, allow_inf_nan=False)
    threshold: float | None = Field(None, allow_inf_nan=False)
    message: Text = Field("", max_length=MESSAGE_LENGTH)


class SynthesisCandidate(Strict):
    """The node's candidate is ready (`POST /synthesis-jobs/{id}/candidate`): the gates it was
    held to. All passed: it awaits its stewards. One failed: it is gated and never offered."""

    gates: list[GateOutcome] = Field(max_length=MAX_GATES)
    approvals_required: int = Field(1, ge=1, le=64)
    # pooled: the SHA-256 of the shared candidate's Parquet bytes (every node must hold the
    # same), and of the opened measurements it was fitted on
    candidate_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    measurement_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)


class PooledApproval(BaseModel):
    """The coordinator's answer to a pooled node's approval (`POST /synthesis-jobs/{id}/release`
    without `data`): its job is `approved`; `waiting_for` names the nodes whose stewards have
    not approved yet; `data_wanted` is true once every node approved (the node then posts the
    same request with `data`, and the release is published)."""

    status: SynthesisJobStatus
    waiting_for: list[str] = []
    data_wanted: bool = False
    release_id: int | None = None


SHA256 = r"^[0-9a-f]{64}$"


class StewardDecision(Strict):
    """One data steward's decision on a candidate, signed with the steward's own key.

    `signature` is the steward's Ed25519 signature (base64) over the canonical statement of
    every other field, the node's name and the job id (`tessera.stewards.statement`): the
    hashes of the exact data, card and report the steward decided on."""

    steward: Text = Field(min_length=1, max_length=LABEL_LENGTH)
    decision: Literal["approve", "reject"]
    at: datetime
    reason: Text = Field("", max_length=MESSAGE_LENGTH)
    key: StewardKey
    data_sha256: str = Field(pattern=SHA256)
    card_sha256: str = Field(pattern=SHA256)
    report_sha256: str = Field(pattern=SHA256)
    signature: str = Field(pattern=r"^[A-Za-z0-9+/]{86}==$")


class SynthesisRejection(Strict):
    """A steward rejected the candidate (`POST /synthesis-jobs/{id}/reject`): nothing is
    uploaded, the coordinator keeps only this record."""

    decisions: list[StewardDecision] = Field(min_length=1, max_length=64)


class Verdict(Strict):
    """The verdict on a candidate in plain words (`synth.verdict`): pass, needs attention
    (nothing failed, but something cannot be told), or fail (a gate failed), and why."""

    verdict: Literal["pass", "needs attention", "fail"]
    reasons: list[Annotated[Text, Field(max_length=MESSAGE_LENGTH)]] = Field(
        default_factory=list, max_length=50
    )


class ReleaseContent(Strict):
    """A release card without its approvals: what the stewards sign the hash of
    (`tessera.stewards.card_sha256` of its JSON form). `verdict` comes first: what a data
    protection officer reads before any figure (None on cards made before it existed, and
    then left out of the hash, so their signatures still verify)."""

    verdict: Verdict | None = None
    generator: Label
    generator_license: Text = Field(max_length=NAME_LENGTH)
    params: JsonObject
    rows: int = Field(ge=1, le=MAX_ID)
    columns: list[Annotated[Text, Field(max_length=128)]] = Field(
        min_length=1, max_length=MAX_COLUMNS
    )
    epsilon: float | None = Field(None, allow_inf_nan=False)  # what it spent (None: not DP)
    delta: float | None = Field(None, allow_inf_nan=False)
    metrics: JsonObject  # `synth.evaluate`'s report
    gates: list[GateOutcome] = Field(max_length=MAX_GATES)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    device: Text = Field(max_length=32)
    fit_seconds: float = Field(ge=0, allow_inf_nan=False)
    # The exact row counts are a hospital's own aggregate: a differentially private release
    # withholds them (None), as its guarantee does not cover them.
    training_rows: int | None = Field(None, ge=1)
    holdout_rows: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    target: Annotated[Text, Field(max_length=128)] | None = None
    # pooled: the nodes whose rows were measured (in party order), and the hash of the opened
    # measurements the candidate was fitted on
    scope: Literal["local", "pooled"] = "local"
    parties: list[Label] | None = Field(None, max_length=MAX_POLICY_ENTRIES)
    measurement_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    def digest(self) -> str:
        """The card's hash as stewards sign it (without approvals; JSON types)."""
        import json

        from tessera.stewards import card_sha256

        exclude = {"approvals"} | ({"verdict"} if self.verdict is None else set())
        return card_sha256(json.loads(self.model_dump_json(exclude=exclude)))


class ReleaseCard(ReleaseContent):
    """What the node uploads with an approved synthetic dataset (the multipart field `card` of
    `POST /synthesis-jobs/{id}/release`, beside the files `data` (Parquet) and `report`
    (HTML)). `sha256` is the hash of the Parquet bytes, checked on upload; `approvals` are the
    stewards' signed decisions, each over this card's `digest()`, the data and the report."""

    approvals: list[StewardDecision] = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _approvals(self) -> ReleaseCard:
        deciders = [a.steward for a in self.approvals]
        if len(set(deciders)) != len(deciders):
            raise ValueError("a steward appears twice among the approvals")
        if any(a.decision != "approve" for a in self.approvals):
            raise ValueError("a release card lists approvals only")
        return self
