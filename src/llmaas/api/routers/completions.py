"""POST /v1/completions (legacy text completions): the HTTP side of serving.completions."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from llmaas.api.deps import CurrentPrincipal, request_id
from llmaas.api.openapi import GENERATING, STREAMED
from llmaas.api.responses import disconnect_watch, respond, served_models
from llmaas.api.schemas import TEXT_COMPLETION, merge, ok
from llmaas.protocol.openai import CompletionRequest
from llmaas.serving.completions import ServingCompletion

router = APIRouter()


@router.post("/v1/completions", responses=merge(GENERATING, STREAMED, ok(TEXT_COMPLETION)))
async def create_completion(body: CompletionRequest, request: Request, response: Response,
                            principal: CurrentPrincipal):
    served = await ServingCompletion(served_models(request)).create(body, principal, request_id(request),
                                                                    disconnect_watch(request))
    return respond(served, response)
