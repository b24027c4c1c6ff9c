"""/v1/files: OpenAI's Files API (multipart upload, list, retrieve, content, delete), tenant-scoped."""

from __future__ import annotations

import asyncio
from typing import Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from llmaas.api.completion_store import file_from_source
from llmaas.api.deps import CurrentContext, control_plane
from llmaas.api.multipart import StreamedForm
from llmaas.api.openapi import FILE_CONTENT, FILE_LINKS, LISTING, READING, UPLOAD_BODY, UPLOADING, WRITING
from llmaas.api.schemas import FILE, FILE_DELETED, FILE_LIST, merge, ok
from llmaas.control.data.files import FileService, FileUpload, file_dict
from llmaas.control.paging import page
from llmaas.core.errors import InvalidRequestError

router = APIRouter(tags=["files"])


def _files(request: Request) -> FileService:
    return control_plane(request, "Files").files


@router.post("/v1/files", responses=merge(UPLOADING, FILE_LINKS, ok(FILE)),
             openapi_extra=UPLOAD_BODY)
async def upload_file(request: Request, ctx: CurrentContext) -> dict:
    service = _files(request)
    if request.headers.get("content-type", "").partition(";")[0].strip().lower() == "application/json":
        return file_dict(await file_from_source(request, ctx))  # a file exported from stored completions
    upload: list[FileUpload] = []

    def on_file(filename: str, fields: dict[str, str]):
        up = service.upload(ctx, fields.get("purpose"), filename)
        upload.append(up)
        return up.write

    form = StreamedForm("file", on_file)
    try:
        await form.parse(request)
        if not upload:
            raise InvalidRequestError("Missing the 'file' part of the form.", param="file")
        if "purpose" not in form.fields and upload[0].purpose is None:
            raise InvalidRequestError("Missing 'purpose' (fine-tune, batch or evals).", param="purpose")
        f = await asyncio.to_thread(upload[0].finish, form.fields.get("purpose"))
    except BaseException:
        # Every way out but success removes the partial encrypted file (abort is idempotent, and a no-op
        # after finish() has moved the file into place).
        for up in upload:
            up.abort()
        raise
    return file_dict(f)


@router.get("/v1/files", responses=merge(LISTING, ok(FILE_LIST)))
def list_files(request: Request, ctx: CurrentContext, purpose: str | None = None, after: str | None = None,
               limit: int = Query(default=100, ge=1, le=10_000), order: Literal["asc", "desc"] = "desc") -> dict:
    service = _files(request)
    with service.db.session() as s:
        rows, more = service.list(s, ctx, purpose=purpose, after=after, limit=limit, order=order)
        return page([file_dict(f) for f in rows], more)


@router.get("/v1/files/{file_id}", responses=merge(READING, ok(FILE)))
def get_file(file_id: str, request: Request, ctx: CurrentContext) -> dict:
    service = _files(request)
    with service.db.session() as s:
        return file_dict(service.get(s, ctx, file_id))


@router.get("/v1/files/{file_id}/content", responses={**READING, **FILE_CONTENT})
def file_content(file_id: str, request: Request, ctx: CurrentContext) -> StreamingResponse:
    f, chunks = _files(request).content(ctx, file_id)
    media = "text/csv" if f.filename.endswith(".csv") else "application/jsonl"
    return StreamingResponse(chunks, media_type=media, headers={"Content-Disposition": content_disposition(f.filename)})


def content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII `filename` fallback (quotes, backslashes and control or non-ASCII characters
    replaced) for old clients, and the exact name as RFC 5987 `filename*=UTF-8''...`. Headers are Latin-1 on
    the wire, so the raw name of a file like 日本語.jsonl cannot go in as it is."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.delete("/v1/files/{file_id}", responses=merge(WRITING, ok(FILE_DELETED)))
def delete_file(file_id: str, request: Request, ctx: CurrentContext) -> dict:
    _files(request).delete(ctx, file_id)
    return {"id": file_id, "object": "file", "deleted": True}
