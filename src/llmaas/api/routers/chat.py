"""POST /v1/chat/completions: the HTTP side of serving.chat."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from llmaas.api.deps import CurrentPrincipal, request_id
from llmaas.api.openapi import GENERATING, STREAMED
from llmaas.api.responses import disconnect_watch, respond, served_models
from llmaas.api.schemas import CHAT_COMPLETION, merge, ok
from llmaas.protocol.openai import ChatCompletionRequest
from llmaas.serving.chat import ServingChat

router = APIRouter()


@router.post("/v1/chat/completions", responses=merge(GENERATING, STREAMED, ok(CHAT_COMPLETION)))
async def create_chat_completion(body: ChatCompletionRequest, request: Request, response: Response,
                                 principal: CurrentPrincipal):
    served = await ServingChat(served_models(request)).create(body, principal, request_id(request),
                                                              disconnect_watch(request))
    return respond(served, response)
