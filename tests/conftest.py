"""Fixtures shared by unit and integration tests: the real PostgreSQL that CI provides."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema on the PostgreSQL of LLMAAS_TEST_DATABASE_URL (CI sets it), dropped afterwards."""
    base = os.environ.get("LLMAAS_TEST_DATABASE_URL")
    if not base:
        pytest.skip("LLMAAS_TEST_DATABASE_URL is not set (CI sets it)")
    import psycopg

    schema = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(base, autocommit=True) as c:
        c.execute(f"CREATE SCHEMA {schema}")
    yield f"{base}?options=-csearch_path%3D{schema}"
    with psycopg.connect(base, autocommit=True) as c:
        c.execute(f"DROP SCHEMA {schema} CASCADE")
