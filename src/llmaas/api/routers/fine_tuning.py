"""/v1/fine_tuning/jobs: create, list, retrieve, cancel, events, checkpoints (OpenAI's API)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from llmaas.api.deps import CurrentContext, control_plane
from llmaas.api.listing import metadata_query
from llmaas.api.openapi import JOB_LINKS, LISTING, READING, WRITING
from llmaas.api.responses import served_models
from llmaas.api.schemas import JOB, JOB_CHECKPOINT_LIST, JOB_EVENT_LIST, JOB_LIST, merge, ok
from llmaas.control.jobs import fine_tuning as ft
from llmaas.control.paging import page
from llmaas.control.plane import ControlPlane
from llmaas.protocol.fine_tuning import FineTuneCreate

router = APIRouter(prefix="/v1/fine_tuning", tags=["fine-tuning"])


def _cp(request: Request) -> ControlPlane:
    return control_plane(request, "Fine-tuning")


@router.post("/jobs", responses=merge(WRITING, JOB_LINKS, ok(JOB)))
def create_job(body: FineTuneCreate, request: Request, ctx: CurrentContext) -> dict:
    cp = _cp(request)
    bases = served_models(request).offering(ctx.principal, "fine_tuning")
    with cp.db.session() as s:
        job = ft.create(s, ctx, model=body.model, base_models=bases,
                        training_file=body.training_file, validation_file=body.validation_file, suffix=body.suffix,
                        seed=body.seed, metadata=body.metadata, hyperparameters=body.hp(), lora=body.lora_dict(),
                        eval_spec=body.eval.model_dump() if body.eval else None)
        s.flush()
        out = ft.job_dict(job)
    cp.jobs.event(job.id, "Validating training file: " + body.training_file)
    return out


@router.get("/jobs", responses=merge(LISTING, ok(JOB_LIST)))
def list_jobs(request: Request, ctx: CurrentContext, after: str | None = None,
              limit: int = Query(default=20, ge=1, le=100), metadata: str | None = None) -> dict:
    """`metadata` filters as JSON ({"k": "v"}) — the SDK sends `metadata[k]=v`, read from the query too."""
    cp = _cp(request)
    meta = metadata_query(request)  # reads `metadata` itself; the parameter above documents it
    with cp.db.session() as s:
        rows, more = ft.list_jobs(s, ctx, after=after, limit=limit, metadata=meta)
        return page([ft.job_dict(j) for j in rows], more)


@router.get("/jobs/{fine_tuning_job_id}", responses=merge(READING, ok(JOB)))
def get_job(fine_tuning_job_id: str, request: Request, ctx: CurrentContext) -> dict:
    cp = _cp(request)
    with cp.db.session() as s:
        return ft.job_dict(ft.get(s, ctx, fine_tuning_job_id))


@router.post("/jobs/{fine_tuning_job_id}/cancel", responses=merge(WRITING, ok(JOB)))
def cancel_job(fine_tuning_job_id: str, request: Request, ctx: CurrentContext) -> dict:
    return _cp(request).jobs.cancel(ctx, fine_tuning_job_id, ft.get, ft.job_dict, what=f"Job {fine_tuning_job_id}",
                                    param="fine_tuning_job_id")


@router.get("/jobs/{fine_tuning_job_id}/events", responses=merge(READING, ok(JOB_EVENT_LIST)))
def job_events(fine_tuning_job_id: str, request: Request, ctx: CurrentContext, after: str | None = None,
               limit: int = Query(default=20, ge=1, le=1000)) -> dict:
    cp = _cp(request)
    with cp.db.session() as s:
        rows, more = ft.events(s, ctx, fine_tuning_job_id, after=after, limit=limit)
        return page([ft.event_dict(e) for e in rows], more)


@router.get("/jobs/{fine_tuning_job_id}/checkpoints", responses=merge(READING, ok(JOB_CHECKPOINT_LIST)))
def job_checkpoints(fine_tuning_job_id: str, request: Request, ctx: CurrentContext, after: str | None = None,
                    limit: int = Query(default=10, ge=1, le=100)) -> dict:
    cp = _cp(request)
    with cp.db.session() as s:
        rows, more = ft.checkpoints(s, ctx, fine_tuning_job_id, after=after, limit=limit)
        return page([ft.checkpoint_dict(c) for c in rows], more)
