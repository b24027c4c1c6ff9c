"""The console's Batches page: upload a batch file and start it, follow its progress, download its output and
error files, cancel it. The /v1/files and /v1/batches routes' functions do the work."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from llmaas.api.routers import batches as batches_api
from llmaas.api.routers import files as files_api
from llmaas.console.forms import can_write, form_errors, store_upload
from llmaas.console.routes import SignedIn, page
from llmaas.console.session import Visitor, check_csrf, context
from llmaas.core.errors import LlmaasError
from llmaas.protocol.batches import BatchCreate

router = APIRouter(prefix="/console", include_in_schema=False)
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


async def _batches_page(request: Request, me: Visitor, status_code: int = 200, **ctx) -> HTMLResponse:
    listed = await asyncio.to_thread(batches_api.list_batches, request, context(request, me), None, 50)
    return page(request, "batches.html", me, status_code, batches=listed["data"], endpoints=ENDPOINTS,
                writable=can_write(me), active="batches", **ctx)


@router.get("/batches")
async def batches_page(request: Request, me: SignedIn) -> HTMLResponse:
    return await _batches_page(request, me)


@router.post("/batches")
async def start_batch(request: Request, me: SignedIn, file: Annotated[UploadFile, File()],
                      endpoint: Annotated[str, Form()] = ENDPOINTS[0], csrf: Annotated[str, Form()] = "") -> Response:
    """Upload the file (purpose batch) and create the batch on it."""
    check_csrf(request, me.csrf, csrf)
    try:
        stored = await store_upload(request, me, file, "batch")
        body = BatchCreate(input_file_id=stored.id, endpoint=endpoint, completion_window="24h")
        batch = await asyncio.to_thread(batches_api.create_batch, body, request, context(request, me))
    except LlmaasError as e:
        return await _batches_page(request, me, e.status_code, errors=form_errors(e), endpoint=endpoint)
    return RedirectResponse(f"/console/batches/{batch['id']}", status_code=303)


@router.get("/batches/{batch_id}")
async def batch_page(batch_id: str, request: Request, me: SignedIn) -> HTMLResponse:
    batch = await asyncio.to_thread(batches_api.get_batch, batch_id, request, context(request, me))
    return page(request, "batch.html", me, batch=batch, writable=can_write(me), active="batches")


@router.get("/batches/{batch_id}/progress")
async def batch_progress(batch_id: str, request: Request, me: SignedIn) -> HTMLResponse:
    """The status part alone (htmx refreshes it in place while the batch runs)."""
    batch = await asyncio.to_thread(batches_api.get_batch, batch_id, request, context(request, me))
    return page(request, "batch_progress.html", me, batch=batch, writable=can_write(me))


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, request: Request, me: SignedIn, csrf: Annotated[str, Form()] = "") -> Response:
    check_csrf(request, me.csrf, csrf)
    await asyncio.to_thread(batches_api.cancel_batch, batch_id, request, context(request, me))
    return RedirectResponse(f"/console/batches/{batch_id}", status_code=303)


@router.get("/files/{file_id}/download")
async def download(file_id: str, request: Request, me: SignedIn) -> StreamingResponse:
    return await asyncio.to_thread(files_api.file_content, file_id, request, context(request, me))
