"""POST /v1/embeddings: the HTTP side of serving.embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from llmaas.api.deps import CurrentPrincipal, request_id
from llmaas.api.openapi import GENERATING
from llmaas.api.responses import respond, served_models
from llmaas.api.schemas import EMBEDDING_LIST, merge, ok
from llmaas.protocol.openai import EmbeddingRequest
from llmaas.serving.embeddings import ServingEmbedding

router = APIRouter()


@router.post("/v1/embeddings", responses=merge(GENERATING, ok(EMBEDDING_LIST)))
async def create_embeddings(body: EmbeddingRequest, request: Request, response: Response,
                            principal: CurrentPrincipal):
    served = await ServingEmbedding(served_models(request)).create(body, principal, request_id(request))
    return respond(served, response)
