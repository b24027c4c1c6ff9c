"""Request-scoped dependencies: the caller's identity (API key → Principal) and its audit context.
(Admission of billable work is the serving layer's: serving.models.ServedModels.open_ticket.)"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

from fastapi import Depends, Request

from llmaas.control.auth.principal import Context, Principal, Role
from llmaas.control.auth.tenants import PLATFORM_TENANT
from llmaas.control.plane import ControlPlane
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
