"""The run-time model catalog: registered base models, their sources, capabilities and visibility.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "catalog_models",
        sa.Column("id", sa.String(300), primary_key=True),
        sa.Column("source_type", sa.String(16), nullable=False),
        sa.Column("source", sa.String(1000), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("context_length", sa.Integer()),
        sa.Column("max_seqs", sa.Integer()),
        sa.Column("capabilities", sa.JSON(), nullable=False),
        sa.Column("tenants", sa.JSON()),
        sa.Column("load_at_start", sa.Boolean(), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("catalog_models")
