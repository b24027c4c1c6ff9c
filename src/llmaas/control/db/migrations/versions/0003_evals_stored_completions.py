"""Eval items, stored chat completions, feedback on them, and the tenants' retention of stored completions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "eval_items",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.UniqueConstraint("job_id", "model", "idx"),
    )
    op.create_table(
        "stored_completions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(40)),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON()),
    )
    op.create_index("ix_stored_completions_tenant_time", "stored_completions", ["tenant_id", "created_at"])
    op.create_table(
        "completion_feedback",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False, index=True),
        sa.Column("completion_id", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(40)),
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("correction", sa.Text()),
        sa.Column("comment", sa.String(2000)),
        sa.Column("created_at", ts, nullable=False),
    )
    op.create_index("ix_completion_feedback_completion", "completion_feedback", ["completion_id", "created_at"])
    with op.batch_alter_table("tenants") as b:
        b.add_column(sa.Column("store_retention_days", sa.Integer()))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as b:
        b.drop_column("store_retention_days")
    for table in ("completion_feedback", "stored_completions", "eval_items"):
        op.drop_table(table)
