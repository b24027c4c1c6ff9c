"""GET /v1/usage: the caller's tenant's usage and cost, grouped by model, key, day."""

from __future__ import annotations

from datetime import date

from fastapi import APIRouter, Query, Request

from llmaas.api.deps import CurrentContext
from llmaas.api.openapi import LISTING
from llmaas.api.routers.admin import usage_report
from llmaas.api.schemas import USAGE_REPORT, merge, ok

router = APIRouter()


@router.get("/v1/usage", responses=merge(LISTING, ok(USAGE_REPORT)))
def tenant_usage(request: Request, ctx: CurrentContext, start_date: date | None = None, end_date: date | None = None,
                 group_by: list[str] = Query(default=[], description="model, key, day, endpoint, status"),
                 model: str | None = None, key_id: str | None = None) -> dict:
    return usage_report(request, ctx, None, start_date, end_date, group_by, model, key_id)
