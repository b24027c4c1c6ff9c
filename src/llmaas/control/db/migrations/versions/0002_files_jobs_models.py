"""Files, the durable job queue (jobs, events, checkpoints) and tenant-owned models.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "files",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(300), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_details", sa.String(4000)),
        sa.Column("meta", sa.JSON()),
    )
    op.create_index("ix_files_tenant_time", "files", ["tenant_id", "created_at"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(40)),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("started_at", ts),
        sa.Column("finished_at", ts),
        sa.Column("lease_owner", sa.String(80)),
        sa.Column("lease_expires_at", ts),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("state", sa.JSON()),
        sa.Column("result", sa.JSON()),
        sa.Column("error", sa.JSON()),
    )
    op.create_index("ix_jobs_tenant_time", "jobs", ["tenant_id", "created_at"])
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("type", sa.String(8), nullable=False),
        sa.Column("message", sa.String(2000), nullable=False),
        sa.Column("data", sa.JSON()),
    )
    op.create_index("ix_job_events_job", "job_events", ["job_id", "id"])
    op.create_table(
        "job_checkpoints",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("job_id", sa.String(40), nullable=False, index=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("model_id", sa.String(300), nullable=False),
        sa.UniqueConstraint("job_id", "step"),
    )
    op.create_table(
        "tenant_models",
        sa.Column("id", sa.String(300), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("base_model", sa.String(300), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("step", sa.Integer()),
        sa.Column("adapter_path", sa.String(1000), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("lineage", sa.JSON(), nullable=False),
    )
    op.create_index("ix_tenant_models_tenant", "tenant_models", ["tenant_id"])


def downgrade() -> None:
    for table in ("tenant_models", "job_checkpoints", "job_events", "jobs", "files"):
        op.drop_table(table)
