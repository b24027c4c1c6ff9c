"""Alembic environment: run with the connection `Database.migrate` hands over (no alembic.ini)."""

from alembic import context

from llmaas.control.db.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
