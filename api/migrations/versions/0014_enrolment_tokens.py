"""enrolment tokens: the one-time token that registers a node's long-term key

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 15:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL: no token outstanding (a node enrolled before has none: an administrator resets its
    # identity to issue one, or it registered its key already)
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("enrolment_token_hash", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column("enrolment_expires_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("enrolment_expires_at")
        batch.drop_column("enrolment_token_hash")
