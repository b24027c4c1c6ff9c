"""The console's pages and the calls its pages make. Each page asks the same services the API routes do, with the
signed-in key's principal: the model list is /v1/models' function, a playground answer runs through ServingChat
as a /v1/chat/completions request of that key (same admission, limits, budget and metering), usage is the
control plane's usage summary."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates

from llmaas.api.deps import request_id
from llmaas.api.responses import served_models, sse_events
from llmaas.api.routers.models import list_models
from llmaas.console.forms import json_object
from llmaas.console.session import (
    COOKIE,
    LOGIN_CSRF_COOKIE,
    Visitor,
    check_csrf,
    context,
    control,
    new_login_token,
    set_cookie,
    visitor,
)
from llmaas.control.auth.principal import Role
from llmaas.control.billing import usage
from llmaas.control.clock import utcnow
from llmaas.control.plane import ControlPlane
from llmaas.core.errors import LlmaasError
from llmaas.protocol.openai import ChatCompletionRequest
from llmaas.serving.chat import ServingChat

HERE = Path(__file__).parent
router = APIRouter(prefix="/console", include_in_schema=False)
SignedIn = Annotated[Visitor, Depends(visitor)]
# Scripts and styles only from this server: a message that slips past escaping still cannot run.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
# (path, label, the roles that see it; None: every role)
NAV = [("playground", "Playground", None), ("models", "Models", None), ("files", "Files", None),
       ("fine-tuning", "Fine-tuning", None), ("evals", "Evals", None), ("feedback", "Feedback", None),
       ("batches", "Batches", None),
       ("usage", "Usage", None),
       ("keys", "Keys", (Role.OWNER,)), ("admin", "Admin", (Role.ADMIN,))]


def _wants_json(request: Request) -> bool:
    return request.method != "GET" or "application/json" in request.headers.get("accept", "")


async def not_signed_in(request: Request, exc: Exception) -> Response:
    if _wants_json(request):
        return JSONResponse({"error": {"message": "Your console session has ended; sign in again.",
                                       "type": "invalid_request_error", "param": None, "code": "not_signed_in"}},
                            status_code=401)
    return RedirectResponse("/console/login", status_code=303)


async def csrf_refused(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": {"message": "This form is out of date (missing or wrong CSRF token); reload the "
                                   "page and try again.", "type": "invalid_request_error", "param": "csrf",
                                   "code": "csrf_failed"}}, status_code=403)


def render(request: Request, name: str, status_code: int = 200, **ctx) -> HTMLResponse:
    templates: Jinja2Templates = request.app.state.console_templates
    return templates.TemplateResponse(request, name, ctx, status_code=status_code)


def page(request: Request, name: str, me: Visitor, status_code: int = 200, **ctx) -> HTMLResponse:
    nav = [(path, label) for path, label, roles in NAV
           if roles is None or me.principal.is_admin or me.principal.role in roles]
    return render(request, name, status_code, me=me, principal=me.principal, csrf=me.csrf, nav=nav, **ctx)


# --- signing in and out ---

@router.get("")
async def home() -> RedirectResponse:
    return RedirectResponse("/console/playground", status_code=303)


@router.get("/login")
async def login_form(request: Request) -> HTMLResponse:
    return _login_page(request)


def _login_page(request: Request, error: str | None = None, status_code: int = 200) -> HTMLResponse:
    token = new_login_token()
    response = render(request, "login.html", status_code, login_csrf=token, error=error)
    set_cookie(request, response, LOGIN_CSRF_COOKIE, token, 600)
    return response


@router.post("/login")
async def login(request: Request, api_key: Annotated[str, Form()] = "",
                csrf: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, request.cookies.get(LOGIN_CSRF_COOKIE) or "", csrf)
    cp = control(request)
    client = request.client.host if request.client else None
    try:
        principal = await asyncio.to_thread(cp.keys.authenticate, api_key.strip(), client)
    except LlmaasError as e:  # the key is never echoed back into the page
        return _login_page(request, e.message.split(":")[0] + "." if e.status_code == 401 else e.message,
                           e.status_code)
    assert principal.key_id is not None
    token, _ = await asyncio.to_thread(cp.sessions.create, principal.key_id)
    response = RedirectResponse("/console/playground", status_code=303)
    set_cookie(request, response, COOKIE, token, int(request.app.state.settings.console_session_s))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/console")
    return response


@router.post("/logout")
async def logout(request: Request, me: SignedIn, csrf: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, me.csrf, csrf)
    await asyncio.to_thread(control(request).sessions.end, request.cookies.get(COOKIE))
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path="/console")
    return response


# --- pages ---

async def models_of(request: Request, me: Visitor) -> list[dict]:
    """The models this key may use, as /v1/models lists them, each with its price."""
    cp = control(request)
    models = (await list_models(request, me.principal))["data"]
    for m in models:
        m["price"] = price_dict_for(cp, m["id"])
    return models


def price_dict_for(cp: ControlPlane, model: str) -> dict:
    p = cp.catalog.price(model)
    return {"input_usd_per_mtok": p.input_pico / 1e6, "output_usd_per_mtok": p.output_pico / 1e6}


@router.get("/playground")
async def playground(request: Request, me: SignedIn) -> HTMLResponse:
    models = [m for m in await models_of(request, me) if "chat" in m.get("capabilities", [])]
    return page(request, "playground.html", me, models=models, active="playground")


@router.get("/models")
async def models_page(request: Request, me: SignedIn) -> HTMLResponse:
    models = await models_of(request, me)
    return page(request, "models.html", me, base=[m for m in models if "lineage" not in m],
                tuned=[m for m in models if "lineage" in m], active="models")


@router.get("/usage")
async def usage_page(request: Request, me: SignedIn) -> HTMLResponse:
    by_model = await _usage(request, me, ["model"])
    by_key = await _usage(request, me, ["key"])
    return page(request, "usage.html", me, by_model=by_model, by_key=by_key, budgets=await _budgets(request, me),
                active="usage")


async def _budgets(request: Request, me: Visitor) -> list[dict]:
    """The key's and its tenant's limits, with each budget's spend in its current period."""
    cp, p = control(request), me.principal

    def query() -> list[dict]:
        with cp.db.session() as s:
            return [{"scope": scope, "limits": limits, **cp.budgets.status(s, scope, scope_id, limits)}
                    for scope, scope_id, limits in (("key", p.key_id, p.key_limits),
                                                    ("tenant", p.tenant_id, p.tenant_limits))]

    return await asyncio.to_thread(query)


@router.get("/usage/by-model")
async def usage_by_model(request: Request, me: SignedIn) -> HTMLResponse:
    """The by-model table alone (htmx refreshes it in place)."""
    return page(request, "usage_by_model.html", me, by_model=await _usage(request, me, ["model"]))


@router.get("/usage.json")
async def usage_json(request: Request, me: SignedIn, days: int = 30) -> dict:
    """Tokens, requests and cost per day (the last `days`), for the charts."""
    days = max(1, min(days, 366))
    first = utcnow().date() - timedelta(days=days - 1)  # usage days are UTC days
    report = await _usage(request, me, ["day"], start=first)
    seen = {r["day"]: r for r in report["data"]}
    zero = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0, "total_tokens": 0,
            "cost_usd": "0"}
    report["data"] = [seen.get(d, {"day": d, **zero}) for d in
                      ((first + timedelta(days=i)).isoformat() for i in range(days))]  # days without usage too
    return {"days": report}


async def _usage(request: Request, me: Visitor, group_by: list[str], start: date | None = None) -> dict:
    cp = control(request)
    ctx = context(request, me)

    def query() -> dict:
        with cp.db.session() as s:
            return usage.summarize(s, ctx, group_by=group_by, start=start)

    return await asyncio.to_thread(query)


# --- the playground's chat ---

@router.post("/playground/chat")
async def playground_chat(request: Request, me: SignedIn) -> Response:
    """One playground answer, streamed as /v1/chat/completions streams it (OpenAI chunks over SSE)."""
    # Stored (store: true), so that an answer can be rated and reviewed under Feedback.
    body = await json_object(request, me, ChatCompletionRequest, stream=True, stream_options={"include_usage": True},
                             store=True)
    served = await ServingChat(served_models(request)).create(body, me.principal, request_id(request))
    assert served.stream is not None
    return StreamingResponse(sse_events(served.stream), media_type="text/event-stream", headers=served.headers)

