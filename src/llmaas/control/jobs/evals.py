"""Eval runs: recorded and read here, run by a worker (llmaas.workers.evaluate) in the durable job queue.

An eval is a Job of kind "eval": `spec` holds what was asked (models, file, task), `state` the progress,
`result` the metrics per model. Per-row predictions are EvalItems. Every query is scoped by tenant."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from llmaas.control.auth.principal import SPENDERS, Context
from llmaas.control.clock import unix, utcnow
from llmaas.control.db.models import EvalItem, Job, JobCheckpoint, StoredFile, TenantModel
from llmaas.control.jobs.queue import new_job, newest_first
from llmaas.control.paging import keyset_page
from llmaas.core.errors import InvalidRequestError, NotFoundError

KIND = "eval"
EVAL_FILE_PURPOSES = ("evals", "fine-tune")



def eval_dict(j: Job) -> dict:
    spec, state, result = j.spec, j.state or {}, j.result or {}
    return {
        "object": "eval", "id": j.id, "name": spec.get("name"), "created_at": unix(j.created_at),
        "started_at": unix(j.started_at), "finished_at": unix(j.finished_at), "status": j.status,
        "model": spec["models"], "file_id": spec["file_id"], "task": spec["task"], "max_rows": spec.get("max_rows"),
        "metadata": spec.get("metadata"), "fine_tuning_job_id": spec.get("fine_tuning_job_id"),
        "progress": {"rows_total": state.get("rows_total"), "rows_done": state.get("rows_done", 0),
                     "model": state.get("model")},
        "results": {m: r["metrics"] for m, r in (result.get("models") or {}).items()},
        "error": j.error,
    }


def item_dict(it: EvalItem) -> dict:
    return {"object": "eval.item", "id": f"{it.model}#{it.idx}", "index": it.idx, "model": it.model, **it.data}


def check_model(s: Session, ctx: Context, model: str, base_models: list[str], param: str = "model") -> None:
    """`model` must be a served base model or one of the tenant's fine-tuned models, usable by this key."""
    p = ctx.principal
    if model in base_models and p.can_use_model(model):
        return
    tm = s.get(TenantModel, model) if model.startswith("ft:") else None
    if tm is not None and tm.tenant_id == p.tenant_id and tm.base_model in base_models and p.can_use_model(model):
        return
    raise NotFoundError(f"The model '{model}' does not exist or you do not have access to it.", param=param,
                        code="model_not_found")


def check_file(s: Session, ctx: Context, file_id: str, param: str = "file_id") -> None:
    f = s.get(StoredFile, file_id)
    if f is None or f.tenant_id != ctx.principal.tenant_id:
        raise InvalidRequestError(f"File '{file_id}' does not exist.", param=param, code="invalid_file")
    if f.purpose not in EVAL_FILE_PURPOSES:
        raise InvalidRequestError(f"File '{file_id}' has purpose '{f.purpose}'; upload eval data with purpose "
                                  "'evals'.", param=param, code="invalid_file")


def create(s: Session, ctx: Context, *, models: list[str], base_models: list[str], file_id: str, task: dict,
           name: str | None = None, max_rows: int | None = None, metadata: dict | None = None,
           fine_tuning_job_id: str | None = None) -> Job:
    p = ctx.principal
    p.require(*SPENDERS)
    for m in models:
        check_model(s, ctx, m, base_models)
    check_file(s, ctx, file_id)
    return new_job(s, prefix="eval", kind=KIND, tenant_id=p.tenant_id, key_id=p.key_id, status="queued",
                   spec={"name": name, "models": models, "file_id": file_id, "task": task, "max_rows": max_rows,
                         "metadata": metadata, "fine_tuning_job_id": fine_tuning_job_id})


def get(s: Session, ctx: Context, eval_id: str, param: str = "eval_id") -> Job:
    """The eval, or a 404 naming `param`, the field the caller's id came in."""
    j = s.get(Job, eval_id)
    if j is None or j.kind != KIND or not ctx.principal.can_see_tenant(j.tenant_id):
        raise NotFoundError(f"No eval with id '{eval_id}'.", param=param)
    return j


def list_evals(s: Session, ctx: Context, *, after: str | None, limit: int) -> tuple[list[Job], bool]:
    return newest_first(s, ctx.principal.tenant_id, KIND, after=after, limit=limit)


def items(s: Session, ctx: Context, eval_id: str, *, model: str | None, after: int | None,
          limit: int) -> tuple[list[EvalItem], bool]:
    j = get(s, ctx, eval_id)
    models = j.spec["models"]
    if model is not None and model not in models:
        raise InvalidRequestError(f"Eval {eval_id} did not evaluate '{model}'; it evaluated {', '.join(models)}.",
                                  param="model")
    stmt = select(EvalItem).where(EvalItem.job_id == j.id, EvalItem.model == (model or models[0]))
    return keyset_page(s, stmt, (EvalItem.idx,), after=None if after is None else (after,), limit=limit)


def compare(s: Session, ctx: Context, ids: list[str]) -> dict:
    """A side-by-side table: one row per (eval, model), one column per metric any of them reports."""
    if not 1 <= len(ids) <= 20:
        raise InvalidRequestError("'ids' must list 1 to 20 eval ids, comma separated.", param="ids")
    rows, columns = [], []
    for eid in ids:
        j = get(s, ctx, eid, param="ids")
        results = (j.result or {}).get("models") or {}
        for m in j.spec["models"]:
            summary = (results.get(m) or {}).get("summary") or {}
            columns += [c for c in summary if c not in columns]
            rows.append({"eval_id": j.id, "name": j.spec.get("name"), "model": m, "task": j.spec["task"]["type"],
                         "file_id": j.spec["file_id"], "status": j.status, "metrics": summary})
    return {"object": "eval.comparison", "columns": columns, "rows": rows}


# -- written by the eval worker --------------------------------------------------------------------
def enqueue(s: Session, *, tenant_id: str, key_id: str | None, spec: dict) -> Job:
    """An eval created by the platform (a fine-tune's on-completion eval), already checked."""
    return new_job(s, prefix="eval", kind=KIND, tenant_id=tenant_id, key_id=key_id, status="queued", spec=spec)


def done_items(s: Session, job_id: str, model: str) -> dict[int, dict]:
    rows = s.execute(select(EvalItem.idx, EvalItem.data).where(EvalItem.job_id == job_id, EvalItem.model == model))
    return {idx: data for idx, data in rows}


def save_items(s: Session, job: Job, model: str, items: list[tuple[int, dict]]) -> None:
    s.add_all(EvalItem(job_id=job.id, tenant_id=job.tenant_id, model=model, idx=i, data=d) for i, d in items)


def attach_to_lineage(s: Session, job: Job, model: str, summary: dict) -> None:
    """Record an eval of a fine-tuned model in its lineage (GET /v1/models/{id})."""
    tm = s.get(TenantModel, model)
    if tm is None or tm.tenant_id != job.tenant_id:
        return
    entry = {"eval_id": job.id, "name": job.spec.get("name"), "task": job.spec["task"]["type"],
             "file_id": job.spec["file_id"], "created_at": unix(utcnow()), "metrics": summary}
    lineage = dict(tm.lineage or {})
    lineage["evals"] = [e for e in lineage.get("evals", []) if e.get("eval_id") != job.id] + [entry]
    tm.lineage = lineage


def report_to_fine_tune(s: Session, job: Job, model: str, summary: dict) -> str | None:
    """For a fine-tune's on-completion eval: merge the metrics into the checkpoint that `model` is (as
    eval_<metric>) and return the fine-tuning job id to post an event to."""
    ft_id = job.spec.get("fine_tuning_job_id")
    if not ft_id:
        return None
    ck = s.scalar(select(JobCheckpoint).where(JobCheckpoint.job_id == ft_id, JobCheckpoint.model_id == model))
    if ck is not None:
        ck.metrics = {**ck.metrics, **{f"eval_{k}": v for k, v in summary.items()}}
    return ft_id
