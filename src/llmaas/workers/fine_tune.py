"""The fine-tune handler: validate files, reserve the training budget, train (resuming from the last
checkpoint after a crash), export adapters to GGUF, register the `ft:` models, meter the cost."""

from __future__ import annotations

import csv
import io
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from llmaas.control.billing.budgets import Hold
from llmaas.control.billing.metering import UsageEvent
from llmaas.control.clock import unix, utcnow
from llmaas.control.data.datasets import validate_chat_lines
from llmaas.control.db.models import JobCheckpoint, TenantModel
from llmaas.control.jobs.evals import enqueue as enqueue_eval
from llmaas.core.chat_jsonl import read_examples
from llmaas.core.errors import LlmaasError
from llmaas.core.gguf_header import read_gguf_arch
from llmaas.workers.context import JobContext, JobFailed, model_spec

log = logging.getLogger("llmaas.worker.fine_tune")

BASE_LR = 2e-4  # LoRA learning rate at learning_rate_multiplier = 1


@dataclass(frozen=True)
class AutoDefaults:
    """What 'auto' means for one base model: the LR at multiplier 1, and how many examples (epochs x rows) a
    small training set is stretched to, with a cap on epochs."""

    base_lr: float = BASE_LR
    examples_seen: int = 2000
    max_epochs: int = 10


# Gemma 3 270M is a base model: its first loss on `answer<end_of_turn>` is ~20 nats (it has never seen the turn
# markers). Measured on 200 rotten_tomatoes rows, one epoch (25 steps, batch 8): at 2e-4 the validation loss only
# fell to 2.3 (token accuracy 38%), at 1e-3 to 0.29 (92%). Its steps cost ~2-3x SmolLM2's (262k-token head), and
# at that LR fewer passes suffice, so fewer examples are seen.
AUTO_DEFAULTS = {"gemma3": AutoDefaults(base_lr=1e-3, examples_seen=1000, max_epochs=5)}


def auto_defaults(architecture: str) -> AutoDefaults:
    """The 'auto' defaults for a base model's architecture (as its GGUF names it), or the general ones."""
    return AUTO_DEFAULTS.get(architecture, AutoDefaults())


def auto_hyperparameters(hp: dict, n_examples: int, architecture: str = "llama") -> dict:
    """OpenAI-like 'auto': enough epochs that small sets are seen a model-dependent number of times over in total
    examples, capped; batch size by data size; multiplier 1."""
    d = auto_defaults(architecture)
    n_epochs = hp["n_epochs"] if hp["n_epochs"] != "auto" else max(
        1, min(d.max_epochs, math.ceil(d.examples_seen / max(1, n_examples))))
    batch = hp["batch_size"] if hp["batch_size"] != "auto" else (8 if n_examples >= 64 else max(1, n_examples // 8))
    lrm = hp["learning_rate_multiplier"] if hp["learning_rate_multiplier"] != "auto" else 1.0
    return {"n_epochs": int(n_epochs), "batch_size": int(batch), "learning_rate_multiplier": float(lrm)}


def _examples(ctx: JobContext, file_id: str, param: str) -> list[dict]:
    try:
        data = ctx.files.read_all(ctx.job.tenant_id, file_id)
    except LlmaasError as e:
        raise JobFailed("invalid_file", f"{param} {file_id}: {e.message}", param) from None
    report = validate_chat_lines([data])
    if not report.ok:
        raise JobFailed("invalid_file", f"{param} {file_id} is not a valid chat fine-tuning file: "
                        f"{report.summary()}", param)
    return list(read_examples([data]))


def run_fine_tune(ctx: JobContext) -> None:
    job, spec = ctx.job, ctx.job.spec
    from llmaas.training import SFTConfig, TrainHooks, export_lora_gguf, latest_checkpoint, train
    from llmaas.training.base_model import resolve_gguf

    train_rows = _examples(ctx, spec["training_file"], "training_file")
    valid_rows = _examples(ctx, spec["validation_file"], "validation_file") if spec.get("validation_file") else None
    base_spec = model_spec(ctx.queue.db, ctx.settings, spec["model"])
    base_gguf = resolve_gguf(base_spec)
    arch = read_gguf_arch(base_gguf).architecture
    hp = auto_hyperparameters(spec["hyperparameters"], len(train_rows), arch)
    ctx.state.update(hyperparameters=hp)
    work = ctx.settings.artifact_dir / "jobs" / job.id
    adapters = ctx.settings.artifact_dir / "adapters" / job.id
    adapters.mkdir(parents=True, exist_ok=True)
    resume = latest_checkpoint(work)
    if job.status == "validating_files":
        ctx.event(f"Files validated: {len(train_rows)} training examples"
                  + (f", {len(valid_rows)} validation examples" if valid_rows else ""))
        ctx.queue.set_status(job.id, ctx.worker, "queued", state=ctx.state)
        ctx.event("Job enqueued")

    holds, price = _reserve_budget(ctx, train_rows, hp["n_epochs"])
    ctx.queue.set_status(job.id, ctx.worker, "running", state=ctx.state)
    ctx.event(f"Fine-tuning job started{' (resuming from ' + resume.name + ')' if resume else ''}")

    suffix = spec.get("suffix") or ""
    model_id = f"ft:{spec['model']}:{job.tenant_id}:{suffix}:{job.id}"
    lora = spec["lora"]
    started = time.monotonic()
    rows_csv: list[dict] = []

    last_step = [ctx.state.get("step", 0)]

    def on_metrics(step: int, m: dict) -> None:
        if "trained_tokens" in m:
            ctx.state["trained_tokens"] = int(m["trained_tokens"])
        elif step != last_step[0] and "tokens_per_s" in m:  # a new optimizer step (not its validation pass)
            done = round(m["tokens_per_s"] * m["step_time_s"])
            ctx.state["trained_tokens"] = ctx.state.get("trained_tokens", 0) + done
        last_step[0] = step
        total = m.get("total_steps") or (round(step / m["epoch"] * hp["n_epochs"]) if m.get("epoch") else None)
        ctx.state["step"] = step
        if total:
            ctx.state["total_steps"] = int(total)
            rate = (time.monotonic() - started) / max(1, step - (ctx.state.get("resumed_step") or 0))
            ctx.state["estimated_finish"] = unix(utcnow() + timedelta(seconds=rate * (total - step)))
        data = {"step": step, **{k: float(v) for k, v in m.items() if isinstance(v, int | float)}}
        rows_csv.append(data)
        msg = f"Step {step}" + (f"/{total}" if total else "") + "".join(
            f", {k}={m[k]:.4f}" for k in ("train_loss", "valid_loss", "train_mean_token_accuracy") if k in m)
        ctx.event(msg, type_="metrics", data=data)

    def on_checkpoint(step: int, ckpt: Path, m: dict) -> None:
        out = adapters / f"ckpt-step-{step}.gguf"
        export_lora_gguf(ckpt / "adapter", base_gguf, out, alpha=float(lora["alpha"]), dtype="f16")
        cid = f"{model_id}:ckpt-step-{step}"
        metrics = {k: float(v) for k, v in m.items() if isinstance(v, int | float)}
        with ctx.queue.db.session() as s:
            if s.get(TenantModel, cid) is None:
                s.add(TenantModel(id=cid, tenant_id=job.tenant_id, base_model=spec["model"], job_id=job.id, step=step,
                                  adapter_path=str(out.relative_to(ctx.settings.artifact_dir)), created_at=utcnow(),
                                  lineage={"base": spec["model"], "job": job.id, "step": step, "checkpoint": True}))
                s.add(JobCheckpoint(id=f"ftckpt-{job.id.removeprefix('ftjob-')}-{step}", job_id=job.id,
                                    tenant_id=job.tenant_id, step=step, created_at=utcnow(), metrics=metrics,
                                    model_id=cid))
        ctx.event(f"Checkpoint created at step {step}: {cid}")

    config = SFTConfig(
        base_model=base_spec, output_dir=work, cache_dir=ctx.settings.data_dir / "models",
        train_examples=train_rows, valid_examples=valid_rows, n_epochs=hp["n_epochs"], batch_size=hp["batch_size"],
        learning_rate=auto_defaults(arch).base_lr * hp["learning_rate_multiplier"], lora_r=int(lora["rank"]),
        lora_alpha=float(lora["alpha"]), lora_dropout=float(lora["dropout"]), target_modules=lora["target_modules"],
        seed=int(spec["seed"]), checkpoint_every=ctx.settings.checkpoint_every
        or _checkpoint_every(len(train_rows), hp), resume_from=resume, export_gguf=True,
        gguf_dtype="f16",  # f32 LoRA tensors make llama.cpp's logits depend on the batch size; f16 do not
        threads=ctx.settings.threads)
    hooks = TrainHooks(on_event=ctx.event, on_metrics=on_metrics, on_checkpoint=on_checkpoint,
                       should_stop=ctx.should_stop)
    result = train(config, hooks)
    trained = int(result.trained_tokens)
    ctx.state.update(trained_tokens=trained, step=result.step)

    if ctx.release.is_set() and not ctx.cancel.is_set():
        ctx.event("Worker stopping: the job will resume from its last checkpoint")
        return  # the budget hold stays with the job (in its state) for the worker that resumes it
    _meter(ctx, holds, price, trained)
    if result.status == "cancelled":
        ctx.queue.set_status(job.id, ctx.worker, "cancelled", state=ctx.state)
        ctx.event("Fine-tuning job cancelled")
        return
    final = adapters / "adapter.gguf"
    shutil.copyfile(result.gguf_path, final)
    metrics_file = ctx.files.store_output(job.tenant_id, "fine-tune-results", "step_metrics.csv", _csv(rows_csv))
    with ctx.queue.db.session() as s:
        if s.get(TenantModel, model_id) is None:
            s.add(TenantModel(id=model_id, tenant_id=job.tenant_id, base_model=spec["model"], job_id=job.id,
                              step=result.step, adapter_path=str(final.relative_to(ctx.settings.artifact_dir)),
                              created_at=utcnow(), lineage={"base": spec["model"], "job": job.id, "step": result.step,
                                                            "metrics": result.metrics}))
    ctx.event(f"New fine-tuned model created: {model_id}")
    result = {"fine_tuned_model": model_id, "result_files": [metrics_file.id]}
    if spec.get("eval"):
        result["eval_id"] = _enqueue_eval(ctx, model_id)
    ctx.queue.set_status(job.id, ctx.worker, "succeeded", state=ctx.state, result=result)
    ctx.event("The job has successfully completed")


def _enqueue_eval(ctx: JobContext, model_id: str) -> str:
    """The eval the job asked for, on each checkpoint and the final model, in the same job queue; its
    metrics come back as this job's events and in its checkpoints' metrics."""
    job, ev = ctx.job, ctx.job.spec["eval"]
    with ctx.queue.db.session() as s:
        ckpts = list(s.scalars(select(JobCheckpoint.model_id).where(JobCheckpoint.job_id == job.id)
                               .order_by(JobCheckpoint.step)))
        e = enqueue_eval(s, tenant_id=job.tenant_id, key_id=job.key_id,
                         spec={"name": f"{job.id} on completion", "models": [*ckpts, model_id],
                               "file_id": ev["file_id"], "task": ev["task"], "max_rows": ev.get("max_rows"),
                               "metadata": None, "fine_tuning_job_id": job.id})
        eval_id = e.id
    ctx.event(f"Eval {eval_id} queued on the fine-tuned model and its {len(ckpts)} checkpoints")
    return eval_id


def _checkpoint_every(n_examples: int, hp: dict) -> int:
    steps = math.ceil(n_examples / hp["batch_size"]) * hp["n_epochs"]
    return max(1, steps // 4)  # a few checkpoints per job: bounded loss on a crash, a few servable ids


def _csv(rows: list[dict]) -> bytes:
    cols = ["step", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue().encode()


def _reserve_budget(ctx: JobContext, rows: list[dict], epochs: int):
    """Reserve a conservative estimate of the training cost (2 characters per token). Kept in the job's
    state, so a resumed job reuses it."""
    if ctx.state.get("holds") is not None:
        ctx.catalog.reload()
        return [Hold(**h) for h in ctx.state["holds"]], ctx.catalog.price(ctx.job.spec["model"])
    chars = sum(len(m.get("content") or "") + 16 for r in rows for m in r["messages"])
    holds, price = ctx.reserve(ctx.job.spec["model"], math.ceil(chars / 2) * epochs, 0, training=True)
    ctx.state["holds"] = [asdict(h) for h in holds]
    ctx.queue.heartbeat(ctx.job.id, ctx.worker, ctx.state)
    return holds, price


def _meter(ctx: JobContext, holds, price, trained_tokens: int) -> None:
    job = ctx.job
    ctx.meter.write_now(UsageEvent(
        request_id=job.id, tenant_id=job.tenant_id, key_id=job.key_id, model=job.spec["model"],
        endpoint="fine_tuning.jobs", prompt_tokens=trained_tokens, completion_tokens=0, cached_tokens=0,
        cost_pico=trained_tokens * price.training_pico, latency_ms=0.0, status="ok", at=utcnow(), holds=holds))
