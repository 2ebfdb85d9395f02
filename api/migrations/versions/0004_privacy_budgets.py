"""privacy budgets: what each study spent of each node's budget, as the node reported it

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 11:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "node_budgets",
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("dataset", sa.String(length=64), nullable=False),
        sa.Column("epsilon_spent", sa.Double(), nullable=False),
        sa.Column("delta_spent", sa.Double(), nullable=False),
        sa.Column("charges", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("node_id", "study_id", "dataset"),
    )
    with op.batch_alter_table("nodes") as batch_op:
        batch_op.add_column(
            sa.Column("budget_reported_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch_op:
        batch_op.drop_column("budget_reported_at")
    op.drop_table("node_budgets")
