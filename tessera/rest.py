"""The coordinator's REST resources: request bodies and answers, shared by the coordinator (its
routes declare them, so `/openapi.json` documents them) and the Python client (it builds its
requests with them and checks every answer against them).

Node-agent messages (tasks, synthesis jobs, budget reports) are in `tessera.schemas`. Two
schemas are the statistics registry's, not the kernel's: a query (`Query`, a union
discriminated on `statistic`) and its result (`QueryResult`); the fields that hold them carry a
reference to the components of those names, which the coordinator's spec defines from the
registry (`smpc.statistics`), so a new statistic appears in the spec by itself.

Every error has one body, `ErrorBody`: ``{"error": {"code", "message", "details"}}``, where
`details.errors` lists field errors with `loc` always a list of path segments.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from tessera.limits import (
    DESCRIPTION_LENGTH,
    MAX_REFS,
    NAME_LENGTH,
    SECRET_LENGTH,
    Id,
    Text,
)
from tessera.schemas import (
    DatasetSchema,
    DisclosureRules,
    GateOutcome,
    Name,
    NodePolicySummary,
    QueryStatus,
    StewardDecision,
    SynthesisJobStatus,
    SynthesisRequestStatus,
    SynthesisSpec,
    TaskStatus,
)

Role = Literal["admin", "researcher", "steward"]
USERNAME_PATTERN = r"^[A-Za-z0-9_.@-]{2,64}$"
Username = Annotated[str, Field(pattern=USERNAME_PATTERN)]

# Fields whose schema is the statistics registry's (components the coordinator's spec defines)
QueryJSON = Annotated[
    dict[str, Any],
    WithJsonSchema({"allOf": [{"$ref": "#/components/schemas/Query"}]}),
]
ResultJSON = Annotated[
    dict[str, Any] | None,
    WithJsonSchema({"anyOf": [{"$ref": "#/components/schemas/QueryResult"}, {"type": "null"}]}),
]


class Body(BaseModel):
    """A request body: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


class View(BaseModel):
    """An answer. A client ignores fields it does not know (a newer coordinator may add some)."""

    model_config = ConfigDict(extra="ignore")


# ---- errors ------------------------------------------------------------------------------


class FieldError(View):
    """One invalid field: where (`loc`, path segments from the body, query or path) and why."""

    loc: list[str | int]
    msg: str


class ErrorDetails(View):
    """Structured details of an error: `errors` for invalid fields (empty otherwise), plus
    context values named by the error (a column, a node, a limit)."""

    model_config = ConfigDict(extra="allow")

    errors: list[FieldError] = []


class ErrorInfo(View):
    code: str = Field(description="Stable machine-readable code, e.g. query_invalid.")
    message: str = Field(description="One line for a person; never a data value.")
    details: ErrorDetails


class ErrorBody(View):
    """The body of every error answer."""

    error: ErrorInfo


# ---- pages -------------------------------------------------------------------------------

T = TypeVar("T")


class Page(View, Generic[T]):
    """One page of a list, oldest first. Pass `next_cursor` as `cursor` for the next page;
    it is null on the last page."""

    items: list[T]
    next_cursor: str | None = None


# ---- auth, users, organisations -----------------------------------------------------------


class Token(View):
    """A short-lived access token and the refresh token that renews it (one use each: the
    answer to a refresh carries the next one)."""

    access_token: str
    token_type: Literal["bearer"]
    expires_in: int = Field(description="Seconds the access token is valid.")
    refresh_token: str = Field(description="Exchange it at /auth/refresh for the next pair.")
    refresh_expires_in: int = Field(description="Seconds until the session ends: log in again.")


class RefreshRequest(Body):
    refresh_token: Text = Field(min_length=1, max_length=200)


class LoggedOut(View):
    status: Literal["logged_out"]


class PasswordChange(Body):
    old_password: Text = Field(min_length=1, max_length=SECRET_LENGTH)
    new_password: Text = Field(min_length=8, max_length=SECRET_LENGTH)


class PasswordChanged(View):
    sessions_revoked: int = Field(description="Other sessions of the user that were ended.")


class NewUser(Body):
    username: str = Field(pattern=USERNAME_PATTERN)
    password: Text = Field(min_length=8, max_length=SECRET_LENGTH)
    role: Role = "researcher"
    organisation_id: Id | None = None


class UserOut(View):
    id: int
    username: str
    role: Role
    organisation_id: int | None
    created_at: datetime
    disabled: bool = False
    provider: str = Field(
        "local", description="'local' (a password here) or the issuer of the user's OIDC provider"
    )


class UserPage(Page[UserOut]):
    pass


class NewOrganisation(Body):
    name: Text = Field(min_length=1, max_length=NAME_LENGTH)


class OrganisationOut(View):
    id: int
    name: str
    created_at: datetime


class OrganisationPage(Page[OrganisationOut]):
    pass


# ---- nodes ---------------------------------------------------------------------------------


class NewNode(Body):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{2,64}$")
    organisation_id: Id


class NodeOut(View):
    id: int
    name: str
    organisation_id: int
    agent_version: str | None
    policy: NodePolicySummary | None = Field(description="As the node last published it.")
    identity_fingerprint: str | None = Field(
        None,
        description="The fingerprint of the node's long-term key, as the node registered it "
        "(`tessera node init` prints it; each hospital trusts its peers' fingerprints itself).",
    )
    last_seen_at: datetime | None
    created_at: datetime


class NodeWithKey(NodeOut):
    api_key: str = Field(description="Shown in this answer only: hand it to the node operator.")
    enrolment_token: str | None = Field(
        None,
        description="At enrolment: the one-time token that registers the node's long-term key "
        "at its first start (shown once; expires after enrolment_ttl_s).",
    )


class NodeWithEnrolment(NodeOut):
    enrolment_token: str = Field(
        description="Shown in this answer only: the one-time token that registers the node's "
        "new long-term key at its next start."
    )


class NodePage(Page[NodeOut]):
    pass


class RegisteredDataset(View):
    name: str
    node: str
    schema_: DatasetSchema = Field(alias="schema")

    model_config = ConfigDict(populate_by_name=True)


class BudgetReportAck(View):
    entries: int = Field(description="Ledger entries kept.")
    ignored_study_ids: list[int] = Field(description="Studies this coordinator does not know.")


class Ack(View):
    """The new state of a task or a synthesis job after a node's report."""

    status: str


# ---- studies -------------------------------------------------------------------------------


class NewStudy(Body):
    name: Text = Field(min_length=1, max_length=NAME_LENGTH)
    description: Text = Field("", max_length=DESCRIPTION_LENGTH)
    organisation_ids: list[Id] = Field(default=[], max_length=MAX_REFS)
    datasets: list[Name] = Field(default=[], max_length=MAX_REFS)
    members: list[Id | Username] = Field(
        default=[], max_length=MAX_REFS, description="User ids or usernames."
    )


class MemberRef(Body):
    user_id: Id | None = None
    username: Username | None = None


class OrganisationRef(Body):
    organisation_id: Id


class DatasetRef(Body):
    name: Name


class StudyOut(View):
    id: int
    name: str
    description: str
    members: list[str]
    organisation_ids: list[int]
    datasets: list[str]
    created_at: datetime


class StudyPage(Page[StudyOut]):
    pass


class DatasetAtNode(View):
    node: str
    organisation_id: int
    schema_: DatasetSchema = Field(alias="schema")
    updated_at: datetime

    model_config = ConfigDict(populate_by_name=True)


class StudyDataset(View):
    name: str
    nodes: list[DatasetAtNode]
    schemas_agree: bool


_SPENT_EPSILON = (
    "basic composition: the sum of the charges' epsilon (a node that reports no rho: the "
    "epsilon its rho amounts to at the limit's delta, rho + 2 sqrt(rho ln(1/delta)))"
)
_REMAINING_EPSILON = (
    "the largest epsilon one more pure query may have: the better of basic_epsilon_remaining "
    "and zcdp_epsilon_remaining"
)
_BASIC_REMAINING = (
    "basic composition: epsilon_limit less epsilon_spent while delta_spent is within "
    "delta_limit, else 0"
)
_ZCDP_REMAINING = "zCDP: sqrt(2 rho_remaining), the epsilon whose rho epsilon^2/2 still fits"
_DELTA_REMAINING = "basic composition: delta_limit less delta_spent"


class DatasetTotal(View):
    """A dataset's total over all studies at a node, by both accountants (basic composition's
    epsilon and delta, zCDP's rho): a charge fits when either is within the limit."""

    rho_limit: float | None
    rho_spent: float
    rho_remaining: float
    epsilon_limit: float | None
    epsilon_spent: float = Field(description=_SPENT_EPSILON)
    epsilon_remaining: float = Field(description=_REMAINING_EPSILON)
    basic_epsilon_remaining: float = Field(description=_BASIC_REMAINING)
    zcdp_epsilon_remaining: float = Field(description=_ZCDP_REMAINING)
    delta_limit: float | None
    delta_spent: float = Field(description="basic composition: the sum of the charges' delta")
    delta_remaining: float = Field(description=_DELTA_REMAINING)
    charges: int


class NodeBudget(View):
    """A study's allocation at a node, by both accountants, as `DatasetTotal`; `*_available`:
    the lesser of what is left of the allocation and of the dataset's total."""

    node: str
    rho_limit: float | None
    rho_spent: float
    rho_remaining: float
    epsilon_limit: float | None
    epsilon_spent: float = Field(description=_SPENT_EPSILON)
    epsilon_remaining: float = Field(description=_REMAINING_EPSILON)
    basic_epsilon_remaining: float = Field(description=_BASIC_REMAINING)
    zcdp_epsilon_remaining: float = Field(description=_ZCDP_REMAINING)
    delta_limit: float | None
    delta_spent: float = Field(description="basic composition: the sum of the charges' delta")
    delta_remaining: float = Field(description=_DELTA_REMAINING)
    charges: int
    dataset_total: DatasetTotal | None
    rho_available: float
    epsilon_available: float
    delta_available: float
    reported_at: datetime | None


class DatasetBudget(View):
    dataset: str
    rho_remaining: float | None
    epsilon_remaining: float | None
    delta_remaining: float | None
    nodes: list[NodeBudget]


class StudyBudget(View):
    study_id: int
    composition: str = Field(
        description="'basic or zcdp': a charge is admitted when basic composition or zCDP is "
        "within the limit"
    )
    datasets: list[DatasetBudget]


# ---- queries -------------------------------------------------------------------------------


class QueryError(View):
    code: str
    message: str


class TaskView(View):
    node: str
    party_id: int
    status: TaskStatus
    stage: str | None
    error: str | None


class QueryOut(View):
    id: int
    study_id: int
    dataset: str
    statistic: str
    query: QueryJSON
    status: QueryStatus
    error: QueryError | None
    result: ResultJSON = Field(description="The pooled result, once succeeded.")
    min_count_applied: int | None
    tasks: list[TaskView]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class QueryPage(Page[QueryOut]):
    pass


class DryRunNode(View):
    id: int
    name: str
    organisation: str
    takes_part: bool
    reason: str | None
    disclosure: DisclosureRules = Field(
        description="the disclosure mode and rules this node applies to the query's dataset "
        "(published in its policy; in the 'dp' mode every query must carry 'dp')"
    )


class QueryCostView(View):
    """A query's estimated cost among the parties that would take part (`smpc.cost`)."""

    cells: int = Field(description="values the protocol computes for the result and may open")
    comparisons: int = Field(
        description="secure comparisons and their equivalents (bit decompositions, noise "
        "coins, PRF bits, rounded ratios): the work that dominates a run"
    )


class QueryLimitsView(View):
    """The coordinator's limits on queries, and the caller's own current use of them."""

    max_cells: int
    max_comparisons: int
    max_concurrent_queries_per_researcher: int
    max_concurrent_queries_per_study: int
    max_queries_per_minute: int
    concurrent_queries: int = Field(description="the caller's queries pending or running")
    queries_last_minute: int = Field(description="the caller's submissions in the last 60 s")


class DryRun(View):
    valid: bool
    statistic: str
    dataset: str
    query: QueryJSON
    nodes: list[DryRunNode]
    parties: int
    min_count_applied: int
    reveals: str
    intermediates: str
    epsilon: float
    delta: float
    rules: list[str] = Field(
        description="the disclosure rules that apply: the strictest of the taking part nodes'"
    )
    expected_error: dict[str, str] = Field(
        description="per result key, how far a released value may be from the exact one"
    )
    cost: QueryCostView
    limits: QueryLimitsView


# ---- synthesis and releases ----------------------------------------------------------------


class JobProgress(View):
    stage: str
    message: str
    epoch: int | None
    epochs: int | None
    loss: float | None


class SynthesisJobView(View):
    id: int
    node: str
    party_id: int | None = Field(None, description="Pooled: the node's party id.")
    status: SynthesisJobStatus
    progress: JobProgress | None
    gates: list[GateOutcome] | None
    approvals_required: int | None
    decisions: list[StewardDecision] | None
    error: QueryError | None
    release_id: int | None
    deadline: datetime
    updated_at: datetime


class SkippedNode(View):
    node: str
    reason: str


class SynthesisRequestOut(View):
    id: int
    study_id: int
    requested_by: str
    dataset: str
    generator: str
    spec: SynthesisSpec
    scope: Literal["local", "pooled"] = "local"
    status: SynthesisRequestStatus
    at_rest: bool = Field(description="Every job ended or awaits its stewards.")
    jobs: list[SynthesisJobView]
    skipped: list[SkippedNode]
    created_at: datetime


class SynthesisRequestPage(Page[SynthesisRequestOut]):
    pass


class ReleaseLinks(View):
    parquet: str
    csv: str
    report: str


class ReleaseSigner(View):
    steward: str
    fingerprint: str | None = Field(description="SHA256 fingerprint of the steward's key.")
    at: datetime
    node: str | None = Field(None, description="The node whose steward signed.")


class ReleaseOut(View):
    id: int
    study_id: int
    request_id: int
    job_id: int = Field(description="The job that published it (pooled: party 0's).")
    node: str = Field(description="The node that published it (pooled: party 0's).")
    dataset: str
    rows: int
    sha256: str
    csv_sha256: str
    parquet_bytes: int
    report_sha256: str = Field(description="Of the report (pooled: the first node's).")
    scope: Literal["local", "pooled"] = "local"
    parties: list[str] = Field(
        default_factory=list,
        description="The nodes whose rows it was made from (pooled: every party, in order).",
    )
    card: dict[str, Any] = Field(
        description="The ReleaseCard the node uploaded; pooled: the candidate's shared part "
        "and `nodes`, each node's metrics, gates, report and card hashes and approvals."
    )
    signed_by: list[ReleaseSigner] = Field(
        default_factory=list,
        description="The stewards whose signed approvals the coordinator verified.",
    )
    created_at: datetime
    links: ReleaseLinks


class ReleasePage(Page[ReleaseOut]):
    pass


# ---- operations ----------------------------------------------------------------------------


class Health(View):
    status: Literal["ok"]


class Ready(View):
    status: Literal["ready"]


class AuditEvent(View):
    id: int
    at: datetime
    actor: str
    action: str
    subject: str
    details: dict[str, Any]
    prev_hash: str | None = None
    hash: str
    signature: str | None = None  # the coordinator key's over `hash`; None: before signing


class AuditPage(Page[AuditEvent]):
    pass


class AuditHead(View):
    seq: int  # the event's id
    hash: str
    signature: str | None


class AuditVerification(View):
    ok: bool
    entries: int
    first_bad_id: int | None
    problem: str | None = None
    signed: int = 0
    legacy_unsigned: int = 0  # events from before signing, covered by the first signed one
    key_fingerprint: str | None = None
    head: AuditHead | None = None


class CoordinatorKeyOut(View):
    """The coordinator's public signing key: nodes and auditors pin its fingerprint."""

    algorithm: str = "Ed25519"
    public_key_pem: str
    fingerprint: str


class NodeAuditHeadOut(View):
    """A node's audit log head as it sent it: its entry count, last hash and the node key's
    signature of that entry."""

    id: int
    node: str
    entries: int
    last_hash: str
    signature: str
    received_at: datetime


class NodeAuditHeadPage(Page[NodeAuditHeadOut]):
    pass


__all__ = [
    "Ack",
    "AuditEvent",
    "AuditHead",
    "AuditPage",
    "AuditVerification",
    "BudgetReportAck",
    "CoordinatorKeyOut",
    "DatasetRef",
    "DryRun",
    "ErrorBody",
    "ErrorDetails",
    "FieldError",
    "Health",
    "LoggedOut",
    "MemberRef",
    "NewNode",
    "NewOrganisation",
    "NewStudy",
    "NewUser",
    "NodeAuditHeadOut",
    "NodeAuditHeadPage",
    "NodeOut",
    "NodePage",
    "NodeWithEnrolment",
    "NodeWithKey",
    "OrganisationOut",
    "OrganisationPage",
    "OrganisationRef",
    "Page",
    "PasswordChange",
    "PasswordChanged",
    "QueryOut",
    "QueryPage",
    "Ready",
    "RefreshRequest",
    "RegisteredDataset",
    "ReleaseOut",
    "ReleasePage",
    "StudyBudget",
    "StudyDataset",
    "StudyOut",
    "StudyPage",
    "SynthesisRequestOut",
    "SynthesisRequestPage",
    "Token",
    "UserOut",
    "UserPage",
]
