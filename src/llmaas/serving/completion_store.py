"""Stored chat completions (`store: true`) and their export to a fine-tuning file; the database work
runs off the event loop."""

from __future__ import annotations

import asyncio

from llmaas.control.auth.principal import Context, Principal
from llmaas.control.data.stored_completions import ExportFilter
from llmaas.control.db.models import StoredFile
from llmaas.control.plane import ControlPlane
from llmaas.core.errors import InvalidRequestError
from llmaas.protocol.openai import ChatCompletionRequest
from llmaas.protocol.stored_completions import FileFromSource


async def store_completion(cp: ControlPlane, principal: Principal, body: ChatCompletionRequest,
                           completion: dict) -> None:
    """Save before the client has the answer, so a completion it got is one it can list."""
    await asyncio.to_thread(cp.stored.save, principal, completion, body.stored_request(), body.metadata)


def export_to_file(cp: ControlPlane, ctx: Context, body: FileFromSource) -> StoredFile:
    """Export stored completions into a fine-tune file. Written through the same FileUpload as a multipart
    upload: same size limit, same validation. Blocking: call it on a worker thread."""
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
