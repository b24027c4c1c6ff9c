"""Deployment settings per catalog model: replicas, autoscaling and per-replica engine settings an admin changed.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("catalog_models", sa.Column("deployment", sa.JSON()))


def downgrade() -> None:
    op.drop_column("catalog_models", "deployment")
