"""Stored chat completions as OpenAI defines them (list, retrieve, update metadata, delete, messages)
and feedback on them (our extension). Routes are plain `def`: FastAPI runs them in its thread pool."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request

from llmaas.api.deps import CurrentContext, control_plane
from llmaas.api.listing import metadata_query
from llmaas.api.openapi import LISTING, READING, WRITING
from llmaas.api.schemas import (
    FEEDBACK,
    FEEDBACK_LIST,
    STORED_COMPLETION,
    STORED_COMPLETION_DELETED,
    STORED_COMPLETION_LIST,
    STORED_MESSAGE_LIST,
    merge,
    ok,
)
from llmaas.control.data.stored_completions import StoredCompletionService
from llmaas.control.paging import page
from llmaas.protocol.stored_completions import FeedbackCreate, MetadataUpdate

router = APIRouter(tags=["stored completions"])

Limit = Query(default=20, ge=1, le=100)


def _stored(request: Request) -> StoredCompletionService:
    return control_plane(request, "Stored completions").stored


@router.get("/v1/chat/completions", responses=merge(LISTING, ok(STORED_COMPLETION_LIST)))
def list_completions(request: Request, ctx: CurrentContext, model: str | None = None, after: str | None = None,
                     limit: int = Limit, order: Literal["asc", "desc"] = "asc") -> dict:
    items, more = _stored(request).list(ctx, model=model, metadata=metadata_query(request), after=after,
                                        limit=limit, order=order)
    return page(items, more)


@router.get("/v1/chat/completions/{completion_id}", responses=merge(READING, ok(STORED_COMPLETION)))
def get_completion(completion_id: str, request: Request, ctx: CurrentContext) -> dict:
    return _stored(request).get(ctx, completion_id)


@router.post("/v1/chat/completions/{completion_id}", responses=merge(WRITING, ok(STORED_COMPLETION)))
def update_completion(completion_id: str, body: MetadataUpdate, request: Request, ctx: CurrentContext) -> dict:
    return _stored(request).update_metadata(ctx, completion_id, body.metadata)


@router.delete("/v1/chat/completions/{completion_id}", responses=merge(WRITING, ok(STORED_COMPLETION_DELETED)))
def delete_completion(completion_id: str, request: Request, ctx: CurrentContext) -> dict:
    _stored(request).delete(ctx, completion_id)
    return {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}


@router.get("/v1/chat/completions/{completion_id}/messages", responses=merge(READING, ok(STORED_MESSAGE_LIST)))
def completion_messages(completion_id: str, request: Request, ctx: CurrentContext, after: str | None = None,
                        limit: int = Limit, order: Literal["asc", "desc"] = "asc") -> dict:
    items, more = _stored(request).messages(ctx, completion_id, after=after, limit=limit, order=order)
    return page(items, more)


@router.post("/v1/feedback", responses=merge(WRITING, ok(FEEDBACK)))
def create_feedback(body: FeedbackCreate, request: Request, ctx: CurrentContext) -> dict:
    return _stored(request).add_feedback(ctx, body.completion_id, body.rating, body.correction, body.comment)


@router.get("/v1/feedback", responses=merge(READING, ok(FEEDBACK_LIST)))
def list_feedback(request: Request, ctx: CurrentContext, completion_id: str | None = None, after: str | None = None,
                  limit: int = Limit, order: Literal["asc", "desc"] = "desc") -> dict:
    items, more = _stored(request).list_feedback(ctx, completion_id=completion_id, after=after, limit=limit,
                                                 order=order)
    return page(items, more)
