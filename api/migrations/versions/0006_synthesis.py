"""synthesis: requests, one job per node, releases and their files

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 09:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here: a migration must not change when the models do.
SYNTHESIS_JOB_STATUSES = (
    "pending",
    "offered",
    "training",
    "awaiting_review",
    "gated",
    "released",
    "rejected",
    "refused",
    "failed",
)
RELEASE_FILE_KINDS = ("data", "report")


def one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "synthesis_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("requested_by", sa.Integer(), nullable=False),
        sa.Column("dataset", sa.String(length=64), nullable=False),
        sa.Column("generator", sa.String(length=32), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("skipped", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"]),
        sa.ForeignKeyConstraint(["requested_by"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("synthesis_requests") as batch_op:
        batch_op.create_index("ix_synthesis_requests_study_id", ["study_id"], unique=False)

    op.create_table(
        "synthesis_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("progress_stage", sa.String(length=64), nullable=True),
        sa.Column("progress_message", sa.Text(), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("epochs", sa.Integer(), nullable=True),
        sa.Column("loss", sa.Double(), nullable=True),
        sa.Column("gates", sa.JSON(), nullable=True),
        sa.Column("approvals_required", sa.Integer(), nullable=True),
        sa.Column("decisions", sa.JSON(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            one_of("status", SYNTHESIS_JOB_STATUSES), name="ck_synthesis_jobs_status"
        ),
        sa.ForeignKeyConstraint(["request_id"], ["synthesis_requests.id"]),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("synthesis_jobs") as batch_op:
        batch_op.create_index("ix_synthesis_jobs_request_id", ["request_id"], unique=False)
        batch_op.create_index("ix_synthesis_jobs_node_id", ["node_id"], unique=False)
        batch_op.create_index("ix_synthesis_jobs_status", ["status"], unique=False)

    op.create_table(
        "releases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("dataset", sa.String(length=64), nullable=False),
        sa.Column("card", sa.JSON(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("csv_sha256", sa.String(length=64), nullable=False),
        sa.Column("parquet_bytes", sa.Integer(), nullable=False),
        sa.Column("report_sha256", sa.String(length=64), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["synthesis_jobs.id"]),
        sa.ForeignKeyConstraint(["request_id"], ["synthesis_requests.id"]),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"]),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id"),
    )
    with op.batch_alter_table("releases") as batch_op:
        batch_op.create_index("ix_releases_request_id", ["request_id"], unique=False)
        batch_op.create_index("ix_releases_study_id", ["study_id"], unique=False)

    op.create_table(
        "release_files",
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint(one_of("kind", RELEASE_FILE_KINDS), name="ck_release_files_kind"),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("release_id", "kind"),
    )


def downgrade() -> None:
    op.drop_table("release_files")
    with op.batch_alter_table("releases") as batch_op:
        batch_op.drop_index("ix_releases_study_id")
        batch_op.drop_index("ix_releases_request_id")
    op.drop_table("releases")
    with op.batch_alter_table("synthesis_jobs") as batch_op:
        batch_op.drop_index("ix_synthesis_jobs_status")
        batch_op.drop_index("ix_synthesis_jobs_node_id")
        batch_op.drop_index("ix_synthesis_jobs_request_id")
    op.drop_table("synthesis_jobs")
    with op.batch_alter_table("synthesis_requests") as batch_op:
        batch_op.drop_index("ix_synthesis_requests_study_id")
    op.drop_table("synthesis_requests")
