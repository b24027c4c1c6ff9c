"""The eval handler: read and check the file against the task, then evaluate each model through a
llama.cpp engine of its base model (adapters hot-loaded as in serving), persisting per-row results as
batches finish so a restarted job resumes where it stopped; metrics, lineage and fine-tune reports last."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from llmaas.control.billing.metering import UsageEvent
from llmaas.control.clock import utcnow
from llmaas.control.db.models import TenantModel
from llmaas.control.jobs import evals as svc
from llmaas.core.errors import LlmaasError
from llmaas.engine.client import EngineClient
from llmaas.evals.metrics import flatten_metrics
from llmaas.evals.model_run import ModelRun, shared_prompt, summarize
from llmaas.evals.tasks import Row, TaskError, label_set, read_rows
from llmaas.workers.context import JobContext, JobFailed, model_spec

log = logging.getLogger("llmaas.worker.eval")

_HEADLINE = ("accuracy", "macro_f1", "log_loss", "ece", "exact_match", "token_f1", "rouge_l", "bleu", "loss",
             "perplexity")


def run_eval(ctx: JobContext) -> None:
    job, spec = ctx.job, ctx.job.spec
    task = spec["task"]
    try:
        data = ctx.files.read_all(job.tenant_id, spec["file_id"])
    except LlmaasError as e:
        raise JobFailed("invalid_file", f"file_id {spec['file_id']}: {e.message}", "file_id") from None
    try:
        rows = read_rows(data, task, spec.get("max_rows"))
        labels = label_set(rows, task) if task["type"] == "classification" else []
    except TaskError as e:
        raise JobFailed("invalid_file", f"File {spec['file_id']} does not fit the {task['type']} task: {e}",
                        "file_id") from None
    models = spec["models"]
    resumed = job.status == "running"
    ctx.state.update(rows_total=len(rows) * len(models), labels=labels)
    ctx.queue.set_status(job.id, ctx.worker, "running", state=ctx.state)
    ctx.event(("Eval resumed" if resumed else "Eval started") + f": {len(rows)} rows x {len(models)} model(s)"
              + (f", labels {', '.join(labels)}" if labels else ""))
    results = dict((job.result or {}).get("models") or {})
    outcome = asyncio.run(_evaluate(ctx, rows, labels, results))
    if outcome == "released":
        ctx.event("Worker stopping: the eval will resume from its last finished batch")
    elif outcome == "cancelled":
        ctx.queue.set_status(job.id, ctx.worker, "cancelled", state=ctx.state, result={"models": results})
        ctx.event("Eval cancelled")
    else:
        ctx.queue.set_status(job.id, ctx.worker, "succeeded", state=ctx.state, result={"models": results})
        ctx.event("The eval has successfully completed")


def _resolve(ctx: JobContext, model: str) -> tuple[str, str | None, str | None]:
    """(base model id, adapter name, adapter file) of an eval's model."""
    if not model.startswith("ft:"):
        return model, None, None
    with ctx.queue.db.session() as s:
        tm = s.get(TenantModel, model)
        if tm is None or tm.tenant_id != ctx.job.tenant_id:
            raise JobFailed("model_not_found", f"The model '{model}' no longer exists.", "model")
        return tm.base_model, tm.id, str(ctx.settings.artifact_dir / tm.adapter_path)


async def _evaluate(ctx: JobContext, rows: list[Row], labels: list[str], results: dict) -> str:
    from llmaas.engine.factory import build_engine

    job, task = ctx.job, ctx.job.spec["task"]
    engines: dict[str, EngineClient] = {}
    try:
        for model in job.spec["models"]:
            if model in results:  # finished on an earlier attempt
                continue
            base, adapter, path = _resolve(ctx, model)
            if base not in engines:
                # Batch work: no per-step prefill cap (and so no start-up cost measurement, which would
                # compete for the CPU with the serving process right when a job has just finished).
                engines[base] = build_engine(ctx.settings.model_copy(update={"prefill_step_ms": 0.0}),
                                             model_spec(ctx.queue.db, ctx.settings, base), model_id=base)
                await engines[base].start()
            engine = engines[base]
            if adapter is not None:
                await engine.ensure_adapter(adapter, path)
            ctx.state["model"] = model
            run = ModelRun(engine, adapter, task, labels, ctx.settings.eval_batch_rows, shared_prompt(engine, rows))
            outcome = await _evaluate_model(ctx, run, model, rows, labels, len(results) * len(rows))
            if outcome != "done":
                return outcome
            results[model] = await asyncio.to_thread(_finish_model, ctx, model, labels)
            ctx.queue.set_status(job.id, ctx.worker, "running", state=ctx.state, result={"models": results})
        return "done"
    finally:
        for e in engines.values():
            await e.shutdown()


def _estimate(rows: list[Row], task: dict, labels: list[str]) -> tuple[int, int]:
    """Worst-case (prompt, completion) tokens: at most one token per byte, plus template overhead."""
    prompt = sum(sum(len(m.content.encode()) + 16 for m in r.prompt) for r in rows)
    if task["type"] == "classification":
        prompt += len(rows) * sum(len(lb.encode()) + 4 for lb in labels)
    elif task["type"] == "generation":
        prompt += sum(len((r.answer or "").encode()) + 4 for r in rows) * 2  # the reference is scored too
    else:
        prompt += sum(sum(len(m.content.encode()) + 16 for m in t) for r in rows for t in r.turns)
    return prompt, len(rows) * int(task.get("max_tokens") or 256) if task["type"] == "generation" else 0


async def _evaluate_model(ctx: JobContext, run: ModelRun, model: str, rows: list[Row], labels: list[str],
                          rows_done_before: int) -> str:
    job = ctx.job
    done = await asyncio.to_thread(_done, ctx, model)
    todo = [r for r in rows if r.idx not in done]
    ctx.state["rows_done"] = rows_done_before + len(done)  # rows of the models already finished, then this one
    if not todo:
        return "done"
    holds, price = await asyncio.to_thread(ctx.reserve, model, *_estimate(todo, job.spec["task"], labels))
    used = {"prompt": 0, "completion": 0}
    started = time.monotonic()

    async def on_batch(items: list[tuple[int, dict]], prompt_tokens: int, generated: int) -> None:
        await asyncio.to_thread(_save, ctx, model, items)
        used["prompt"] += prompt_tokens
        used["completion"] += generated
        ctx.state["rows_done"] += len(items)

    try:
        finished = await run.run(todo, on_batch, ctx.should_stop)
    finally:
        ctx.meter.write_now(UsageEvent(
            request_id=f"{job.id}-{uuid.uuid4().hex[:16]}", tenant_id=job.tenant_id, key_id=job.key_id,
            model=model, endpoint="evals", prompt_tokens=used["prompt"], completion_tokens=used["completion"],
            cached_tokens=0, cost_pico=price.cost(used["prompt"], used["completion"]),
            latency_ms=(time.monotonic() - started) * 1000, status="ok", at=utcnow(), holds=holds))
    if not finished:
        return "cancelled" if ctx.cancel.is_set() else "released"
    rate = len(todo) / max(1e-9, time.monotonic() - started)
    ctx.state["rows_per_s"] = round(rate, 2)
    log.info("eval %s: %s, %d rows at %.1f rows/s", job.id, model, len(todo), rate)
    return "done"


def _done(ctx: JobContext, model: str) -> dict[int, dict]:
    with ctx.queue.db.session() as s:
        return svc.done_items(s, ctx.job.id, model)


def _save(ctx: JobContext, model: str, items: list[tuple[int, dict]]) -> None:
    with ctx.queue.db.session() as s:
        svc.save_items(s, ctx.job, model, items)
    ctx.queue.heartbeat(ctx.job.id, ctx.worker, ctx.state)


def _finish_model(ctx: JobContext, model: str, labels: list[str]) -> dict:
    """Metrics from the stored rows; recorded in the model's lineage and its fine-tune's events."""
    job = ctx.job
    items = list(_done(ctx, model).values())
    try:
        metrics = summarize(job.spec["task"], labels, items)
    except TaskError as e:
        raise JobFailed("eval_failed", f"{model}: {e}") from None
    if "rows_per_s" in ctx.state:
        metrics["rows_per_s"] = ctx.state["rows_per_s"]
    summary = flatten_metrics(metrics)
    headline = ", ".join(f"{k}={summary[k]:.4f}" for k in _HEADLINE if summary.get(k) is not None)
    ctx.event(f"{model}: {headline}", type_="metrics", data={"model": model, **summary})
    with ctx.queue.db.session() as s:
        svc.attach_to_lineage(s, job, model, summary)
        ft_id = svc.report_to_fine_tune(s, job, model, summary)
    if ft_id:
        ctx.queue.event(ft_id, f"Eval {job.id} on {model}: {headline}", type_="metrics",
                        data={"eval_id": job.id, "model": model, **summary})
    return {"metrics": metrics, "summary": summary}
