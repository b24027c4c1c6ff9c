"""A stored response's `error`: a response whose generation failed is kept too (status failed), as OpenAI does.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("responses") as t:
        t.add_column(sa.Column("error", sa.JSON()))


def downgrade() -> None:
    with op.batch_alter_table("responses") as t:
        t.drop_column("error")
