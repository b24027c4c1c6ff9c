"""Request-scoped dependencies: the caller's identity (API key → Principal) and its audit context,
and admission of billable work through the control plane's gateway."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

from fastapi import Depends, Request

from llmaas.control.gateway import Ticket
from llmaas.control.plane import ControlPlane
from llmaas.control.principal import Context, Principal, Role
from llmaas.control.tenants import PLATFORM_TENANT
from llmaas.core.errors import InvalidRequestError

# With auth disabled (LLMAAS_AUTH=false) every caller is this principal and nothing is limited or metered.
ANONYMOUS = Principal(key_id=None, tenant_id=PLATFORM_TENANT, role=Role.ADMIN, label="anonymous")


def request_id(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.state.request_id = "req_" + uuid.uuid4().hex
    return rid


def _secret(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    return request.headers.get("api-key")  # what the SDK sends to Azure-style endpoints


def control_plane(request: Request, feature: str) -> ControlPlane:
    """The control plane, or a clear 400 when this server runs without one (LLMAAS_AUTH=false)."""
    cp = request.app.state.control
    if cp is None:
        raise InvalidRequestError(f"{feature} need(s) the control plane; this server runs with auth disabled "
                                  "(LLMAAS_AUTH=false).")
    return cp


async def authenticate(request: Request) -> Principal:
    cp: ControlPlane | None = request.app.state.control
    if cp is None:
        return ANONYMOUS
    client = request.client.host if request.client else None
    secret = _secret(request)
    p = cp.keys.cached(secret, client) or await asyncio.to_thread(cp.keys.authenticate, secret, client)
    request.state.principal = p
    return p


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]


def context(request: Request, principal: CurrentPrincipal) -> Context:
    return Context(principal, request.client.host if request.client else None, request_id(request))


CurrentContext = Annotated[Context, Depends(context)]


class _Unmetered:
    """The ticket of a request when the control plane is off: records usage nowhere."""

    headers: dict[str, str] = {}

    def usage(self, prompt: int, completion: int, cached: int = 0) -> None:
        pass

    async def reserve(self, prompt_tokens: int, max_tokens: int) -> None:
        pass

    async def abandon(self) -> None:
        pass

    async def settle(self, status: str = "ok") -> None:
        pass


async def open_ticket(request: Request, principal: Principal, model: str, endpoint: str) -> Ticket | _Unmetered:
    """First phase of admission (role, model, request limits), before any work on the prompt; the caller
    then reserves tokens with `ticket.reserve(prompt_tokens, max_tokens)`, or `abandon`s the ticket."""
    cp: ControlPlane | None = request.app.state.control
    if cp is None:
        return _Unmetered()
    return await cp.gateway.open(principal, model, endpoint, request_id(request))


async def admit(request: Request, principal: Principal, model: str, endpoint: str, prompt_tokens: int,
                max_tokens: int) -> Ticket | _Unmetered:
    cp: ControlPlane | None = request.app.state.control
    if cp is None:
        return _Unmetered()
    return await cp.gateway.admit(principal, model, endpoint, prompt_tokens, max_tokens, request_id(request))
