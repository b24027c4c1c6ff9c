"""/v1/evals: create an eval run, list, retrieve (metrics), cancel, per-row items, side-by-side compare."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from llmaas.api.deps import CurrentContext, control_plane
from llmaas.api.openapi import EVAL_LINKS, LISTING, READING, WRITING
from llmaas.api.responses import served_models
from llmaas.api.schemas import EVAL, EVAL_COMPARISON, EVAL_ITEM_LIST, EVAL_LIST, JOB_EVENT_LIST, merge, ok
from llmaas.control.cursors import int_cursor
from llmaas.control.jobs import evals
from llmaas.control.jobs import fine_tuning as ft
from llmaas.control.paging import page
from llmaas.control.plane import ControlPlane
from llmaas.protocol.evals import EvalCreate

router = APIRouter(prefix="/v1/evals", tags=["evals"])


def _cp(request: Request) -> ControlPlane:
    return control_plane(request, "Evals")


@router.post("", responses=merge(WRITING, EVAL_LINKS, ok(EVAL)))
def create_eval(body: EvalCreate, request: Request, ctx: CurrentContext) -> dict:
    cp = _cp(request)
    served = served_models(request)
    bases = served.offering(ctx.principal, "completions")
    for m in body.models():  # evals score log-probabilities: a model that only embeds has none (400)
        if m not in bases and m in served.offering(ctx.principal, "embeddings"):
            served.require(m, "completions")
    with cp.db.session() as s:
        job = evals.create(s, ctx, models=body.models(), base_models=bases,
                           file_id=body.file_id, task=body.task.model_dump(), name=body.name, max_rows=body.max_rows,
                           metadata=body.metadata)
        s.flush()
        out = evals.eval_dict(job)
    cp.jobs.event(job.id, f"Eval created: {', '.join(out['model'])} on {body.file_id} ({body.task.type})")
    return out


@router.get("", responses=merge(LISTING, ok(EVAL_LIST)))
def list_evals(request: Request, ctx: CurrentContext, after: str | None = None,
               limit: int = Query(default=20, ge=1, le=100)) -> dict:
    with _cp(request).db.session() as s:
        rows, more = evals.list_evals(s, ctx, after=after, limit=limit)
        return page([evals.eval_dict(j) for j in rows], more)


@router.get("/compare", responses=merge(READING, ok(EVAL_COMPARISON)))
def compare_evals(request: Request, ctx: CurrentContext, ids: str = Query(description="comma-separated eval ids")):
    with _cp(request).db.session() as s:
        return evals.compare(s, ctx, [i.strip() for i in ids.split(",") if i.strip()])


@router.get("/{eval_id}", responses=merge(READING, ok(EVAL)))
def get_eval(eval_id: str, request: Request, ctx: CurrentContext) -> dict:
    with _cp(request).db.session() as s:
        return evals.eval_dict(evals.get(s, ctx, eval_id))


@router.post("/{eval_id}/cancel", responses=merge(WRITING, ok(EVAL)))
def cancel_eval(eval_id: str, request: Request, ctx: CurrentContext) -> dict:
    return _cp(request).jobs.cancel(ctx, eval_id, evals.get, evals.eval_dict, what=f"Eval {eval_id}", param="eval_id")


@router.get("/{eval_id}/items", responses=merge(READING, ok(EVAL_ITEM_LIST)))
def eval_items(eval_id: str, request: Request, ctx: CurrentContext, model: str | None = None,
               after: str | None = None, limit: int = Query(default=50, ge=1, le=1000)) -> dict:
    """Per-row results of one model (default: the eval's first), in file order; `after` is an item id."""
    idx = None if after is None else int_cursor(after.rsplit("#", 1)[-1], what="an item id")
    with _cp(request).db.session() as s:
        rows, more = evals.items(s, ctx, eval_id, model=model, after=idx, limit=limit)
        return page([evals.item_dict(it) for it in rows], more)


@router.get("/{eval_id}/events", responses=merge(READING, ok(JOB_EVENT_LIST)))
def eval_events(eval_id: str, request: Request, ctx: CurrentContext, after: str | None = None,
                limit: int = Query(default=20, ge=1, le=1000)) -> dict:
    cp = _cp(request)
    with cp.db.session() as s:
        evals.get(s, ctx, eval_id)
        rows, more = ft.job_events(s, eval_id, after=after, limit=limit)
        return page([ft.event_dict(e) for e in rows], more)
