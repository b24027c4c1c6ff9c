"""The platform admin's console pages: tenants (create, disable), the model catalog (load, unload, prices),
deployments and their replicas, and the audit log with filters. The /v1/admin routes' functions do the work, so
every change is checked and audited as through the API; a key that is not the platform admin's gets their 403."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from llmaas.api.routers import admin as admin_api
from llmaas.api.routers import admin_deployments as deployments_api
from llmaas.api.routers import admin_models as models_api
from llmaas.console.forms import form_errors, validated
from llmaas.console.routes import SignedIn, page
from llmaas.console.session import Visitor, check_csrf, context
from llmaas.core.errors import LlmaasError
from llmaas.protocol.admin import ModelRegister, PriceSet, TenantCreate, TenantUpdate

router = APIRouter(prefix="/console/admin", include_in_schema=False)


async def _admin_page(request: Request, me: Visitor, status_code: int = 200, **ctx) -> HTMLResponse:
    c = context(request, me)
    me.principal.require()  # the platform admin only (403 for anyone else, as the admin API answers)
    tenants = await asyncio.to_thread(admin_api.list_tenants, request, c)
    models = await asyncio.to_thread(models_api.list_models, request, c)
    deployments = await deployments_api.list_deployments(request, c)
    return page(request, "admin.html", me, status_code, tenants=tenants["data"], models=models["data"],
                deployments=deployments, active="admin", form=ctx.pop("form", {}), **ctx)


@router.get("")
async def admin_page(request: Request, me: SignedIn) -> HTMLResponse:
    return await _admin_page(request, me)


async def _act(request: Request, me: Visitor, csrf: str, work, form: dict | None = None) -> Response:
    """Run one admin action; its refusal is shown on the page (which keeps the form), success reloads it."""
    check_csrf(request, me.csrf, csrf)
    try:
        result = work(context(request, me))
        if asyncio.iscoroutine(result):
            await result
    except LlmaasError as e:
        return await _admin_page(request, me, e.status_code, errors=form_errors(e), form=form or {})
    return RedirectResponse("/console/admin", status_code=303)


@router.post("/tenants")
async def create_tenant(request: Request, me: SignedIn, name: Annotated[str, Form()] = "",
                        csrf: Annotated[str, Form()] = "") -> Response:
    def work(c):
        return admin_api.create_tenant(validated(TenantCreate, {"name": name.strip()}), request, c)

    return await _act(request, me, csrf, lambda c: asyncio.to_thread(work, c), {"tenant_name": name})


@router.post("/tenants/{tenant_id}/disabled")
async def set_disabled(tenant_id: str, request: Request, me: SignedIn, disabled: Annotated[str, Form()] = "true",
                       csrf: Annotated[str, Form()] = "") -> Response:
    body = TenantUpdate(disabled=disabled == "true")
    return await _act(request, me, csrf, lambda c: asyncio.to_thread(admin_api.update_tenant, tenant_id, body,
                                                                     request, c))


@router.post("/models")
async def register(request: Request, me: SignedIn, source: Annotated[str, Form()] = "",
                   kind: Annotated[str, Form()] = "package", model_id: Annotated[str, Form()] = "",
                   description: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = "") -> Response:
    """Register a bundled package or a GGUF file on the server's disk, and start loading it."""
    form = {"source": source, "kind": kind, "model_id": model_id, "description": description}
    raw: dict = {("package" if kind == "package" else "gguf_path"): source.strip(), "load": True}
    if model_id.strip():
        raw["id"] = model_id.strip()
    if description.strip():
        raw["description"] = description.strip()
    return await _act(request, me, csrf, lambda c: models_api.register_model(validated(ModelRegister, raw), request, c),
                      form)


@router.post("/models/{model:path}/load")
async def load(model: str, request: Request, me: SignedIn, csrf: Annotated[str, Form()] = "") -> Response:
    return await _act(request, me, csrf, lambda c: models_api.load_model(model, request, c))


@router.post("/models/{model:path}/unload")
async def unload(model: str, request: Request, me: SignedIn, csrf: Annotated[str, Form()] = "") -> Response:
    return await _act(request, me, csrf, lambda c: models_api.unload_model(model, request, c))


@router.post("/models/{model:path}/price")
async def price(model: str, request: Request, me: SignedIn, input_usd_per_mtok: Annotated[str, Form()] = "",
                output_usd_per_mtok: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = "") -> Response:
    form = {"price_model": model, "input_usd_per_mtok": input_usd_per_mtok, "output_usd_per_mtok": output_usd_per_mtok}

    def work(c):
        raw = {k: v.strip() for k, v in form.items() if k != "price_model" and v.strip()}
        return models_api.set_price(model, validated(PriceSet, raw), request, c)

    return await _act(request, me, csrf, lambda c: asyncio.to_thread(work, c), form)


@router.get("/audit")
async def audit(request: Request, me: SignedIn, action: str = "", tenant_id: str = "", target_id: str = "",
                after: str = "") -> HTMLResponse:
    c = context(request, me)
    me.principal.require()
    cursor = int(after) if after.isdigit() else None
    log = await asyncio.to_thread(admin_api.audit_log, request, c, tenant_id or None, action or None, None,
                                  target_id or None, None, None, cursor, 100)
    return page(request, "audit.html", me, entries=log["data"], more=log["has_more"], action=action,
                tenant_id=tenant_id, target_id=target_id, active="admin")
