"""node replies: a node's retried step on a task or synthesis job answers what the first did

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-08 12:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "node_replies",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("node_id", sa.Integer(), sa.ForeignKey("nodes.id"), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("step", sa.String(32), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("node_id", "subject", "step", name="uq_node_replies_node_subject_step"),
    )
    op.create_index("ix_node_replies_created_at", "node_replies", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_node_replies_created_at", table_name="node_replies")
    op.drop_table("node_replies")
