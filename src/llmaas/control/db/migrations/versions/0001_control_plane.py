"""Control plane: tenants, API keys, model prices, budget ledgers, usage records, audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _limit_columns() -> list[sa.Column]:
    return [
        sa.Column("rpm", sa.Integer()),
        sa.Column("tpm", sa.Integer()),
        sa.Column("max_parallel", sa.Integer()),
        sa.Column("budget_pico", sa.BigInteger()),
        sa.Column("budget_period", sa.String(16), nullable=False, server_default="monthly"),
        sa.Column("budget_alert_fraction", sa.Float(), nullable=False, server_default="0.8"),
    ]


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("metadata", sa.JSON()),
        *_limit_columns(),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id"), nullable=False, index=True),
        sa.Column("name", sa.String(200), nullable=False, server_default=""),
        sa.Column("prefix", sa.String(32), nullable=False, index=True),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("models", sa.JSON()),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("expires_at", ts),
        sa.Column("revoked_at", ts),
        sa.Column("last_used_at", ts),
        sa.Column("rotated_from", sa.String(40)),
        *_limit_columns(),
    )
    op.create_table(
        "model_prices",
        sa.Column("model", sa.String(300), primary_key=True),
        sa.Column("input_pico", sa.BigInteger(), nullable=False),
        sa.Column("output_pico", sa.BigInteger(), nullable=False),
        sa.Column("training_pico", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", ts, nullable=False),
    )
    op.create_table(
        "budget_ledgers",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("scope_id", sa.String(40), nullable=False),
        sa.Column("period_start", sa.String(10), nullable=False),
        sa.Column("spent_pico", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("reserved_pico", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("alerted", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.UniqueConstraint("scope", "scope_id", "period_start"),
    )
    op.create_table(
        "usage_records",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(40)),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_pico", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
    )
    op.create_index("ix_usage_tenant_time", "usage_records", ["tenant_id", "created_at"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", ts, nullable=False),
        sa.Column("actor_key_id", sa.String(40)),
        sa.Column("actor_tenant_id", sa.String(40)),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False, index=True),
        sa.Column("target_type", sa.String(32), nullable=False),
        sa.Column("target_id", sa.String(300), nullable=False),
        sa.Column("tenant_id", sa.String(40)),
        sa.Column("source_ip", sa.String(64)),
        sa.Column("request_id", sa.String(64)),
        sa.Column("before", sa.JSON()),
        sa.Column("after", sa.JSON()),
    )
    op.create_index("ix_audit_tenant_time", "audit_log", ["tenant_id", "at"])
    # The audit log is append-only at the database level too, not only by convention in the code.
    if op.get_bind().dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
            )
    else:
        op.execute(
            "CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    for table in ("audit_log", "usage_records", "budget_ledgers", "model_prices", "api_keys", "tenants"):
        op.drop_table(table)
