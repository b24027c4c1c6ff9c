"""/v1/admin/deployments: each loaded model's deployment, its replicas and their load; in Ray mode, its replica
counts, autoscaling and per-replica settings, changed on the running application. Admins only."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from llmaas.api.deps import CurrentContext, control_plane
from llmaas.api.openapi import LISTING, READING, WRITING
from llmaas.api.routers.admin_models import unload_model
from llmaas.api.schemas import DEPLOYMENT, DEPLOYMENT_DELETED, DEPLOYMENT_LIST, merge, ok
from llmaas.control.model_catalog import Entry
from llmaas.core.errors import InvalidRequestError
from llmaas.protocol.admin import DeploymentUpdate
from llmaas.serving.deployments import DeploymentConfig, Deployments

router = APIRouter(prefix="/v1/admin", tags=["admin"])


def _deployments(request: Request) -> Deployments:
    control_plane(request, "The admin API")
    return request.app.state.deployments


@router.get("/deployments", responses=merge(LISTING, ok(DEPLOYMENT_LIST)))
async def list_deployments(request: Request, ctx: CurrentContext) -> dict:
    ctx.principal.require()
    d = _deployments(request)
    return {"object": "list", "mode": d.mode, "ingress": d.ingress(), "data": await d.list()}


@router.get("/deployments/{model:path}", responses=merge(READING, ok(DEPLOYMENT)))
async def get_deployment(model: str, request: Request, ctx: CurrentContext) -> dict:
    ctx.principal.require()
    return await _deployments(request).get(model)


@router.put("/deployments/{model:path}", responses=merge(WRITING, ok(DEPLOYMENT)))
async def update_deployment(model: str, body: DeploymentUpdate, request: Request, ctx: CurrentContext) -> dict:
    ctx.principal.require()
    deployments = _deployments(request)
    cp = control_plane(request, "The admin API")
    changes = body.changes()
    if not changes:
        raise InvalidRequestError("Send at least one field to change, e.g. {\"max_replicas\": 4}.", param=None)

    async def store() -> Entry:
        def write() -> Entry:
            with cp.db.session() as s:
                current = Entry.of(cp.models.get(s, model))
                # Validated whole (min <= initial <= max) before anything is stored.
                DeploymentConfig.of(request.app.state.settings, current).changed(changes)
                return cp.models.update(s, ctx, model, deployment={**current.deployment, **changes})

        return await asyncio.to_thread(write)

    return await deployments.update(model, store)


@router.delete("/deployments/{model:path}", responses=merge(WRITING, ok(DEPLOYMENT_DELETED)))
async def delete_deployment(model: str, request: Request, ctx: CurrentContext) -> dict:
    """Remove the model's deployment: the same as unloading it (POST /v1/admin/models/{id}/unload)."""
    ctx.principal.require()
    await unload_model(model, request, ctx)
    return {"id": model, "object": "deployment.deleted", "deleted": True}
