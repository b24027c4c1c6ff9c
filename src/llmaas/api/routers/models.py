"""GET /v1/models and /v1/models/{id}: the models this key may use."""

from __future__ import annotations

from fastapi import APIRouter, Request

from llmaas.api.deps import CurrentPrincipal
from llmaas.api.generation import get_engine

router = APIRouter()


def _model_obj(engine) -> dict:
    info = engine.info
    return {"id": info.model_id, "object": "model", "created": info.created, "owned_by": info.owned_by,
            "context_length": info.context_size}


@router.get("/v1/models")
async def list_models(request: Request, principal: CurrentPrincipal) -> dict:
    return {"object": "list", "data": [_model_obj(e) for m, e in request.app.state.engines.items()
                                       if principal.can_use_model(m)]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request, principal: CurrentPrincipal) -> dict:
    return _model_obj(get_engine(request, model_id, principal))
