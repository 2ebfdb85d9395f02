"""node identities: each node's long-term certificate and its fingerprint

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 14:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL until the node's next hello registers its identity
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("identity_certificate", sa.Text(), nullable=True))
        batch.add_column(sa.Column("identity_fingerprint", sa.String(length=71), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("identity_fingerprint")
        batch.drop_column("identity_certificate")
