"""The console's Evals pages: start an eval run (models, an `evals` file, the task), follow its progress, read
its metrics (the summary, per-class precision/recall/F1, the confusion matrix) and compare runs side by side.
The /v1/evals routes' functions do the work."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from llmaas.api.routers import evals as evals_api
from llmaas.api.routers import files as files_api
from llmaas.console.forms import can_write, form_errors, validated
from llmaas.console.routes import SignedIn, models_of, page
from llmaas.console.session import Visitor, check_csrf, context
from llmaas.core.errors import LlmaasError
from llmaas.protocol.evals import EvalCreate

router = APIRouter(prefix="/console", include_in_schema=False)
TASKS = ("classification", "generation", "loss")


async def _evals_page(request: Request, me: Visitor, status_code: int = 200, **ctx) -> HTMLResponse:
    c = context(request, me)
    runs = await asyncio.to_thread(evals_api.list_evals, request, c, None, 50)
    files = await asyncio.to_thread(files_api.list_files, request, c, "evals", None, 100, "desc")
    models = [m["id"] for m in await models_of(request, me) if "completions" in m.get("capabilities", [])]
    return page(request, "evals.html", me, status_code, runs=runs["data"], files=files["data"], models=models,
                tasks=TASKS, writable=can_write(me), active="evals", form=ctx.pop("form", {}), **ctx)


@router.get("/evals")
async def evals_page(request: Request, me: SignedIn) -> HTMLResponse:
    return await _evals_page(request, me)


@router.post("/evals")
async def start_eval(request: Request, me: SignedIn) -> Response:
    raw = await request.form()
    check_csrf(request, me.csrf, str(raw.get("csrf", "")))
    form = {k: str(v) for k, v in raw.items() if k not in ("csrf", "model")}
    form["model"] = [str(m) for m in raw.getlist("model")]
    try:
        body = eval_body(form)
        run = await asyncio.to_thread(evals_api.create_eval, body, request, context(request, me))
    except LlmaasError as e:  # the form keeps what was typed
        return await _evals_page(request, me, e.status_code, errors=form_errors(e), form=form)
    return RedirectResponse(f"/console/evals/{run['id']}", status_code=303)


def eval_body(form: dict) -> EvalCreate:
    task: dict = {"type": form.get("task", "classification")}
    if form.get("system", "").strip():
        task["system"] = form["system"]
    if task["type"] == "classification":
        labels = [x.strip() for x in form.get("labels", "").split(",") if x.strip()]
        if labels:
            task["labels"] = labels
        if form.get("prompt_template", "").strip():
            task["prompt_template"] = form["prompt_template"]
    elif task["type"] == "generation" and form.get("max_tokens", "").strip():
        task["max_tokens"] = form["max_tokens"].strip()
    raw: dict = {"model": form.get("model") or [], "file_id": form.get("file_id", ""), "task": task}
    for name in ("name", "max_rows"):
        if str(form.get(name, "")).strip():
            raw[name] = form[name].strip()
    body = validated(EvalCreate, raw, hidden=("task", "classification", "generation", "loss"))
    body.models()  # 1 to 16 distinct models, or a 400 naming `model`
    return body


@router.get("/evals/compare")
async def compare(request: Request, me: SignedIn, ids: list[str] = Query(default=[])) -> HTMLResponse:
    table = await asyncio.to_thread(evals_api.compare_evals, request, context(request, me), ",".join(ids))
    return page(request, "evals_compare.html", me, table=table, active="evals")


@router.get("/evals/{eval_id}")
async def eval_page(eval_id: str, request: Request, me: SignedIn) -> HTMLResponse:
    run = await asyncio.to_thread(evals_api.get_eval, eval_id, request, context(request, me))
    return page(request, "eval.html", me, run=run, writable=can_write(me), active="evals")


@router.get("/evals/{eval_id}/progress")
async def eval_progress(eval_id: str, request: Request, me: SignedIn) -> HTMLResponse:
    """The run's status and results alone (htmx refreshes them in place while it runs)."""
    run = await asyncio.to_thread(evals_api.get_eval, eval_id, request, context(request, me))
    return page(request, "eval_results.html", me, run=run, writable=can_write(me))


@router.post("/evals/{eval_id}/cancel")
async def cancel(eval_id: str, request: Request, me: SignedIn) -> Response:
    raw = await request.form()
    check_csrf(request, me.csrf, str(raw.get("csrf", "")))
    await asyncio.to_thread(evals_api.cancel_eval, eval_id, request, context(request, me))
    return RedirectResponse(f"/console/evals/{eval_id}", status_code=303)
