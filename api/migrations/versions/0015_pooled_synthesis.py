"""pooled synthesis: a request's scope and agreed hashes, a job's party and MPC address, its
node's card and report until publication, the `approved` status, a release's scope and one
report per node

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 17:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here: a migration must not change when the models do.
SCOPES = ("local", "pooled")
BEFORE = (
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
AFTER = (*BEFORE[:4], "approved", *BEFORE[4:])
FILE_KINDS = ("data", "report")


def one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    with op.batch_alter_table("synthesis_requests") as batch:
        batch.add_column(
            sa.Column("scope", sa.String(length=8), server_default="local", nullable=False)
        )
        batch.add_column(sa.Column("candidate_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("measurement_sha256", sa.String(length=64), nullable=True))
        batch.create_check_constraint("ck_synthesis_requests_scope", one_of("scope", SCOPES))
    with op.batch_alter_table("synthesis_jobs") as batch:
        batch.add_column(sa.Column("party_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("mpc_host", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("mpc_port", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("mpc_certificate", sa.Text(), nullable=True))
        batch.add_column(sa.Column("card", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("report", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("report_sha256", sa.String(length=64), nullable=True))
        batch.drop_constraint("ck_synthesis_jobs_status", type_="check")
        batch.create_check_constraint("ck_synthesis_jobs_status", one_of("status", AFTER))
    with op.batch_alter_table("releases") as batch:
        batch.add_column(
            sa.Column("scope", sa.String(length=8), server_default="local", nullable=False)
        )
        batch.create_check_constraint("ck_releases_scope", one_of("scope", SCOPES))
    with op.batch_alter_table("release_files") as batch:
        batch.drop_constraint("ck_release_files_kind", type_="check")
        batch.alter_column(
            "kind", type_=sa.String(80), existing_type=sa.String(16), existing_nullable=False
        )
        batch.create_check_constraint(
            "ck_release_files_kind", f"{one_of('kind', FILE_KINDS)} OR kind LIKE 'report:%'"
        )


def downgrade() -> None:
    op.execute("DELETE FROM release_files WHERE kind LIKE 'report:%'")
    with op.batch_alter_table("release_files") as batch:
        batch.drop_constraint("ck_release_files_kind", type_="check")
        batch.alter_column(
            "kind", type_=sa.String(16), existing_type=sa.String(80), existing_nullable=False
        )
        batch.create_check_constraint("ck_release_files_kind", one_of("kind", FILE_KINDS))
    with op.batch_alter_table("releases") as batch:
        batch.drop_constraint("ck_releases_scope", type_="check")
        batch.drop_column("scope")
    op.execute("UPDATE synthesis_jobs SET status = 'awaiting_review' WHERE status = 'approved'")
    with op.batch_alter_table("synthesis_jobs") as batch:
        batch.drop_constraint("ck_synthesis_jobs_status", type_="check")
        batch.create_check_constraint("ck_synthesis_jobs_status", one_of("status", BEFORE))
        for column in (
            "report_sha256",
            "report",
            "card",
            "mpc_certificate",
            "mpc_port",
            "mpc_host",
            "party_id",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("synthesis_requests") as batch:
        batch.drop_constraint("ck_synthesis_requests_scope", type_="check")
        for column in ("measurement_sha256", "candidate_sha256", "scope"):
            batch.drop_column(column)
