"""privacy budgets: the rho each node reports spent, beside basic composition's epsilon and delta

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-12 12:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("node_budgets", "node_dataset_budgets")


def upgrade() -> None:
    # NULL for what was reported before: the coordinator recovers the rho from the (epsilon,
    # delta) it amounted to, as it did, until the node reports again (at its next registration)
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("rho_spent", sa.Double(), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("rho_spent")
