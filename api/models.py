"""The coordinator's tables. Dataset *schemas* only: the coordinator never stores a row."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, get_args

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from tessera.schemas import QueryStatus, SynthesisJobStatus, TaskStatus


def one_of(column: str, values: tuple[str, ...]) -> str:
    """A CHECK constraint's condition: `column` holds one of `values`."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


ROLES = ("admin", "researcher", "steward")
QUERY_STATUSES: tuple[str, ...] = get_args(QueryStatus)
TASK_STATUSES: tuple[str, ...] = get_args(TaskStatus)
SYNTHESIS_JOB_STATUSES: tuple[str, ...] = get_args(SynthesisJobStatus)
RELEASE_FILE_KINDS = ("data", "report")
# a pooled release keeps every node's report, as `report:<node name>`
RELEASE_FILE_KIND = f"{one_of('kind', RELEASE_FILE_KINDS)} OR kind LIKE 'report:%'"
SYNTHESIS_SCOPES = ("local", "pooled")


def utcnow() -> datetime:
    """The system time: the default of columns whose time no rule reads. The services take
    every time a rule compares from the session's clock (`api.clock.now`)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on every backend (SQLite keeps no zone: it is UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the coordinator stores timezone-aware UTC only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON(none_as_null=True)}


class Organisation(Base):
    __tablename__ = "organisations"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


LOCAL_PROVIDER = "local"


class User(Base):
    """A person. `auth_provider` is "local" (a password here) or the issuer of an OIDC
    provider; an external user is known by (issuer, `subject`) and has no password."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(one_of("role", ROLES), name="ck_users_role"),
        UniqueConstraint("auth_provider", "subject", name="uq_users_provider_subject"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column()  # set: no login, no token works
    auth_provider: Mapped[str] = mapped_column(
        String(255), default=LOCAL_PROVIDER, server_default=LOCAL_PROVIDER
    )
    subject: Mapped[str | None] = mapped_column(String(255))  # the provider's `sub`


class UserSession(Base):
    """One login: its access tokens carry its id (`sid`), its refresh tokens point at it.
    Revoking it (logout, password change, a reused refresh token, the user disabled) stops
    both at once, on every replica: each request reads it."""

    __tablename__ = "user_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column()  # no refresh after this: log in again
    revoked_at: Mapped[datetime | None] = mapped_column()
    revoked_reason: Mapped[str | None] = mapped_column(String(32))


class RefreshToken(Base):
    """A refresh token, stored as its SHA-256; `used_at` once it was exchanged (rotated)."""

    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("user_sessions.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column()


class LoginThrottle(Base):
    """Recent login failures of one username (`user:<name>`) or client address
    (`address:<ip>`), and until when further attempts are refused."""

    __tablename__ = "login_throttles"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(index=True)
    locked_until: Mapped[datetime | None] = mapped_column()


class Node(Base):
    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    api_key_id: Mapped[str] = mapped_column(String(32), unique=True)
    api_key_hash: Mapped[str] = mapped_column(String(64))
    agent_version: Mapped[str | None] = mapped_column(String(64))
    policy: Mapped[dict[str, Any] | None] = mapped_column()
    # the node's long-term certificate, registered at its first hello (`tessera node init`)
    identity_certificate: Mapped[str | None] = mapped_column(Text)
    identity_fingerprint: Mapped[str | None] = mapped_column(String(71))
    # the one-time token that registers the node's key (SHA-256; cleared once used)
    enrolment_token_hash: Mapped[str | None] = mapped_column(String(64))
    enrolment_expires_at: Mapped[datetime | None] = mapped_column()
    last_seen_at: Mapped[datetime | None] = mapped_column()
    last_poll_at: Mapped[datetime | None] = mapped_column()  # its agent's last task poll
    budget_reported_at: Mapped[datetime | None] = mapped_column()  # its last ledger report
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    organisation: Mapped[Organisation] = relationship()


class Dataset(Base):
    """A dataset schema registered by one node (columns, types, levels, bounds)."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("node_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    schema: Mapped[dict[str, Any]] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    node: Mapped[Node] = relationship()


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StudyMember(Base):
    __tablename__ = "study_members"

    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)


class StudyOrganisation(Base):
    __tablename__ = "study_organisations"

    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), primary_key=True)


class StudyDataset(Base):
    __tablename__ = "study_datasets"

    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)


class Query(Base):
    __tablename__ = "queries"
    __table_args__ = (CheckConstraint(one_of("status", QUERY_STATUSES), name="ck_queries_status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    submitted_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    dataset: Mapped[str] = mapped_column(String(64))
    statistic: Mapped[str] = mapped_column(String(32))
    query: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column()
    min_count_applied: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    accept_deadline: Mapped[datetime] = mapped_column()
    deadline: Mapped[datetime] = mapped_column()

    tasks: Mapped[list[Task]] = relationship(back_populates="query", order_by="Task.party_id")


class Task(Base):
    """One node's part in one query: its party id, its MPC address, its opened result."""

    __tablename__ = "tasks"
    __table_args__ = (CheckConstraint(one_of("status", TASK_STATUSES), name="ck_tasks_status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    query_id: Mapped[int] = mapped_column(ForeignKey("queries.id"), index=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"), index=True)
    party_id: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    mpc_host: Mapped[str | None] = mapped_column(String(255))
    mpc_port: Mapped[int | None] = mapped_column(Integer)
    mpc_certificate: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column()
    min_count_applied: Mapped[int | None] = mapped_column(Integer)
    seconds: Mapped[float | None] = mapped_column()
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    progress_stage: Mapped[str | None] = mapped_column(String(64))
    progress_message: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    query: Mapped[Query] = relationship(back_populates="tasks")
    node: Mapped[Node] = relationship()


class NodeBudget(Base):
    """What one study spent of a node's differential-privacy budget on one dataset, as the
    node last reported it (the node's own ledger is authoritative; the limits are in its
    published policy)."""

    __tablename__ = "node_budgets"

    node_id: Mapped[int] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
    )
    study_id: Mapped[int] = mapped_column(
        ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True
    )
    dataset: Mapped[str] = mapped_column(String(64), primary_key=True)
    epsilon_spent: Mapped[float] = mapped_column()  # basic composition: the sum of epsilon
    delta_spent: Mapped[float] = mapped_column()  # and of delta
    charges: Mapped[int] = mapped_column(Integer)
    rho_spent: Mapped[float | None] = mapped_column()  # zCDP; None: a node that did not say


class NodeDatasetBudget(Base):
    """What all studies together spent of a node's differential-privacy budget on one dataset,
    as the node last reported it (for the node's optional total over studies; it counts
    studies this coordinator may not know)."""

    __tablename__ = "node_dataset_budgets"

    node_id: Mapped[int] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
    )
    dataset: Mapped[str] = mapped_column(String(64), primary_key=True)
    epsilon_spent: Mapped[float] = mapped_column()  # basic composition: the sum of epsilon
    delta_spent: Mapped[float] = mapped_column()  # and of delta
    charges: Mapped[int] = mapped_column(Integer)
    rho_spent: Mapped[float | None] = mapped_column()  # zCDP; None: a node that did not say


class SynthesisRequest(Base):
    """A researcher's request that nodes of a study each train a generator on their own copy
    of a dataset and, if their stewards approve, release synthetic data (scope `local`), or
    that they measure one generator together by MPC and release its one dataset once every
    node's stewards approved it (scope `pooled`)."""

    __tablename__ = "synthesis_requests"
    __table_args__ = (
        CheckConstraint(one_of("scope", SYNTHESIS_SCOPES), name="ck_synthesis_requests_scope"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    requested_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    dataset: Mapped[str] = mapped_column(String(64))
    generator: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column()  # the validated `SynthesisSpec`
    # nodes of the study with the dataset whose published policy refused it up front
    skipped: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    scope: Mapped[str] = mapped_column(String(8), default="local", server_default="local")
    # pooled: the hashes the first node's candidate report set (every node must report them)
    candidate_sha256: Mapped[str | None] = mapped_column(String(64))
    measurement_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    jobs: Mapped[list[SynthesisJob]] = relationship(
        back_populates="request", order_by="SynthesisJob.id"
    )
    user: Mapped[User] = relationship()


class SynthesisJob(Base):
    """One node's part of a synthesis request: its training progress, the release gates its
    candidate was held to, and how it ended. Never a value of the data."""

    __tablename__ = "synthesis_jobs"
    __table_args__ = (
        CheckConstraint(one_of("status", SYNTHESIS_JOB_STATUSES), name="ck_synthesis_jobs_status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("synthesis_requests.id"), index=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    progress_stage: Mapped[str | None] = mapped_column(String(64))
    progress_message: Mapped[str | None] = mapped_column(Text)
    epoch: Mapped[int | None] = mapped_column(Integer)
    epochs: Mapped[int | None] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column()
    gates: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    approvals_required: Mapped[int | None] = mapped_column(Integer)
    decisions: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # pooled: the party id (node-id order) and where the node's MPC party listens, with this
    # run's certificate (as a query task's); at approval, the node's card (with its stewards'
    # approvals) and report, kept until the release is published
    party_id: Mapped[int | None] = mapped_column(Integer)
    mpc_host: Mapped[str | None] = mapped_column(String(255))
    mpc_port: Mapped[int | None] = mapped_column(Integer)
    mpc_certificate: Mapped[str | None] = mapped_column(Text)
    card: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    report: Mapped[bytes | None] = mapped_column(LargeBinary)
    report_sha256: Mapped[str | None] = mapped_column(String(64))
    deadline: Mapped[datetime] = mapped_column()  # to reach awaiting_review (or an end) by
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    request: Mapped[SynthesisRequest] = relationship(back_populates="jobs")
    node: Mapped[Node] = relationship()


class Release(Base):
    """A published synthetic dataset: the card the node uploaded (generator, metrics, gates,
    approvals, epsilon) and the hashes of what is served. The files are in `release_files`.

    A pooled release belongs to its request: `job_id` and `node_id` are party 0's, the card
    holds every node's part (`nodes`), and `report_sha256` is party 0's report's."""

    __tablename__ = "releases"
    __table_args__ = (CheckConstraint(one_of("scope", SYNTHESIS_SCOPES), name="ck_releases_scope"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("synthesis_jobs.id"), unique=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("synthesis_requests.id"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"))
    dataset: Mapped[str] = mapped_column(String(64))
    card: Mapped[dict[str, Any]] = mapped_column()  # the `ReleaseCard`
    sha256: Mapped[str] = mapped_column(String(64))  # of the Parquet bytes
    csv_sha256: Mapped[str] = mapped_column(String(64))  # of the CSV served from them
    parquet_bytes: Mapped[int] = mapped_column(Integer)
    report_sha256: Mapped[str] = mapped_column(String(64))  # of the HTML report
    rows: Mapped[int] = mapped_column(Integer)
    scope: Mapped[str] = mapped_column(String(8), default="local", server_default="local")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    node: Mapped[Node] = relationship()


class ReleaseFile(Base):
    """A release's data (Parquet, as uploaded) or its report (HTML); a pooled release's
    reports are `report:<node name>`, one per node."""

    __tablename__ = "release_files"
    __table_args__ = (CheckConstraint(RELEASE_FILE_KIND, name="ck_release_files_kind"),)

    release_id: Mapped[int] = mapped_column(
        ForeignKey("releases.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(80), primary_key=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)


class IdempotencyKey(Base):
    """A POST made with an `Idempotency-Key`: the first answer, replayed to every retry with
    the same key and body by the same user (kept `idempotency_ttl_s`)."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "key", name="uq_idempotency_keys_user_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))  # the operation, path and body
    status_code: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(index=True)


class AuditEvent(Base):
    """Append-only, hash-chained: hash = sha256(prev_hash + canonical JSON of the event);
    `signature` is the coordinator key's over the hash (NULL: an event from before signing)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column()
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    signature: Mapped[str | None] = mapped_column(Text)


class NodeAuditHead(Base):
    """A node's audit log head as the node sent it with a poll (entries, last hash, the node
    key's signature of that entry): kept so that a node log rewritten later is caught."""

    __tablename__ = "node_audit_heads"
    __table_args__ = (
        UniqueConstraint("node_id", "entries", "last_hash", name="uq_node_audit_heads_head"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"), index=True)
    entries: Mapped[int] = mapped_column(Integer)
    last_hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column()
