"""Web console sessions. Signing in with an API key creates a session: the browser's cookie holds a random
token, the database its SHA-256 (a stolen database row does not sign anyone in), with the key it speaks for and
a CSRF token. Every page asks the key store for the key's current principal, so a revoked key, an expired one or
a disabled tenant ends its sessions at once; signing out deletes the row, on every process at once."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select

from llmaas.control.clock import aware, utcnow
from llmaas.control.db.database import Database
from llmaas.control.db.models import ApiKey, ConsoleSession, Tenant


@dataclass(frozen=True, slots=True)
class Session:
    key_id: str
    csrf: str
    key_name: str = ""  # shown in the console's header, with the tenant's name
    tenant_name: str = ""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    def __init__(self, db: Database, ttl_s: float) -> None:
        self.db, self.ttl = db, timedelta(seconds=ttl_s)

    def create(self, key_id: str) -> tuple[str, Session]:
        """A new session for `key_id`: (the cookie's token, the session)."""
        token, now = secrets.token_urlsafe(32), utcnow()
        session = Session(key_id, secrets.token_urlsafe(24))  # names are read with the session
        with self.db.session() as s:
            s.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < now))  # sessions nobody ended
            s.add(ConsoleSession(id=_digest(token), key_id=key_id, csrf=session.csrf, created_at=now,
                                 expires_at=now + self.ttl))
        return token, session

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        with self.db.session() as s:
            found = s.execute(select(ConsoleSession, ApiKey.name, Tenant.name)
                              .join(ApiKey, ApiKey.id == ConsoleSession.key_id)
                              .join(Tenant, Tenant.id == ApiKey.tenant_id)
                              .where(ConsoleSession.id == _digest(token))).first()
            if found is None or aware(found[0].expires_at) <= utcnow():
                return None
            row, key_name, tenant_name = found
            return Session(row.key_id, row.csrf, key_name or "", tenant_name or "")

    def end(self, token: str | None) -> None:
        if token:
            with self.db.session() as s:
                s.execute(delete(ConsoleSession).where(ConsoleSession.id == _digest(token)))
