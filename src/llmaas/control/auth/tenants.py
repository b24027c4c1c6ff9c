"""Tenants (organisations). Only platform admins create or change them; everyone else sees only
their own, and another tenant's id is answered exactly like a missing one (404)."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from llmaas.control.auth import audit
from llmaas.control.auth.principal import Context, Role
from llmaas.control.clock import unix, utcnow
from llmaas.control.db.models import ApiKey, Tenant
from llmaas.control.limits.view import apply_limits, limits_dict
from llmaas.core.errors import ConflictError, InvalidRequestError, NotFoundError

PLATFORM_TENANT = "org-platform"


def new_tenant_id() -> str:
    return "org-" + secrets.token_hex(8)


def tenant_dict(t: Tenant) -> dict:
    return {
        "id": t.id, "object": "tenant", "name": t.name, "created_at": unix(t.created_at),
        "disabled": t.disabled, "metadata": t.metadata_ or {}, "limits": limits_dict(t),
        "store_retention_days": t.store_retention_days,  # null: the platform default (LLMAAS_STORE_RETENTION_DAYS)
    }


def get_visible(s: Session, ctx: Context, tenant_id: str) -> Tenant:
    """The tenant if this caller may see it; 404 otherwise (no hint whether it exists)."""
    t = s.get(Tenant, tenant_id) if ctx.principal.can_see_tenant(tenant_id) else None
    if t is None:
        raise NotFoundError(f"No tenant with id '{tenant_id}'.", param="tenant_id")
    return t


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidRequestError("'name' must be a non-empty string of at most 200 characters.", param="name")
    return name.strip()


def _check_retention(days: Any) -> int | None:
    if days is not None and (isinstance(days, bool) or not isinstance(days, int) or days < 1):
        raise InvalidRequestError("'store_retention_days' must be a whole number of days, at least 1 (or null "
                                  "for the platform default).", param="store_retention_days")
    return days


def create(s: Session, ctx: Context, name: str, limits: dict | None = None, metadata: dict | None = None,
           tenant_id: str | None = None, store_retention_days: int | None = None) -> Tenant:
    ctx.principal.require()  # admin only
    t = Tenant(id=tenant_id or new_tenant_id(), name=_check_name(name), created_at=utcnow(), disabled=False,
               metadata_=metadata or {}, budget_period="monthly", budget_alert_fraction=0.8,
               store_retention_days=_check_retention(store_retention_days))
    apply_limits(t, limits or {})
    if s.scalar(select(Tenant.id).where(Tenant.name == t.name)):
        raise ConflictError(f"A tenant named '{t.name}' already exists.", param="name")
    s.add(t)
    try:
        s.flush()
    except IntegrityError:
        raise ConflictError(f"A tenant named '{t.name}' already exists.", param="name") from None
    audit.record(s, ctx, "tenant.create", "tenant", t.id, tenant_id=t.id, after=tenant_dict(t))
    return t


def list_visible(s: Session, ctx: Context) -> list[Tenant]:
    stmt = select(Tenant).order_by(Tenant.created_at, Tenant.id)
    if not ctx.principal.is_admin:
        stmt = stmt.where(Tenant.id == ctx.principal.tenant_id)
    return list(s.scalars(stmt))


def update_tenant(s: Session, ctx: Context, tenant_id: str, *, name: str | None = None,
                  disabled: bool | None = None, limits: dict | None = None, metadata: dict | None = None,
                  store_retention_days: Any = ...) -> Tenant:
    """Fields left None are unchanged; `store_retention_days` is unchanged when omitted (...), and None
    sets it back to the platform default."""
    t = get_visible(s, ctx, tenant_id)
    ctx.principal.require()
    before = tenant_dict(t)
    if name is not None:
        t.name = _check_name(name)
    if disabled is not None:
        if t.id == PLATFORM_TENANT and disabled:
            raise InvalidRequestError("The platform tenant cannot be disabled.", param="disabled")
        t.disabled = disabled
    if metadata is not None:
        t.metadata_ = metadata
    if store_retention_days is not ...:
        t.store_retention_days = _check_retention(store_retention_days)
    if limits:
        apply_limits(t, limits)
    try:
        s.flush()
    except IntegrityError:
        raise ConflictError(f"A tenant named '{name}' already exists.", param="name") from None
    after = tenant_dict(t)
    if after != before:
        audit.record(s, ctx, "tenant.update", "tenant", t.id, tenant_id=t.id, before=before, after=after)
    return t


def delete(s: Session, ctx: Context, tenant_id: str) -> Tenant:
    """Soft delete: the tenant is disabled and its keys revoked; usage and audit history stay."""
    t = get_visible(s, ctx, tenant_id)
    ctx.principal.require()
    if t.id == PLATFORM_TENANT:
        raise InvalidRequestError("The platform tenant cannot be deleted.", param="tenant_id")
    before = tenant_dict(t)
    t.disabled = True
    s.execute(update(ApiKey).where(ApiKey.tenant_id == t.id, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow()))
    audit.record(s, ctx, "tenant.delete", "tenant", t.id, tenant_id=t.id, before=before, after=tenant_dict(t))
    return t


ROLES_AN_OWNER_GRANTS = (Role.OWNER, Role.MEMBER, Role.READER)
