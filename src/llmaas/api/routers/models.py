"""GET /v1/models and /v1/models/{id}: the base models this key may use (loaded, or being loaded), each with
its status and capabilities, and its tenant's fine-tuned models (with their lineage: base model, job, step)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from llmaas.api.deps import CurrentPrincipal
from llmaas.api.openapi import LISTING, READING
from llmaas.api.responses import served_models
from llmaas.api.schemas import MODEL, MODEL_LIST, merge, ok
from llmaas.control.clock import unix
from llmaas.control.db.models import TenantModel
from llmaas.control.jobs.fine_tuning import tenant_models
from llmaas.core.errors import ModelNotFoundError
from llmaas.serving.models import ServedModels

router = APIRouter()


def _model_obj(served: ServedModels, model_id: str) -> dict:
    """A base model as a key sees it: ready (its engine is up) or still loading."""
    engine = served.engines.get(model_id)
    cp = served.control
    entry = cp.models.entry(model_id) if cp is not None else None
    status = served.loader.state(model_id).status if served.loader is not None else "ready"
    return {"id": model_id, "object": "model", "created": entry.created if entry else engine.info.created if engine
            else 0, "owned_by": engine.info.owned_by if engine else "llmaas",
            "context_length": engine.info.context_size if engine else entry.context_length if entry else None,
            "status": "ready" if engine is not None else status, "capabilities": list(served.capabilities(model_id)),
            "description": entry.description if entry else ""}


def _listed(served: ServedModels) -> list[str]:
    """Base models a request could use now or shortly: loaded ones and ones being loaded."""
    loading = [m for m, st in served.loader.states.items() if st.status == "loading"] if served.loader else []
    return sorted(set(served.engines) | set(loading))


def _tenant_model_obj(served: ServedModels, m: TenantModel) -> dict:
    engine = served.engines.get(m.base_model)
    return {"id": m.id, "object": "model", "created": unix(m.created_at), "owned_by": m.tenant_id,
            "context_length": engine.info.context_size if engine else None, "parent": m.base_model,
            "lineage": m.lineage, "status": "ready" if engine else served.loader.state(m.base_model).status
            if served.loader else "unloaded", "capabilities": list(served.capabilities(m.id))}


def _owned(request: Request, principal) -> list[TenantModel]:
    cp = request.app.state.control
    if cp is None:
        return []
    with cp.db.session() as s:
        return tenant_models(s, principal.tenant_id)


@router.get("/v1/models", responses=merge(LISTING, ok(MODEL_LIST)))
async def list_models(request: Request, principal: CurrentPrincipal) -> dict:
    served = served_models(request)
    data = [_model_obj(served, m) for m in _listed(served) if served.visible(m, principal)]
    for m in await asyncio.to_thread(_owned, request, principal):
        if m.base_model in served.engines and served.visible(m.id, principal):
            data.append(_tenant_model_obj(served, m))
    return {"object": "list", "data": data}


@router.get("/v1/models/{model:path}", responses=merge(READING, ok(MODEL)))
async def get_model(model: str, request: Request, principal: CurrentPrincipal) -> dict:
    served = served_models(request)
    if model.startswith("ft:") and request.app.state.control is not None:
        for m in await asyncio.to_thread(_owned, request, principal):
            if m.id == model and served.visible(m.id, principal):
                return _tenant_model_obj(served, m)
        raise ModelNotFoundError(model)
    if model not in _listed(served) or not served.visible(model, principal):
        raise ModelNotFoundError(model)
    return _model_obj(served, model)
