"""The audit trail: who changed what, when, from where, with the state before and after.
Append-only: this module only inserts, and the database refuses UPDATE/DELETE on the table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from llmaas.control.auth.principal import Context
from llmaas.control.clock import unix, utcnow
from llmaas.control.db.models import AuditRecord
from llmaas.control.paging import keyset_page


def record(
    s: Session, ctx: Context, action: str, target_type: str, target_id: str, *,
    tenant_id: str | None, before: dict | None = None, after: dict | None = None,
) -> None:
    """Write one audit record in the caller's transaction, so the change and its trail commit together."""
    p = ctx.principal
    s.add(AuditRecord(
        at=utcnow(), actor_key_id=p.key_id, actor_tenant_id=p.tenant_id, actor=p.actor, action=action,
        target_type=target_type, target_id=target_id, tenant_id=tenant_id, source_ip=ctx.source_ip,
        request_id=ctx.request_id, before=before, after=after,
    ))


@dataclass
class AuditQuery:
    tenant_id: str | None = None
    action: str | None = None
    actor_key_id: str | None = None
    target_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    after: int | None = None  # id cursor
    limit: int = 100


def query(s: Session, ctx: Context, q: AuditQuery) -> tuple[list[AuditRecord], bool]:
    """A page of the trail, newest first: (entries, more). Admins see everything; owners see their own
    tenant's trail only."""
    from llmaas.control.auth.principal import Role

    ctx.principal.require(Role.OWNER)
    stmt = select(AuditRecord)
    tenant = q.tenant_id if ctx.principal.is_admin else ctx.principal.tenant_id
    if tenant:
        stmt = stmt.where(AuditRecord.tenant_id == tenant)
    if q.action:
        stmt = stmt.where(AuditRecord.action.startswith(q.action))
    if q.actor_key_id:
        stmt = stmt.where(AuditRecord.actor_key_id == q.actor_key_id)
    if q.target_id:
        stmt = stmt.where(AuditRecord.target_id == q.target_id)
    if q.since:
        stmt = stmt.where(AuditRecord.at >= q.since)
    if q.until:
        stmt = stmt.where(AuditRecord.at < q.until)
    return keyset_page(s, stmt, (AuditRecord.id,), after=None if q.after is None else (q.after,),
                       limit=max(1, min(q.limit, 1000)), order="desc")


def to_dict(r: AuditRecord) -> dict:
    return {
        "id": r.id, "object": "audit_log.entry", "at": unix(r.at), "action": r.action,
        "actor": {"key_id": r.actor_key_id, "tenant_id": r.actor_tenant_id, "name": r.actor,
                  "ip": r.source_ip},
        "target": {"type": r.target_type, "id": r.target_id, "tenant_id": r.tenant_id},
        "request_id": r.request_id, "before": r.before, "after": r.after,
    }
