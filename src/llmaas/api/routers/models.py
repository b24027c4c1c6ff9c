"""GET /v1/models and /v1/models/{id}: the base models this key may use, and its tenant's fine-tuned
models (with their lineage: base model, job, step)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from llmaas.api.deps import CurrentPrincipal
from llmaas.api.responses import served_models
from llmaas.control.clock import unix
from llmaas.control.db.models import TenantModel
from llmaas.control.jobs.fine_tuning import tenant_models
from llmaas.core.errors import ModelNotFoundError
from llmaas.engine.client import EngineClient

router = APIRouter()


def _model_obj(engine: EngineClient) -> dict:
    info = engine.info
    return {"id": info.model_id, "object": "model", "created": info.created, "owned_by": info.owned_by,
            "context_length": info.context_size}


def _tenant_model_obj(m: TenantModel, context: int | None) -> dict:
    return {"id": m.id, "object": "model", "created": unix(m.created_at), "owned_by": m.tenant_id,
            "context_length": context, "parent": m.base_model, "lineage": m.lineage}


def _owned(request: Request, principal) -> list[TenantModel]:
    cp = request.app.state.control
    if cp is None:
        return []
    with cp.db.session() as s:
        return tenant_models(s, principal.tenant_id)


@router.get("/v1/models")
async def list_models(request: Request, principal: CurrentPrincipal) -> dict:
    engines = request.app.state.engines
    data = [_model_obj(e) for m, e in engines.items() if principal.can_use_model(m)]
    for m in await asyncio.to_thread(_owned, request, principal):
        if m.base_model in engines and principal.can_use_model(m.id):
            data.append(_tenant_model_obj(m, engines[m.base_model].info.context_size))
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request, principal: CurrentPrincipal) -> dict:
    if model_id.startswith("ft:") and request.app.state.control is not None:
        for m in await asyncio.to_thread(_owned, request, principal):
            if m.id == model_id and principal.can_use_model(m.id):
                engine = request.app.state.engines.get(m.base_model)
                return _tenant_model_obj(m, engine.info.context_size if engine else None)
        raise ModelNotFoundError(model_id)
    return _model_obj(served_models(request).get(model_id, principal))
