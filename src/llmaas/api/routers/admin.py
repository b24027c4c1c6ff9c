"""/v1/admin: tenants, their keys and limits, usage of all tenants, the audit log.

Admins reach everything; a tenant owner reaches its own tenant's keys and audit trail through the
same routes, and another tenant's ids answer 404 exactly like ids that do not exist. The routes are
plain `def`: FastAPI runs them in its thread pool, so database work never blocks the event loop."""

from __future__ import annotations

from datetime import date

from fastapi import APIRouter, Query, Request

from llmaas.api.deps import CurrentContext, control_plane
from llmaas.api.openapi import LISTING, READING, WRITING
from llmaas.api.schemas import (
    AUDIT_LIST,
    KEY,
    KEY_LIST,
    KEY_WITH_BUDGET,
    KEY_WITH_SECRET,
    TENANT,
    TENANT_DELETED,
    TENANT_LIST,
    USAGE_REPORT,
    merge,
    ok,
)
from llmaas.control.auth import audit, tenants
from llmaas.control.auth.keys import key_dict
from llmaas.control.auth.principal import Context, Limits
from llmaas.control.billing import usage
from llmaas.control.clock import from_unix
from llmaas.control.paging import page
from llmaas.control.plane import ControlPlane
from llmaas.protocol.admin import KeyCreate, KeyRotate, KeyUpdate, TenantCreate, TenantUpdate
from llmaas.protocol.common import INT32_MAX, MAX_UNIX_TIME

router = APIRouter(prefix="/v1/admin", tags=["admin"])


def _cp(request: Request) -> ControlPlane:
    return control_plane(request, "The admin API")


def _tenant_out(cp: ControlPlane, s, t) -> dict:
    return {**tenants.tenant_dict(t), "budget": cp.budgets.status(s, "tenant", t.id, Limits.of(t))}


# --- tenants ---

@router.post("/tenants", responses=merge(WRITING, ok(TENANT)))
def create_tenant(body: TenantCreate, request: Request, ctx: CurrentContext) -> dict:
    cp = _cp(request)
    with cp.db.session() as s:
        t = tenants.create(s, ctx, body.name, body.limits.changes() if body.limits else None, body.metadata,
                           store_retention_days=body.store_retention_days)
        return _tenant_out(cp, s, t)


@router.get("/tenants", responses=merge(LISTING, ok(TENANT_LIST)))
def list_tenants(request: Request, ctx: CurrentContext) -> dict:
    cp = _cp(request)
    with cp.db.session() as s:
        return page([_tenant_out(cp, s, t) for t in tenants.list_visible(s, ctx)], False)


@router.get("/tenants/{tenant_id}", responses=merge(READING, ok(TENANT)))
def get_tenant(tenant_id: str, request: Request, ctx: CurrentContext) -> dict:
    cp = _cp(request)
    with cp.db.session() as s:
        return _tenant_out(cp, s, tenants.get_visible(s, ctx, tenant_id))


@router.patch("/tenants/{tenant_id}", responses=merge(WRITING, ok(TENANT)))
def update_tenant(tenant_id: str, body: TenantUpdate, request: Request, ctx: CurrentContext) -> dict:
    cp = _cp(request)
    with cp.db.session() as s:
        t = tenants.update_tenant(s, ctx, tenant_id, name=body.name, disabled=body.disabled,
                                  limits=body.limits.changes() if body.limits else None, metadata=body.metadata,
                                  store_retention_days=body.model_dump(exclude_unset=True).get(
                                      "store_retention_days", ...))
        out = _tenant_out(cp, s, t)
    cp.keys.invalidate()  # limits and the disabled flag travel with cached keys
    return out


@router.delete("/tenants/{tenant_id}", responses=merge(WRITING, ok(TENANT_DELETED)))
def delete_tenant(tenant_id: str, request: Request, ctx: CurrentContext) -> dict:
    cp = _cp(request)
    with cp.db.session() as s:
        t = tenants.delete(s, ctx, tenant_id)
    cp.keys.invalidate()
    return {"id": t.id, "object": "tenant.deleted", "deleted": True}


# --- keys ---

@router.post("/tenants/{tenant_id}/keys", responses=merge(WRITING, ok(KEY_WITH_SECRET)))
def create_key(tenant_id: str, body: KeyCreate, request: Request, ctx: CurrentContext) -> dict:
    cp = _cp(request)
    with cp.db.session() as s:
        k, secret = cp.keys.create(s, ctx, tenant_id, name=body.name, role=body.role, models=body.models,
                                   expires_at=body.expiry(), limits=body.limits.changes() if body.limits else None)
        return key_dict(k, secret)


@router.get("/tenants/{tenant_id}/keys", responses=merge(READING, ok(KEY_LIST)))
def list_keys(tenant_id: str, request: Request, ctx: CurrentContext) -> dict:
    cp = _cp(request)
    with cp.db.session() as s:
        return page([key_dict(k) for k in cp.keys.list(s, ctx, tenant_id)], False)


@router.get("/tenants/{tenant_id}/keys/{key_id}", responses=merge(READING, ok(KEY_WITH_BUDGET)))
def get_key(tenant_id: str, key_id: str, request: Request, ctx: CurrentContext) -> dict:
    cp = _cp(request)
    with cp.db.session() as s:
        k = cp.keys.get(s, ctx, tenant_id, key_id)
        return {**key_dict(k), "budget": cp.budgets.status(s, "key", k.id, Limits.of(k))}


@router.patch("/tenants/{tenant_id}/keys/{key_id}", responses=merge(WRITING, ok(KEY)))
def update_key(tenant_id: str, key_id: str, body: KeyUpdate, request: Request, ctx: CurrentContext) -> dict:
    cp = _cp(request)
    sent = body.model_dump(exclude_unset=True)
    with cp.db.session() as s:
        k = cp.keys.update(s, ctx, tenant_id, key_id, name=body.name, role=body.role,
                           models=sent.get("models", ...),
                           limits=body.limits.changes() if body.limits else None)
        return key_dict(k)


@router.delete("/tenants/{tenant_id}/keys/{key_id}", responses=merge(WRITING, ok(KEY)))
def revoke_key(tenant_id: str, key_id: str, request: Request, ctx: CurrentContext) -> dict:
    cp = _cp(request)
    with cp.db.session() as s:
        return key_dict(cp.keys.revoke(s, ctx, tenant_id, key_id))


@router.post("/tenants/{tenant_id}/keys/{key_id}/rotate", responses=merge(WRITING, ok(KEY_WITH_SECRET)))
def rotate_key(tenant_id: str, key_id: str, request: Request, ctx: CurrentContext,
               body: KeyRotate | None = None) -> dict:
    cp = _cp(request)
    with cp.db.session() as s:
        k, secret = cp.keys.rotate(s, ctx, tenant_id, key_id, grace_seconds=(body or KeyRotate()).grace_seconds)
        return key_dict(k, secret)


# --- usage and audit ---

def usage_report(request: Request, ctx: Context, tenant_id: str | None, start_date: date | None,
                 end_date: date | None, group_by: list[str], model: str | None, key_id: str | None) -> dict:
    cp = _cp(request)
    groups = [g.strip() for item in group_by for g in item.split(",") if g.strip()]
    with cp.db.session() as s:
        return usage.summarize(s, ctx, tenant_id=tenant_id, start=start_date, end=end_date, group_by=groups,
                               model=model, key_id=key_id)


@router.get("/usage", responses=merge(READING, ok(USAGE_REPORT)))
def admin_usage(request: Request, ctx: CurrentContext, tenant_id: str | None = None,
                start_date: date | None = None, end_date: date | None = None,
                group_by: list[str] = Query(default=[]), model: str | None = None,
                key_id: str | None = None) -> dict:
    ctx.principal.require()
    return usage_report(request, ctx, tenant_id, start_date, end_date, group_by, model, key_id)


@router.get("/audit", responses=merge(READING, ok(AUDIT_LIST)))
def audit_log(request: Request, ctx: CurrentContext, tenant_id: str | None = None, action: str | None = None,
              actor_key_id: str | None = None, target_id: str | None = None,
              since: int | None = Query(default=None, ge=0, le=MAX_UNIX_TIME, description="Unix seconds"),
              until: int | None = Query(default=None, ge=0, le=MAX_UNIX_TIME, description="Unix seconds"),
              after: int | None = Query(default=None, ge=0, le=INT32_MAX, description="An audit entry id"),
              limit: int = Query(default=100, ge=1, le=1000)) -> dict:
    cp = _cp(request)
    q = audit.AuditQuery(tenant_id=tenant_id, action=action, actor_key_id=actor_key_id, target_id=target_id,
                         since=from_unix(since) if since else None,
                         until=from_unix(until) if until else None, after=after, limit=limit)
    with cp.db.session() as s:
        rows, more = audit.query(s, ctx, q)
        return page([audit.to_dict(r) for r in rows], more)
