"""Stored responses of the Responses API (POST /v1/responses with `store`, true by default).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(40)),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("input_items", sa.JSON(), nullable=False),
        sa.Column("output", sa.JSON(), nullable=False),
        sa.Column("usage", sa.JSON()),
        sa.Column("previous_response_id", sa.String(64)),
        sa.Column("metadata", sa.JSON()),
    )
    op.create_index("ix_responses_tenant_time", "responses", ["tenant_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_responses_tenant_time", table_name="responses")
    op.drop_table("responses")
