"""Budget grants: the slice of a budget ledger each gateway process holds and admits requests against
in memory (see llmaas/control/billing/budget_grants.py).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "budget_grants",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("ledger_id", sa.Integer(), sa.ForeignKey("budget_ledgers.id"), nullable=False, index=True),
        sa.Column("holder", sa.String(120), nullable=False, index=True),
        sa.Column("granted_pico", sa.BigInteger(), nullable=False),
        sa.Column("budget_pico", sa.BigInteger(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("budget_grants")
