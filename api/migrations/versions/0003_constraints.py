"""status and role constraints, task progress columns, unbounded audit subjects

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 08:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here: a migration must not change when the models do.
ROLES = ("admin", "researcher", "steward")
QUERY_STATUSES = ("pending", "running", "succeeded", "failed")
TASK_STATUSES = (
    "pending",
    "offered",
    "accepted",
    "running",
    "done",
    "refused",
    "failed",
    "cancelled",
)


def one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.create_check_constraint("ck_users_role", one_of("role", ROLES))
    with op.batch_alter_table("queries") as batch_op:
        batch_op.create_check_constraint("ck_queries_status", one_of("status", QUERY_STATUSES))
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.alter_column("stage", new_column_name="progress_stage")
        batch_op.alter_column("stage_message", new_column_name="progress_message")
        batch_op.create_check_constraint("ck_tasks_status", one_of("status", TASK_STATUSES))
    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.alter_column(
            "subject", type_=sa.Text(), existing_type=sa.String(200), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.alter_column(
            "subject", type_=sa.String(200), existing_type=sa.Text(), existing_nullable=False
        )
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.drop_constraint("ck_tasks_status", type_="check")
        batch_op.alter_column("progress_message", new_column_name="stage_message")
        batch_op.alter_column("progress_stage", new_column_name="stage")
    with op.batch_alter_table("queries") as batch_op:
        batch_op.drop_constraint("ck_queries_status", type_="check")
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_constraint("ck_users_role", type_="check")
