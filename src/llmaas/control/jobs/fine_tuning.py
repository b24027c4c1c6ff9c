"""Fine-tuning jobs as OpenAI's API shows them, on top of the job queue. The API process only records
and reads; training happens in a worker process (llmaas.workers)."""

from __future__ import annotations

import re
import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from llmaas.control.auth.principal import SPENDERS, Context
from llmaas.control.clock import unix
from llmaas.control.cursors import int_cursor
from llmaas.control.db.models import Job, JobCheckpoint, JobEvent, StoredFile, TenantModel
from llmaas.control.jobs.evals import check_file
from llmaas.control.jobs.queue import new_job, newest_first
from llmaas.control.paging import cursor_row, keyset_page
from llmaas.core.errors import InvalidRequestError, NotFoundError

KIND = "fine_tune"
_SUFFIX = re.compile(r"^[a-zA-Z0-9_-]{1,40}$")
DEFAULT_LORA = {"rank": 16, "alpha": 32, "dropout": 0.0,
                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}



def job_dict(j: Job) -> dict:
    spec, state, result = j.spec, j.state or {}, j.result or {}
    hp = state.get("hyperparameters") or spec["hyperparameters"]
    return {
        "object": "fine_tuning.job", "id": j.id, "model": spec["model"], "created_at": unix(j.created_at),
        "finished_at": unix(j.finished_at), "fine_tuned_model": result.get("fine_tuned_model"),
        "organization_id": j.tenant_id, "result_files": result.get("result_files", []), "status": j.status,
        "validation_file": spec.get("validation_file"), "training_file": spec["training_file"],
        "hyperparameters": hp, "trained_tokens": state.get("trained_tokens") if j.status == "succeeded" else None,
        "error": j.error, "user_provided_suffix": spec.get("suffix"), "seed": spec["seed"],
        "estimated_finish": state.get("estimated_finish"), "integrations": [], "metadata": spec.get("metadata"),
        "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
        "lora": spec["lora"],  # extension: the adapter's configuration
        "eval": spec.get("eval"),  # extension: the eval run on the result when the job succeeds
        "eval_id": result.get("eval_id"),
    }


def event_dict(e: JobEvent) -> dict:
    return {"object": "fine_tuning.job.event", "id": f"ftevent-{e.id}", "created_at": unix(e.created_at),
            "level": e.level, "message": e.message, "type": e.type, "data": e.data}


def checkpoint_dict(c: JobCheckpoint) -> dict:
    return {"object": "fine_tuning.job.checkpoint", "id": c.id, "created_at": unix(c.created_at),
            "fine_tuned_model_checkpoint": c.model_id, "fine_tuning_job_id": c.job_id, "step_number": c.step,
            "metrics": c.metrics}


def _hp(value: Any, name: str, kind: type, lo: float, hi: float) -> Any:
    if value is None or value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and int(value) != value):
        raise InvalidRequestError(f"'{name}' must be 'auto' or a {kind.__name__}.", param=f"hyperparameters.{name}")
    if not lo <= value <= hi:
        raise InvalidRequestError(f"'{name}' must be between {lo} and {hi}.", param=f"hyperparameters.{name}")
    return kind(value)


def create(s: Session, ctx: Context, *, model: str, base_models: list[str], training_file: str,
           validation_file: str | None, suffix: str | None, seed: int | None, metadata: dict | None,
           hyperparameters: dict, lora: dict | None, eval_spec: dict | None = None) -> Job:
    p = ctx.principal
    p.require(*SPENDERS)
    if model not in base_models or not p.can_use_model(model):
        raise InvalidRequestError(f"Model '{model}' cannot be fine-tuned here; fine-tunable models: "
                                  f"{', '.join(m for m in base_models if p.can_use_model(m)) or 'none'}.",
                                  param="model", code="model_not_available")
    for param, fid in (("training_file", training_file), ("validation_file", validation_file)):
        if fid is None:
            continue
        f = s.get(StoredFile, fid)
        if f is None or f.tenant_id != p.tenant_id:
            raise InvalidRequestError(f"File '{fid}' does not exist.", param=param, code="invalid_file")
        if f.purpose != "fine-tune":
            raise InvalidRequestError(f"File '{fid}' has purpose '{f.purpose}'; upload it with purpose 'fine-tune'.",
                                      param=param, code="invalid_file")
    if eval_spec is not None:
        check_file(s, ctx, eval_spec["file_id"], param="eval.file_id")
    if suffix is not None and not _SUFFIX.match(suffix):
        raise InvalidRequestError("'suffix' may have up to 40 letters, digits, '-' and '_'.", param="suffix")
    hp = {"n_epochs": _hp(hyperparameters.get("n_epochs"), "n_epochs", int, 1, 50),
          "batch_size": _hp(hyperparameters.get("batch_size"), "batch_size", int, 1, 256),
          "learning_rate_multiplier": _hp(hyperparameters.get("learning_rate_multiplier"),
                                          "learning_rate_multiplier", float, 1e-3, 100)}
    lora_cfg = {**DEFAULT_LORA, **(lora or {})}
    if not (1 <= int(lora_cfg["rank"]) <= 256 and 0 < float(lora_cfg["alpha"]) <= 1024
            and 0 <= float(lora_cfg["dropout"]) < 1):
        raise InvalidRequestError("LoRA 'rank' must be 1..256, 'alpha' in (0, 1024], 'dropout' in [0, 1).",
                                  param="lora")
    return new_job(s, prefix="ftjob", kind=KIND, tenant_id=p.tenant_id, key_id=p.key_id, status="validating_files",
                   spec={"model": model, "training_file": training_file, "validation_file": validation_file,
                         "suffix": suffix, "seed": seed if seed is not None else secrets.randbelow(2**31),
                         "metadata": metadata, "hyperparameters": hp, "lora": lora_cfg, "eval": eval_spec})


def get(s: Session, ctx: Context, job_id: str) -> Job:
    j = s.get(Job, job_id)
    if j is None or j.kind != KIND or not ctx.principal.can_see_tenant(j.tenant_id):
        raise NotFoundError(f"No fine-tuning job with id '{job_id}'.", param="fine_tuning_job_id")
    return j


def list_jobs(s: Session, ctx: Context, *, after: str | None, limit: int,
              metadata: dict[str, str] | None = None) -> tuple[list[Job], bool]:
    keep = (lambda j: all((j.spec.get("metadata") or {}).get(k) == v for k, v in metadata.items())) \
        if metadata else None
    return newest_first(s, ctx.principal.tenant_id, KIND, after=after, limit=limit,
                        keep=keep)


def events(s: Session, ctx: Context, job_id: str, *, after: str | None, limit: int) -> tuple[list[JobEvent], bool]:
    get(s, ctx, job_id)
    return job_events(s, job_id, after=after, limit=limit)


def job_events(s: Session, job_id: str, *, after: str | None, limit: int) -> tuple[list[JobEvent], bool]:
    """Events of a job the caller already checked access to, newest first."""
    stmt = select(JobEvent).where(JobEvent.job_id == job_id)
    cursor = (int_cursor(after, prefix="ftevent-"),) if after else None
    return keyset_page(s, stmt, (JobEvent.id,), after=cursor, limit=limit, order="desc")


def checkpoints(s: Session, ctx: Context, job_id: str, *, after: str | None,
                limit: int) -> tuple[list[JobCheckpoint], bool]:
    get(s, ctx, job_id)
    stmt = select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
    key = (JobCheckpoint.step,)
    cursor = cursor_row(s, JobCheckpoint, after, key, visible=lambda c: c.job_id == job_id,
                        error="'after' must be a checkpoint id of this job.")
    return keyset_page(s, stmt, key, after=cursor, limit=limit, order="desc")


def tenant_models(s: Session, tenant_id: str) -> list[TenantModel]:
    return list(s.scalars(select(TenantModel).where(TenantModel.tenant_id == tenant_id)
                          .order_by(TenantModel.created_at)))
