"""The database handle: engine + sessions + migrations. SQLite runs in WAL mode so readers never
block the writer; PostgreSQL is used as is. Built by `Database(url)`, never at import."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from llmaas.control.db import json_text

log = logging.getLogger("llmaas.db")

MIGRATIONS = Path(__file__).with_name("migrations")


def normalize_url(url: str) -> str:
    """Accept the URLs people paste (postgresql://, postgres://) and use psycopg 3 for them."""
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme):]
    return url


class Database:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = normalize_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        # json_text: lone surrogates become U+FFFD on the way in and out (rows written before the API refused
        # them still read; see json_text).
        kw: dict = {"echo": echo, "future": True, "json_serializer": json_text.dumps,
                    "json_deserializer": json_text.loads}
        if self.is_sqlite:
            kw["connect_args"] = {"check_same_thread": False, "timeout": 30}
            _private_sqlite_file(self.url)
        else:
            # connect_timeout / pool_timeout: a database that does not answer fails a request in seconds (a 503).
            kw.update(pool_size=10, max_overflow=20, pool_pre_ping=True, pool_timeout=10,
                      connect_args={"connect_timeout": 5})
        self.engine: Engine = create_engine(self.url, **kw)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer; threads of this process that write on the hot path (budget reservations,
        # the meter) take this lock first, so they queue here in microseconds instead of in SQLite's busy
        # handler, which sleeps in steps of milliseconds. A no-op for PostgreSQL (row locks suffice).
        self.write_lock: threading.Lock | contextlib.nullcontext = (
            threading.Lock() if self.is_sqlite else contextlib.nullcontext())

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed on success, rolled back on error."""
        s = self.sessions()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    def sql(self, statement: str) -> str:
        """Adapt a statement written with :name parameters to the driver's paramstyle (sqlite3 takes
        it as is; psycopg wants %(name)s)."""
        return statement if self.is_sqlite else re.sub(r"(?<!:):(\w+)", r"%(\1)s", statement)

    @contextmanager
    def raw_transaction(self) -> Iterator[Any]:
        """A DBAPI cursor in a write transaction, for the few statements on the request hot path where
        SQLAlchemy's per-statement overhead (~0.1 ms) would dominate. Committed on success."""
        with self.write_lock:
            conn = self.engine.raw_connection()
            try:
                cur = conn.cursor()
                if self.is_sqlite:
                    cur.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock across processes
                yield cur
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            finally:
                conn.close()

    def migrate(self) -> None:
        """Bring the schema to the latest Alembic revision (idempotent; serialised across processes)."""
        logging.getLogger("alembic").setLevel(logging.WARNING)  # its INFO lines are noise on every start
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            if not self.is_sqlite:  # two gateways starting together must not both run the migration
                conn.execute(text("SELECT pg_advisory_xact_lock(724311)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints, safe against corruption in WAL mode
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _private_sqlite_file(url: str) -> None:
    """Create the SQLite file (and its directory) owner-only before SQLite does: it would use the umask
    (often 0644), and the database holds key hashes, prompts and spend. SQLite gives the -wal and -shm
    files the database file's mode. An existing file is tightened to 0600 as well."""
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    p = Path(path)
    if not p.parent.exists():
        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o600))
    for f in (p, p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm")):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if f.stat().st_mode & 0o077:
                f.chmod(0o600)
