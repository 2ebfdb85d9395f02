"""OIDC users: `users.auth_provider` ("local" or an issuer) and `users.subject` (its `sub`)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 14:20:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("auth_provider", sa.String(255), nullable=False, server_default="local")
        )
        batch.add_column(sa.Column("subject", sa.String(255), nullable=True))
        batch.create_unique_constraint("uq_users_provider_subject", ["auth_provider", "subject"])


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_constraint("uq_users_provider_subject", type_="unique")
        batch.drop_column("subject")
        batch.drop_column("auth_provider")
