"""The console's Files and Fine-tuning pages. Every action calls the /v1 route's own function with the signed-in
key's context, so roles, tenant scoping, validation and audit are the API's, and a refusal is the API's error
shown on the page."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from llmaas.api.responses import served_models
from llmaas.api.routers import files as files_api
from llmaas.api.routers import fine_tuning as ft_api
from llmaas.console.forms import can_write, form_errors, store_upload, validated
from llmaas.console.routes import SignedIn, page
from llmaas.console.session import Visitor, check_csrf, context, control
from llmaas.core.errors import LlmaasError
from llmaas.protocol.fine_tuning import FineTuneCreate

router = APIRouter(prefix="/console", include_in_schema=False)
_PREVIEW_LINES = 20


# --- files ---

async def _files_page(request: Request, me: Visitor, status_code: int = 200, **ctx) -> HTMLResponse:
    listed = await asyncio.to_thread(files_api.list_files, request, context(request, me), None, None, 100, "desc")
    return page(request, "files.html", me, status_code, files=listed["data"], writable=can_write(me), active="files",
                **ctx)


@router.get("/files")
async def files_page(request: Request, me: SignedIn) -> HTMLResponse:
    return await _files_page(request, me)


@router.post("/files")
async def upload(request: Request, me: SignedIn, file: Annotated[UploadFile, File()],
                 purpose: Annotated[str, Form()] = "fine-tune", csrf: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, me.csrf, csrf)
    try:
        stored = await store_upload(request, me, file, purpose)
    except LlmaasError as e:  # the form keeps the chosen purpose; the file must be chosen again (browsers' rule)
        return await _files_page(request, me, e.status_code, errors=form_errors(e), purpose=purpose,
                                 filename=file.filename)
    return RedirectResponse(f"/console/files/{stored.id}", status_code=303)


@router.get("/files/{file_id}")
async def file_page(file_id: str, request: Request, me: SignedIn) -> HTMLResponse:
    ctx = context(request, me)
    info = await asyncio.to_thread(files_api.get_file, file_id, request, ctx)
    _, chunks = control(request).files.content(ctx, file_id)
    buf = b""
    try:
        for chunk in chunks:
            buf += chunk
            if buf.count(b"\n") >= _PREVIEW_LINES:
                break
    finally:
        getattr(chunks, "close", lambda: None)()  # the decrypting reader's file
    lines = buf.decode("utf-8", "replace").splitlines()[:_PREVIEW_LINES]
    return page(request, "file.html", me, file=info, lines=lines, writable=can_write(me), active="files")


@router.post("/files/{file_id}/delete")
async def delete_file(file_id: str, request: Request, me: SignedIn, csrf: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, me.csrf, csrf)
    await asyncio.to_thread(control(request).files.delete, context(request, me), file_id)
    return RedirectResponse("/console/files", status_code=303)


# --- fine-tuning ---

@router.get("/fine-tuning")
async def jobs_page(request: Request, me: SignedIn) -> HTMLResponse:
    return await _jobs_page(request, me)


async def _jobs_page(request: Request, me: Visitor, status_code: int = 200, **ctx) -> HTMLResponse:
    c = context(request, me)
    jobs = await asyncio.to_thread(ft_api.list_jobs, request, c, None, 50, None)
    files = await asyncio.to_thread(files_api.list_files, request, c, "fine-tune", None, 100, "desc")
    bases = served_models(request).offering(me.principal, "fine_tuning")
    return page(request, "jobs.html", me, status_code, jobs=jobs["data"], files=files["data"], bases=bases,
                writable=can_write(me), active="fine-tuning", form=ctx.pop("form", {}), **ctx)


@router.post("/fine-tuning")
async def create_job(request: Request, me: SignedIn) -> Response:
    form = dict(await request.form())
    check_csrf(request, me.csrf, str(form.pop("csrf", "")))
    try:
        body = _job_body({k: str(v) for k, v in form.items()})
        job = await asyncio.to_thread(ft_api.create_job, body, request, context(request, me))
    except LlmaasError as e:  # the form keeps what was typed
        return await _jobs_page(request, me, e.status_code, errors=form_errors(e), form=form)
    return RedirectResponse(f"/console/fine-tuning/{job['id']}", status_code=303)


def _job_body(form: dict[str, str]) -> FineTuneCreate:
    hp: dict = {}
    for name in ("n_epochs", "batch_size", "learning_rate_multiplier"):
        if form.get(name, "").strip():
            hp[name] = form[name].strip()
    raw: dict = {"model": form.get("model", ""), "training_file": form.get("training_file", ""),
                 "method": {"type": "supervised", "supervised": {"hyperparameters": hp}}}
    if form.get("suffix", "").strip():
        raw["suffix"] = form["suffix"].strip()
    if form.get("rank", "").strip():
        raw["lora"] = {"rank": form["rank"].strip()}
    return validated(FineTuneCreate, raw, hidden=("method", "supervised", "hyperparameters"))


@router.get("/fine-tuning/{job_id}")
async def job_page(job_id: str, request: Request, me: SignedIn) -> HTMLResponse:
    job = await asyncio.to_thread(ft_api.get_job, job_id, request, context(request, me))
    return page(request, "job.html", me, job=job, writable=can_write(me), active="fine-tuning")


@router.get("/fine-tuning/{job_id}/live")
async def job_live(job_id: str, request: Request, me: SignedIn) -> dict:
    """The job, its events (oldest first) and checkpoints: what the job page polls while the job runs."""
    c = context(request, me)
    job = await asyncio.to_thread(ft_api.get_job, job_id, request, c)
    events = await asyncio.to_thread(ft_api.job_events, job_id, request, c, None, 1000)
    checkpoints = await asyncio.to_thread(ft_api.job_checkpoints, job_id, request, c, None, 100)
    return {"job": job, "events": list(reversed(events["data"])), "checkpoints": checkpoints["data"]}


@router.post("/fine-tuning/{job_id}/cancel")
async def cancel_job(job_id: str, request: Request, me: SignedIn, csrf: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, me.csrf, csrf)
    await asyncio.to_thread(ft_api.cancel_job, job_id, request, context(request, me))
    return RedirectResponse(f"/console/fine-tuning/{job_id}", status_code=303)
