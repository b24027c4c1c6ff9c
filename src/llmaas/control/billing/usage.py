"""Usage reports: tokens, requests and cost grouped by model, key, day (and tenant for admins),
over a date range. Scoped to the caller's tenant unless the caller is a platform admin."""

from __future__ import annotations

from datetime import date

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from llmaas.control.auth.principal import Context
from llmaas.control.billing.money import pico_to_usd
from llmaas.control.db.models import UsageRecord
from llmaas.core.errors import InvalidRequestError

GROUPS = {"model": UsageRecord.model, "key": UsageRecord.key_id, "day": UsageRecord.day,
          "tenant": UsageRecord.tenant_id, "endpoint": UsageRecord.endpoint, "status": UsageRecord.status}


def summarize(s: Session, ctx: Context, *, tenant_id: str | None = None, start: date | None = None,
              end: date | None = None, group_by: list[str] | None = None, model: str | None = None,
              key_id: str | None = None) -> dict:
    group_by = group_by or []
    for g in group_by:
        if g not in GROUPS or (g == "tenant" and not ctx.principal.is_admin):
            allowed = [k for k in GROUPS if k != "tenant" or ctx.principal.is_admin]
            raise InvalidRequestError(f"Cannot group by '{g}'; use any of {', '.join(allowed)}.", param="group_by")
    if start and end and end < start:
        raise InvalidRequestError("'end_date' is before 'start_date'.", param="end_date")
    cols = [GROUPS[g].label(g) for g in group_by]
    aggs = [func.count().label("requests"), func.coalesce(func.sum(UsageRecord.prompt_tokens), 0).label("p"),
            func.coalesce(func.sum(UsageRecord.completion_tokens), 0).label("c"),
            func.coalesce(func.sum(UsageRecord.cached_tokens), 0).label("k"),
            func.coalesce(func.sum(UsageRecord.cost_pico), 0).label("cost")]
    stmt = select(*cols, *aggs)
    tenant = tenant_id if ctx.principal.is_admin else ctx.principal.tenant_id
    if tenant:
        stmt = stmt.where(UsageRecord.tenant_id == tenant)
    if start:
        stmt = stmt.where(UsageRecord.day >= start.isoformat())
    if end:
        stmt = stmt.where(UsageRecord.day <= end.isoformat())
    if model:
        stmt = stmt.where(UsageRecord.model == model)
    if key_id:
        stmt = stmt.where(UsageRecord.key_id == key_id)
    if cols:
        stmt = stmt.group_by(*cols).order_by(*cols)
    rows = []
    totals = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0, "total_tokens": 0}
    total_cost = 0
    for r in s.execute(stmt):
        m = r._mapping
        item = {g: m[g] for g in group_by}
        item.update(requests=int(m["requests"]), prompt_tokens=int(m["p"]), completion_tokens=int(m["c"]),
                    cached_tokens=int(m["k"]), total_tokens=int(m["p"]) + int(m["c"]),
                    cost_usd=pico_to_usd(int(m["cost"])))
        if not cols and not item["requests"]:
            continue
        rows.append(item)
        for k in totals:
            totals[k] += item[k]
        total_cost += int(m["cost"])
    return {"object": "usage.report", "tenant_id": tenant, "start_date": start.isoformat() if start else None,
            "end_date": end.isoformat() if end else None, "group_by": group_by, "data": rows,
            "totals": {**totals, "cost_usd": pico_to_usd(total_cost)}}
