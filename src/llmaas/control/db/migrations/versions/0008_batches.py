"""Batches (POST /v1/batches): the batches and their lines, with per-line progress; the catalog's batch discount.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "batches",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(40)),
        sa.Column("endpoint", sa.String(40), nullable=False),
        sa.Column("input_file_id", sa.String(40), nullable=False),
        sa.Column("completion_window", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("metadata", sa.JSON()),
        sa.Column("errors", sa.JSON()),
        sa.Column("output_file_id", sa.String(40)),
        sa.Column("error_file_id", sa.String(40)),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("expires_at", ts, nullable=False),
        *(sa.Column(f"{s}_at", ts) for s in ("in_progress", "finalizing", "completed", "failed", "expired",
                                              "cancelling", "cancelled")),
        sa.Column("lease_owner", sa.String(80)),
        sa.Column("lease_expires_at", ts),
    )
    op.create_index("ix_batches_tenant_time", "batches", ["tenant_id", "created_at"])
    op.create_index("ix_batches_status", "batches", ["status"])
    op.create_table(
        "batch_lines",
        sa.Column("batch_id", sa.String(40), primary_key=True),
        sa.Column("line", sa.Integer(), primary_key=True),
        sa.Column("custom_id", sa.String(512)),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("request", sa.JSON()),
        sa.Column("response", sa.JSON()),
        sa.Column("error", sa.JSON()),
        sa.Column("finished_at", ts),
    )
    op.add_column("model_prices", sa.Column("batch_discount", sa.Float()))


def downgrade() -> None:
    op.drop_column("model_prices", "batch_discount")
    op.drop_table("batch_lines")
    op.drop_index("ix_batches_status", "batches")
    op.drop_index("ix_batches_tenant_time", "batches")
    op.drop_table("batches")
