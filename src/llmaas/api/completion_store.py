"""What chat completions need to be stored (`store: true`): the choices gathered from the engine's
deltas (streamed or not) and the save itself, off the event loop."""

from __future__ import annotations

import asyncio

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from llmaas.api.deps import control_plane
from llmaas.control.db.models import StoredFile
from llmaas.control.plane import ControlPlane
from llmaas.control.principal import Context, Principal
from llmaas.control.stored_completions import ExportFilter
from llmaas.core.errors import InvalidRequestError
from llmaas.engine.types import GenerationOutput
from llmaas.protocol.openai import ChatCompletionRequest
from llmaas.protocol.stored_completions import FileFromSource


class ChoiceCollector:
    """The n choices of a chat completion, assembled from (index, delta) pairs."""

    def __init__(self, n: int, logprobs: bool) -> None:
        self.texts = [""] * n
        self.lps: list[list[dict] | None] = [[] if logprobs else None for _ in range(n)]
        self.finish: list[str | None] = [None] * n

    def add(self, i: int, out: GenerationOutput, lp_entries: list[dict]) -> None:
        self.texts[i] += out.text
        if lp_entries and self.lps[i] is not None:
            self.lps[i] += lp_entries
        if out.finished:
            self.finish[i] = out.finish_reason

    def choices(self) -> list[dict]:
        return [{"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                 "logprobs": {"content": self.lps[i]} if self.lps[i] is not None else None,
                 "finish_reason": self.finish[i]}
                for i, text in enumerate(self.texts)]


def wants_store(request: Request, body: ChatCompletionRequest) -> bool:
    """Stored only with the control plane on: without it there is no tenant to keep it for."""
    return body.store and request.app.state.control is not None


async def store_completion(request: Request, principal: Principal, body: ChatCompletionRequest,
                           completion: dict) -> None:
    """Save before the client has the answer, so a completion it got is one it can list."""
    cp: ControlPlane = request.app.state.control
    await asyncio.to_thread(cp.stored.save, principal, completion, body.stored_request(), body.metadata)


async def file_from_source(request: Request, ctx: Context) -> StoredFile:
    """POST /v1/files with a JSON body: export stored completions into a fine-tune file."""
    try:
        body = FileFromSource.model_validate_json(await request.body())
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None
    return await asyncio.to_thread(_export_to_file, control_plane(request, "Files"), ctx, body)


def _export_to_file(cp: ControlPlane, ctx: Context, body: FileFromSource) -> StoredFile:
    """Written through the same FileUpload as a multipart upload: same size limit, same validation."""
    src = body.source
    up = cp.files.upload(ctx, body.purpose, body.filename)
    lines = 0
    try:
        for line in cp.stored.export_lines(ctx, ExportFilter(
                model=src.model, created_after=src.created_after, created_before=src.created_before,
                min_rating=src.min_rating, include_corrected=src.include_corrected, metadata=src.metadata)):
            up.write(line)
            lines += 1
    except BaseException:
        up.abort()
        raise
    if not lines:
        up.abort()
        raise InvalidRequestError("No stored completion matches 'source' (its model, time range, min_rating and "
                                  "metadata); nothing to export.", param="source")
    return up.finish()
