"""API keys: created with a secret shown once, stored as a SHA-256 hash, found by their prefix and
compared in constant time; expiry, revocation and rotation. Verified keys are cached for a few
seconds so the hot path does not touch the database."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import deque
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from llmaas.control.auth import audit
from llmaas.control.auth.principal import Context, Limits, Principal, Role
from llmaas.control.auth.tenants import PLATFORM_TENANT, ROLES_AN_OWNER_GRANTS, get_visible
from llmaas.control.clock import aware, unix, utcnow
from llmaas.control.db.database import Database
from llmaas.control.db.models import ApiKey, Tenant
from llmaas.control.limits.view import apply_limits, limits_dict
from llmaas.core.errors import AuthenticationError, InvalidRequestError, NotFoundError, RateLimitError

log = logging.getLogger("llmaas.auth")

KEY_PREFIX = "sk-llmaas-"
_LOOKUP_LEN = len(KEY_PREFIX) + 8


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_status(k: ApiKey, now: datetime | None = None) -> str:
    if k.revoked_at is not None:
        return "revoked"
    if k.expires_at is not None and aware(k.expires_at) <= (now or utcnow()):
        return "expired"
    return "active"


def key_dict(k: ApiKey, secret: str | None = None) -> dict:
    d = {
        "id": k.id, "object": "api_key", "tenant_id": k.tenant_id, "name": k.name,
        "prefix": k.prefix + "…", "role": k.role, "models": k.models, "status": key_status(k),
        "created_at": unix(k.created_at), "expires_at": unix(k.expires_at), "revoked_at": unix(k.revoked_at),
        "last_used_at": unix(k.last_used_at), "rotated_from": k.rotated_from, "limits": limits_dict(k),
    }
    if secret is not None:
        d["key"] = secret  # the only time the secret leaves the server
    return d



def _check_role(ctx: Context, tenant_id: str, role: Any) -> Role:
    try:
        r = Role(role)
    except ValueError:
        raise InvalidRequestError(f"'role' must be one of {', '.join(x.value for x in Role)}.",
                                  param="role") from None
    if r is Role.ADMIN and (not ctx.principal.is_admin or tenant_id != PLATFORM_TENANT):
        raise InvalidRequestError("Admin keys can only be created by an admin, in the platform tenant.",
                                  param="role")
    if not ctx.principal.is_admin and r not in ROLES_AN_OWNER_GRANTS:
        raise InvalidRequestError("Owners may grant owner, member or reader.", param="role")
    return r


def _check_models(models: Any) -> list[str] | None:
    if models is None:
        return None
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise InvalidRequestError("'models' must be a list of model ids, or null for all models.", param="models")
    return models


def _insert_key(s: Session, tenant_id: str, *, name: str, role: Role, models: list[str] | None,
                expires_at: datetime | None, secret: str | None = None,
                rotated_from: str | None = None) -> tuple[ApiKey, str]:
    secret = secret or new_secret()
    k = ApiKey(id="key-" + secrets.token_hex(8), tenant_id=tenant_id, name=name, prefix=secret[:_LOOKUP_LEN],
               key_hash=hash_key(secret), role=role.value, models=models, created_at=utcnow(),
               expires_at=expires_at, rotated_from=rotated_from, budget_period="monthly",
               budget_alert_fraction=0.8)
    s.add(k)
    return k, secret


class KeyService:
    def __init__(self, db: Database, *, cache_ttl_s: float = 5.0, failures_per_minute: int = 20) -> None:
        self.db = db
        self.cache_ttl_s = cache_ttl_s
        self.failures_per_minute = failures_per_minute
        self._cache: dict[str, tuple[Principal, float, datetime | None]] = {}
        self._failures: dict[str, deque[float]] = {}
        self._used: dict[str, datetime] = {}
        self._lock = threading.Lock()

    # --- management (each call runs in the caller's session and writes its audit record) ---

    def create(self, s: Session, ctx: Context, tenant_id: str, *, name: str = "", role: str = "member",
               models: list[str] | None = None, expires_at: datetime | None = None,
               limits: dict | None = None) -> tuple[ApiKey, str]:
        get_visible(s, ctx, tenant_id)
        ctx.principal.require(Role.OWNER)
        if expires_at is not None and aware(expires_at) <= utcnow():
            raise InvalidRequestError("'expires_at' must be in the future.", param="expires_at")
        k, secret = _insert_key(s, tenant_id, name=name or "", role=_check_role(ctx, tenant_id, role),
                                models=_check_models(models), expires_at=expires_at)
        apply_limits(k, limits or {})
        s.flush()
        audit.record(s, ctx, "key.create", "api_key", k.id, tenant_id=tenant_id, after=key_dict(k))
        return k, secret

    def list(self, s: Session, ctx: Context, tenant_id: str) -> list[ApiKey]:
        get_visible(s, ctx, tenant_id)
        ctx.principal.require(Role.OWNER)
        return list(s.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)))

    def get(self, s: Session, ctx: Context, tenant_id: str, key_id: str) -> ApiKey:
        get_visible(s, ctx, tenant_id)
        ctx.principal.require(Role.OWNER)
        k = s.get(ApiKey, key_id)
        if k is None or k.tenant_id != tenant_id:
            raise NotFoundError(f"No API key with id '{key_id}'.", param="key_id")
        return k

    def update(self, s: Session, ctx: Context, tenant_id: str, key_id: str, *, name: str | None = None,
               role: str | None = None, models: Any = ..., limits: dict | None = None) -> ApiKey:
        k = self.get(s, ctx, tenant_id, key_id)
        before = key_dict(k)
        if name is not None:
            k.name = name
        if role is not None:
            k.role = _check_role(ctx, tenant_id, role).value
        if models is not ...:
            k.models = _check_models(models)
        if limits:
            apply_limits(k, limits)
        s.flush()
        self.invalidate()
        after = key_dict(k)
        if after != before:
            audit.record(s, ctx, "key.update", "api_key", k.id, tenant_id=tenant_id, before=before, after=after)
        return k

    def revoke(self, s: Session, ctx: Context, tenant_id: str, key_id: str) -> ApiKey:
        k = self.get(s, ctx, tenant_id, key_id)
        if k.revoked_at is None:
            before = key_dict(k)
            k.revoked_at = utcnow()
            s.flush()
            audit.record(s, ctx, "key.revoke", "api_key", k.id, tenant_id=tenant_id, before=before,
                         after=key_dict(k))
        self.invalidate()
        return k

    def rotate(self, s: Session, ctx: Context, tenant_id: str, key_id: str, *,
               grace_seconds: int = 0) -> tuple[ApiKey, str]:
        """A new secret with the same role, models and limits; the old key stops working now, or after
        `grace_seconds` so running clients can switch."""
        old = self.get(s, ctx, tenant_id, key_id)
        if key_status(old) != "active":
            raise InvalidRequestError(f"Key '{key_id}' is {key_status(old)} and cannot be rotated.", param="key_id")
        if not 0 <= grace_seconds <= 7 * 86400:
            raise InvalidRequestError("'grace_seconds' must be between 0 and 604800.", param="grace_seconds")
        before = key_dict(old)
        new, secret = _insert_key(s, tenant_id, name=old.name, role=Role(old.role), models=old.models,
                                  expires_at=old.expires_at, rotated_from=old.id)
        apply_limits(new, {k: v for k, v in limits_dict(old).items()})
        if grace_seconds:  # never extends a key that would have expired sooner
            grace_end = utcnow() + timedelta(seconds=grace_seconds)
            old.expires_at = min(aware(old.expires_at), grace_end) if old.expires_at else grace_end
        else:
            old.revoked_at = utcnow()
        s.flush()
        self.invalidate()
        audit.record(s, ctx, "key.rotate", "api_key", old.id, tenant_id=tenant_id, before=before,
                     after={"old": key_dict(old), "new": key_dict(new)})
        return new, secret

    def invalidate(self) -> None:
        """Forget verified keys (after any change to keys or tenants made through this process)."""
        with self._lock:
            self._cache.clear()

    # --- authentication (hot path) ---

    def cached(self, secret: str | None, client: str | None) -> Principal | None:
        """The hot path: a recently verified key, without touching the database (None: ask `authenticate`).
        Refuses at once a missing key or a client that sent too many bad ones."""
        self._check_throttle(client)
        if not secret:
            self._fail(client, "missing")
            raise AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer sk-llmaas-...'.")
        hit = self._cache.get(hash_key(secret))
        if hit is not None and hit[1] > time.monotonic() and (hit[2] is None or hit[2] > utcnow()):
            self._used[hit[0].key_id or ""] = utcnow()
            return hit[0]
        return None

    def authenticate(self, secret: str | None, client: str | None) -> Principal:
        """The principal of a bearer secret, or 401 (blocking: looks the key up in the database)."""
        hit = self.cached(secret, client)
        if hit is not None:
            return hit
        assert secret
        digest = hash_key(secret)
        now_m = time.monotonic()
        principal, expires = self._load(secret, digest)
        if principal is None:
            self._fail(client, "invalid")
            raise AuthenticationError(f"Incorrect API key provided: {secret[:_LOOKUP_LEN]}…. "
                                      "Create or rotate keys with the admin API or `llmaas admin keys`.")
        with self._lock:
            self._cache[digest] = (principal, now_m + self.cache_ttl_s, expires)
        self._used[principal.key_id or ""] = utcnow()
        return principal

    def principal_of(self, key_id: str) -> Principal | None:
        """The principal of an active key by its id (work done later on the key's behalf, like a batch's
        lines, runs under its current role, models and limits); None once it is revoked, expired or its
        tenant disabled."""
        with self.db.session() as s:
            row = s.execute(select(ApiKey, Tenant).join(Tenant, Tenant.id == ApiKey.tenant_id)
                            .where(ApiKey.id == key_id)).first()
        if row is None:
            return None
        k, t = row
        if key_status(k) != "active" or t.disabled:
            return None
        return Principal(key_id=k.id, tenant_id=k.tenant_id, role=Role(k.role),
                         models=tuple(k.models) if k.models is not None else None,
                         key_limits=Limits.of(k), tenant_limits=Limits.of(t))

    def _load(self, secret: str, digest: str) -> tuple[Principal | None, datetime | None]:
        with self.db.session() as s:
            rows = s.execute(
                select(ApiKey, Tenant).join(Tenant, Tenant.id == ApiKey.tenant_id)
                .where(ApiKey.prefix == secret[:_LOOKUP_LEN])
            ).all()
        for k, t in rows:
            if hmac.compare_digest(k.key_hash, digest):
                if key_status(k) != "active" or t.disabled:
                    return None, None
                p = Principal(key_id=k.id, tenant_id=k.tenant_id, role=Role(k.role),
                              models=tuple(k.models) if k.models is not None else None,
                              key_limits=Limits.of(k), tenant_limits=Limits.of(t))
                return p, aware(k.expires_at)
        return None, None

    def _check_throttle(self, client: str | None) -> None:
        q = self._failures.get(client or "?")
        if not q:
            return
        cutoff = time.monotonic() - 60
        while q and q[0] < cutoff:
            q.popleft()
        if len(q) >= self.failures_per_minute:
            retry = q[0] + 60 - time.monotonic()
            raise RateLimitError(
                f"Too many requests with invalid API keys from {client}; try again in {retry:.0f} s.", retry)

    def _fail(self, client: str | None, why: str) -> None:
        q = self._failures.setdefault(client or "?", deque())
        q.append(time.monotonic())
        if len(q) in (1, self.failures_per_minute) or len(q) % 50 == 0:
            log.warning("authentication failed (%s key) from %s: %d failures in the last minute",
                        why, client, len(q))

    def pop_last_used(self) -> dict[str, datetime]:
        used, self._used = self._used, {}
        used.pop("", None)
        return used

    # --- bootstrap ---

    def bootstrap(self, admin_key: str | None) -> str | None:
        """Create the platform tenant and an admin key on an empty database. Returns a generated
        secret to print once; with `admin_key` (LLMAAS_ADMIN_KEY) that key is ensured instead."""
        ctx = Context(Principal(key_id=None, tenant_id=PLATFORM_TENANT, role=Role.ADMIN, label="system"))
        with self.db.session() as s:
            if s.get(Tenant, PLATFORM_TENANT) is None:
                s.add(Tenant(id=PLATFORM_TENANT, name="platform", created_at=utcnow(), disabled=False,
                             metadata_={}, budget_period="monthly", budget_alert_fraction=0.8))
                s.flush()
                audit.record(s, ctx, "tenant.create", "tenant", PLATFORM_TENANT, tenant_id=PLATFORM_TENANT)
            if admin_key:
                if len(admin_key) < 20:
                    raise ValueError("LLMAAS_ADMIN_KEY must be at least 20 characters")
                if s.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(admin_key))) is None:
                    k, _ = _insert_key(s, PLATFORM_TENANT, name="admin (LLMAAS_ADMIN_KEY)", role=Role.ADMIN,
                                       models=None, expires_at=None, secret=admin_key)
                    s.flush()
                    audit.record(s, ctx, "key.create", "api_key", k.id, tenant_id=PLATFORM_TENANT, after=key_dict(k))
                return None
            has_admin = s.scalar(select(ApiKey.id).where(ApiKey.role == Role.ADMIN.value,
                                                         ApiKey.revoked_at.is_(None)).limit(1))
            if has_admin:
                return None
            k, secret = _insert_key(s, PLATFORM_TENANT, name="admin (first start)", role=Role.ADMIN, models=None,
                                    expires_at=None)
            s.flush()
            audit.record(s, ctx, "key.create", "api_key", k.id, tenant_id=PLATFORM_TENANT, after=key_dict(k))
            return secret
