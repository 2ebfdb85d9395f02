"""privacy budgets: what all studies together spent of each node's budget on a dataset

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 10:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "node_dataset_budgets",
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("dataset", sa.String(length=64), nullable=False),
        sa.Column("epsilon_spent", sa.Double(), nullable=False),
        sa.Column("delta_spent", sa.Double(), nullable=False),
        sa.Column("charges", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("node_id", "dataset"),
    )


def downgrade() -> None:
    op.drop_table("node_dataset_budgets")
