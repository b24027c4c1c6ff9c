"""Repair stored text: JSON columns that hold lone UTF-16 surrogate escapes (`\\ud800`, written before the API
refused them) are rewritten with U+FFFD in their place, so they read back as valid Unicode.

Only JSON columns can hold them: a plain text column never could (the drivers refuse to encode such a
string). The audit log is append-only by trigger; its trigger is lifted for this rewrite only, inside the
migration's transaction, and restored before it commits.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

from llmaas.control.db.json_text import repair_json_text

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# table -> (primary key, JSON columns)
JSON_COLUMNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tenants": ("id", ("metadata",)),
    "api_keys": ("id", ("models",)),
    "audit_log": ("id", ("before", "after")),
    "files": ("id", ("meta",)),
    "jobs": ("id", ("spec", "state", "result", "error")),
    "job_events": ("id", ("data",)),
    "job_checkpoints": ("id", ("metrics",)),
    "tenant_models": ("id", ("lineage",)),
    "eval_items": ("id", ("data",)),
    "stored_completions": ("id", ("request", "response", "metadata")),
}


def _damaged(conn: sa.Connection, table: str, pk: str, col: str) -> list[tuple[object, str]]:
    q = conn.dialect.identifier_preparer.quote
    # '!' as the LIKE escape so the backslash is literal on both SQLite and PostgreSQL (whose default escape
    # character is the backslash); lower() because PostgreSQL's LIKE is case-sensitive.
    rows = conn.execute(sa.text(
        f"SELECT {q(pk)}, CAST({q(col)} AS TEXT) FROM {q(table)} "
        f"WHERE lower(CAST({q(col)} AS TEXT)) LIKE :pat ESCAPE '!'"), {"pat": "%\\ud%"}).all()
    out = []
    for key, text in rows:
        fixed = repair_json_text(text)
        if fixed != text:
            out.append((key, fixed))
    return out


def upgrade() -> None:
    conn = op.get_bind()
    sqlite = conn.dialect.name == "sqlite"
    q = conn.dialect.identifier_preparer.quote
    for table, (pk, cols) in JSON_COLUMNS.items():
        for col in cols:
            fixes = _damaged(conn, table, pk, col)
            if not fixes:
                continue
            if table == "audit_log":
                _audit_trigger(sqlite, enabled=False)
            value = ":v" if sqlite else "CAST(:v AS JSON)"
            for key, fixed in fixes:
                conn.execute(sa.text(f"UPDATE {q(table)} SET {q(col)} = {value} WHERE {q(pk)} = :k"),
                             {"v": fixed, "k": key})
            if table == "audit_log":
                _audit_trigger(sqlite, enabled=True)


def _audit_trigger(sqlite: bool, *, enabled: bool) -> None:
    """The append-only guard of 0001, lifted (enabled=False) and put back exactly as 0001 created it."""
    if not sqlite:
        op.execute(f"ALTER TABLE audit_log {'ENABLE' if enabled else 'DISABLE'} TRIGGER audit_log_append_only")
        return
    if not enabled:
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        return
    op.execute("CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
               "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END")


def downgrade() -> None:
    pass  # the replaced characters were never valid text; there is nothing to restore
