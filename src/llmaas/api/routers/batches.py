"""/v1/batches: create, retrieve, list, cancel (OpenAI's Batch API). The lines run in serving/batches.py."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from llmaas.api.deps import CurrentContext, control_plane
from llmaas.api.openapi import BATCH_LINKS, LISTING, READING, WRITING
from llmaas.api.schemas import BATCH, BATCH_LIST, merge, ok
from llmaas.control.jobs import batches
from llmaas.control.paging import page
from llmaas.protocol.batches import BatchCreate

router = APIRouter(prefix="/v1/batches", tags=["batches"])


@router.post("", responses=merge(WRITING, BATCH_LINKS, ok(BATCH)))
def create_batch(body: BatchCreate, request: Request, ctx: CurrentContext) -> dict:
    cp = control_plane(request, "Batches")
    with cp.db.session() as s:
        b = batches.create(s, ctx, input_file_id=body.input_file_id, endpoint=body.endpoint,
                           completion_window=body.completion_window, metadata=body.metadata)
        return batches.show(s, b)


@router.get("", responses=merge(LISTING, ok(BATCH_LIST)))
def list_batches(request: Request, ctx: CurrentContext, after: str | None = None,
                 limit: int = Query(default=20, ge=1, le=100)) -> dict:
    cp = control_plane(request, "Batches")
    with cp.db.session() as s:
        rows, more = batches.list_batches(s, ctx, after=after, limit=limit)
        return page([batches.show(s, b) for b in rows], more)


@router.get("/{batch_id}", responses=merge(READING, ok(BATCH)))
def get_batch(batch_id: str, request: Request, ctx: CurrentContext) -> dict:
    cp = control_plane(request, "Batches")
    with cp.db.session() as s:
        return batches.show(s, batches.get(s, ctx, batch_id))


@router.post("/{batch_id}/cancel", responses=merge(WRITING, ok(BATCH)))
def cancel_batch(batch_id: str, request: Request, ctx: CurrentContext) -> dict:
    cp = control_plane(request, "Batches")
    with cp.db.session() as s:
        return batches.show(s, batches.cancel(s, ctx, batch_id))
