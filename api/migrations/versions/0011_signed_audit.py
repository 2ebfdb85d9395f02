"""signed audit trail: each event's coordinator signature, and the node audit heads received

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-07 14:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL for the events written before: the coordinator's next start appends a signed event
    # whose hash chains over them (api.audit.seal_legacy), and verify reports them as legacy
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("signature", sa.Text(), nullable=True))
    op.create_table(
        "node_audit_heads",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("node_id", sa.Integer(), sa.ForeignKey("nodes.id"), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("node_id", "entries", "last_hash", name="uq_node_audit_heads_head"),
    )
    op.create_index("ix_node_audit_heads_node_id", "node_audit_heads", ["node_id"])


def downgrade() -> None:
    op.drop_index("ix_node_audit_heads_node_id", "node_audit_heads")
    op.drop_table("node_audit_heads")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("signature")
