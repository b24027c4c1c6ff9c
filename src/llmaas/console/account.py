"""The console's Keys page (a tenant's owner, and the platform admin): create a key (its secret shown once, on the
page that answers the form, never again), rotate, revoke. The /v1/admin routes' functions do the work, so the
roles an owner may grant and the audit trail are the API's."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from llmaas.api.routers import admin as admin_api
from llmaas.console.forms import form_errors, validated
from llmaas.console.routes import SignedIn, page
from llmaas.console.session import Visitor, check_csrf, context
from llmaas.core.errors import LlmaasError
from llmaas.protocol.admin import KeyCreate

router = APIRouter(prefix="/console", include_in_schema=False)


async def _keys_page(request: Request, me: Visitor, status_code: int = 200, **ctx) -> HTMLResponse:
    keys = await asyncio.to_thread(admin_api.list_keys, me.principal.tenant_id, request, context(request, me))
    return page(request, "keys.html", me, status_code, keys=keys["data"], active="keys", form=ctx.pop("form", {}),
                **ctx)


@router.get("/keys")
async def keys_page(request: Request, me: SignedIn) -> HTMLResponse:
    return await _keys_page(request, me)


@router.post("/keys")
async def create_key(request: Request, me: SignedIn, name: Annotated[str, Form()] = "",
                     role: Annotated[str, Form()] = "member", expires_in_days: Annotated[str, Form()] = "",
                     rpm: Annotated[str, Form()] = "", tpm: Annotated[str, Form()] = "",
                     budget_usd: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, me.csrf, csrf)
    form = {"name": name, "role": role, "expires_in_days": expires_in_days, "rpm": rpm, "tpm": tpm,
            "budget_usd": budget_usd}
    try:
        body = _key_body(form)
        created = await asyncio.to_thread(admin_api.create_key, me.principal.tenant_id, body, request,
                                          context(request, me))
    except LlmaasError as e:
        return await _keys_page(request, me, e.status_code, errors=form_errors(e), form=form)
    return await _keys_page(request, me, secret=created)


def _key_body(form: dict[str, str]) -> KeyCreate:
    raw: dict = {"name": form["name"].strip(), "role": form["role"]}
    if form["expires_in_days"].strip():
        raw["expires_in_days"] = form["expires_in_days"].strip()
    limits = {k: form[k].strip() for k in ("rpm", "tpm", "budget_usd") if form.get(k, "").strip()}
    if limits:
        raw["limits"] = limits
    return validated(KeyCreate, raw)


@router.post("/keys/{key_id}/rotate")
async def rotate_key(key_id: str, request: Request, me: SignedIn, csrf: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, me.csrf, csrf)
    try:
        rotated = await asyncio.to_thread(admin_api.rotate_key, me.principal.tenant_id, key_id, request,
                                          context(request, me), None)
    except LlmaasError as e:
        return await _keys_page(request, me, e.status_code, errors=form_errors(e))
    return await _keys_page(request, me, secret=rotated)


@router.post("/keys/{key_id}/revoke")
async def revoke_key(key_id: str, request: Request, me: SignedIn, csrf: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, me.csrf, csrf)
    try:
        await asyncio.to_thread(admin_api.revoke_key, me.principal.tenant_id, key_id, request, context(request, me))
    except LlmaasError as e:
        return await _keys_page(request, me, e.status_code, errors=form_errors(e))
    return RedirectResponse("/console/keys", status_code=303)
