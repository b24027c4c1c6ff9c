"""The Responses API: create (POST /v1/responses, the HTTP side of serving.responses), retrieve, delete and
list the input items of a stored response. The stored ones are read in plain `def` routes: FastAPI runs
them in its thread pool."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request, Response

from llmaas.api.deps import CurrentContext, CurrentPrincipal, control_plane, request_id
from llmaas.api.openapi import GENERATING, READING, STREAMED, WRITING
from llmaas.api.responses import disconnect_watch, served_models, sse_response, sse_typed_events
from llmaas.api.schemas import ITEM_LIST, RESPONSE, RESPONSE_DELETED, merge, ok
from llmaas.control.data.responses import ResponseStore
from llmaas.control.paging import page
from llmaas.core.errors import InvalidRequestError
from llmaas.protocol.responses import ResponseCreateRequest
from llmaas.serving.responses import ServingResponses

router = APIRouter(tags=["responses"])


def _store(request: Request) -> ResponseStore:
    return control_plane(request, "Stored responses").responses


@router.post("/v1/responses", responses=merge(GENERATING, STREAMED, ok(RESPONSE)))
async def create_response(body: ResponseCreateRequest, request: Request, response: Response,
                          principal: CurrentPrincipal):
    served = await ServingResponses(served_models(request)).create(body, principal, request_id(request),
                                                                   disconnect_watch(request))
    if served.stream is not None:
        return sse_response(sse_typed_events(served.stream), served.headers)
    response.headers.update(served.headers)
    return served.body


@router.get("/v1/responses/{response_id}", responses=merge(READING, ok(RESPONSE)))
def get_response(response_id: str, request: Request, ctx: CurrentContext, stream: bool = False) -> dict:
    if stream:  # OpenAI replays a background response's events; this server has no background responses
        raise InvalidRequestError("'stream' is not supported when retrieving a response.", param="stream")
    return _store(request).get(ctx, response_id)


@router.delete("/v1/responses/{response_id}", responses=merge(WRITING, ok(RESPONSE_DELETED)))
def delete_response(response_id: str, request: Request, ctx: CurrentContext) -> dict:
    _store(request).delete(ctx, response_id)
    return {"id": response_id, "object": "response.deleted", "deleted": True}


@router.get("/v1/responses/{response_id}/input_items", responses=merge(READING, ok(ITEM_LIST)))
def list_input_items(response_id: str, request: Request, ctx: CurrentContext, after: str | None = None,
                     limit: int = Query(default=20, ge=1, le=100),
                     order: Literal["asc", "desc"] = "desc") -> dict:
    items, more = _store(request).input_items(ctx, response_id, after=after, limit=limit, order=order)
    return page(items, more)
